"""Leases with fencing tokens, on SQLite and PostgreSQL: one holder at a time, a token that only
grows, and every write of a holder whose token is no longer current refused in its own
transaction, leaving nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from safeship.engine.lease import Leases, holder_gone
from safeship.engine.process_mark import driver_mark
from safeship.errors import LeaseLostError, StaleStateError
from safeship.store import DeploymentRecord, EventRecord, Store

DURATION = 15.0


def deployment(id_: str = "deploy-a") -> DeploymentRecord:
    return DeploymentRecord(
        id=id_, service="svc", environment="prod", version="v2", from_version="v1",
        strategy="canary", strategy_reason="test", policy="safeship", phase="pending", step_index=0,
        plan=[], status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0, step_started_at=1.0,
    )


def fencing_tokens(store: Store, deployment_id: str) -> tuple[int | None, list[tuple[str, int | None]]]:
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT fencing_token FROM deployments WHERE id = :id"), {"id": deployment_id}).one()
        events = conn.execute(text("SELECT kind, fencing_token FROM events WHERE deployment_id = :id ORDER BY id"),
                              {"id": deployment_id}).all()
    return row[0], [(kind, token) for kind, token in events]


def test_one_holder_at_a_time_and_the_token_grows_on_each_change_of_hands(backend_url: str) -> None:
    store = Store(backend_url)
    try:
        first = store.take_lease("deploy-a", "a", now=100.0, duration=DURATION)
        assert (first.holder, first.token, first.expires_at) == ("a", 1, 115.0)
        held = store.take_lease("deploy-a", "b", now=110.0, duration=DURATION)
        assert (held.holder, held.token) == ("a", 1)  # not expired: left alone
        again = store.take_lease("deploy-a", "a", now=112.0, duration=DURATION)
        assert (again.holder, again.token, again.expires_at) == ("a", 1, 127.0)  # its own: renewed, same token
        assert store.renew_lease("deploy-a", "a", 1, now=120.0, duration=DURATION)

        taken = store.take_lease("deploy-a", "b", now=136.0, duration=DURATION)  # a expired at 135
        assert (taken.holder, taken.token) == ("b", 2)
        assert not store.renew_lease("deploy-a", "a", 1, now=137.0, duration=DURATION)
        assert not store.release_lease("deploy-a", "a", 1)

        assert store.release_lease("deploy-a", "b", 2)
        released = store.lease("deploy-a")
        assert released is not None and (released.holder, released.token) == ("", 2)
        after = store.take_lease("deploy-a", "a", now=138.0, duration=DURATION)  # free at once after a release
        assert (after.holder, after.token) == ("a", 3)
    finally:
        store.close()


def test_a_stale_holders_writes_are_refused_and_leave_nothing(backend_url: str) -> None:
    """Controller a holds the lease, is paused past its expiry, b takes it over and moves the
    deployment; a resumes and tries to write its transition and events: refused, nothing lands."""
    a, b = Store(backend_url), Store(backend_url)
    try:
        record = deployment()
        a.create_deployment(record, [EventRecord(record.id, 1.0, "created", "created")])
        lease_a = a.take_lease(record.id, "ctl-a", now=100.0, duration=DURATION)
        a.fence(record.id, "ctl-a", lease_a.token)
        moved = a.save_transition(record, record.replace(phase="preparing"),
                                  [EventRecord(record.id, 2.0, "phase", "preparing by a")])

        lease_b = b.take_lease(record.id, "ctl-b", now=120.0, duration=DURATION)  # a is paused past 115
        assert (lease_b.holder, lease_b.token) == ("ctl-b", 2)
        b.fence(record.id, "ctl-b", lease_b.token)
        current = b.get_deployment(record.id)
        b_moved = b.save_transition(current, current.replace(phase="progressing"),
                                    [EventRecord(record.id, 3.0, "phase", "progressing by b")])

        # a resumes with the row it read before the pause: the fence refuses it before row_version could
        with pytest.raises(LeaseLostError, match=r"token 1.*no longer the current one.*token 2, held by ctl-b"):
            a.save_transition(moved, moved.replace(phase="progressing", step_index=1),
                              [EventRecord(record.id, 4.0, "phase", "stale write by a")])
        with pytest.raises(LeaseLostError):
            a.add_events([EventRecord(record.id, 4.0, "controller_error", "stale event by a")])
        # the same refusal is a StaleStateError to anyone who only knows that one
        with pytest.raises(StaleStateError):
            a.save_transition(b_moved, b_moved.replace(step_index=2))
        assert a.refused_writes == 3

        final = b.get_deployment(record.id)
        assert (final.phase, final.step_index, final.row_version) == ("progressing", 0, b_moved.row_version)
        assert [e.message for e in b.events(record.id)] == ["created", "preparing by a", "progressing by b"]
        assert fencing_tokens(b, record.id) == (2, [("created", None), ("phase", 1), ("phase", 2)])
        # b's writes and events of other deployments are not fenced by a's lease at all
        a.add_events([EventRecord("controller", 5.0, "config_reloaded", "not a deployment a held")])
    finally:
        a.close()
        b.close()


def test_writes_of_a_holder_that_released_its_lease_are_refused(backend_url: str) -> None:
    store = Store(backend_url)
    try:
        record = deployment()
        store.create_deployment(record)
        lease = store.take_lease(record.id, "ctl-a", now=100.0, duration=DURATION)
        store.fence(record.id, "ctl-a", lease.token)
        assert store.release_lease(record.id, "ctl-a", lease.token)
        with pytest.raises(LeaseLostError, match="held by no one"):
            store.save_transition(record, record.replace(phase="preparing"))
        store.unfence(record.id)  # a write that holds no lease is guarded by row_version alone
        assert store.save_transition(record, record.replace(phase="preparing")).phase == "preparing"
    finally:
        store.close()


def test_controllers_racing_for_a_free_lease_get_one_holder(backend_url: str) -> None:
    stores = [Store(backend_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    results: dict[str, int] = {}

    def take(index: int) -> None:
        start.wait(timeout=30)
        lease = stores[index].take_lease("deploy-race", f"ctl-{index}", now=100.0, duration=DURATION)
        if lease.holder == f"ctl-{index}":
            results[lease.holder] = lease.token

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        lease = stores[0].lease("deploy-race")
        assert lease is not None and results == {lease.holder: 1}
    finally:
        for store in stores:
            store.close()


def test_a_lease_whose_holder_process_is_gone_is_taken_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A controller killed before it let its leases go (SIGKILL, OOM): a controller on the same
    host restarted in its place takes them over without waiting for their expiry; a holder that
    still runs, or one on another host (it cannot be asked), keeps its lease until it expires."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        host = socket.gethostname()
        parent = driver_mark()  # this process stands for a live controller...
        alive = f"{host}:{os.getppid()}:-:aaaa"  # ...and so does its parent, which runs
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(10)
        gone = f"{host}:{dead.pid}:-:bbbb"
        leases = Leases(store, duration=DURATION, now=lambda: 100.0)
        assert parent.host == host and not holder_gone(leases.holder)
        for name, holder in (("deploy-alive", alive), ("deploy-gone", gone), ("deploy-far", "elsewhere:1:-:cccc")):
            store.take_lease(name, holder, now=99.0, duration=DURATION)
        assert leases.take("deploy-alive") is None
        assert leases.take("deploy-far") is None
        taken = leases.take("deploy-gone")
        assert taken is not None and taken.token == 2
        assert not taken.taken_over  # a restart: its routes were restored from the store when it started
        lease = store.lease("deploy-gone")
        assert lease is not None and lease.holder == leases.holder
        assert not leases.may_try("deploy-alive")  # until the live holder's lease expires at 114
    finally:
        store.close()
