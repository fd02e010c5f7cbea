"""The outbox delivers notifications from events a real store wrote: each once, in order, from its
stored cursor, across restarts, and past sinks that fail."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import select

from safeship.engine.notify import MemorySink, Notification, notification_for
from safeship.engine.outbox import FAILED_KIND, Outbox
from safeship.store import DeploymentRecord, EventRecord, Store, schema

SERVICE, ENVIRONMENT = "user-service", "production"


# These tests follow the end of each deployment; the other kinds are covered in test_notification_kinds.py.
TOLD = ("rollback_started", "rolled_back", "succeeded", "failed")


class Sink(MemorySink):
    def __init__(self, name: str = "memory") -> None:
        super().__init__(name, events=TOLD)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing inside the outbox catches it."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Broken:
    """A sink whose first `failures` calls raise (all of them by default)."""

    events = TOLD

    def __init__(self, name: str = "broken", failures: int = 10**9) -> None:
        self.name = name
        self.failures = failures
        self.calls: list[Notification] = []
        self.received: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.calls.append(notification)
        if len(self.calls) <= self.failures:
            raise ConnectionError("sink unreachable")
        self.received.append(notification)


class DiesAfterDelivering(Sink):
    """Takes notification number `at` (1-based) and then the process dies before anything else."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def notify(self, notification: Notification) -> None:
        super().notify(notification)
        if len(self.received) == self.at:
            raise Crash


class DiesBeforeDelivering(Sink):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.calls = 0

    def notify(self, notification: Notification) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        super().notify(notification)


def record(id_: str, phase: str = "pending", *, evidence: dict[str, object] | None = None) -> DeploymentRecord:
    return DeploymentRecord(
        id=id_, service=SERVICE, environment=ENVIRONMENT, version="v1.3.0", from_version="v1.2.0",
        strategy="canary", strategy_reason="test", policy="safeship", phase=phase, step_index=0,
        plan=[], status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0,
        step_started_at=1.0, evidence=evidence,
    )


def phase(deployment_id: str, name: str, at: float = 2.0) -> EventRecord:
    return EventRecord(deployment_id, at, "phase", f"{deployment_id} {name}", {"phase": name})


def run_deployment(store: Store, id_: str, phases: Iterable[str], *, evidence: dict[str, object] | None = None) -> None:
    """Create a deployment and save one transition per phase, each with its phase event and a few
    events that are not notifications, as the engine does."""
    current = record(id_)
    store.create_deployment(current, [EventRecord(id_, 1.0, "created", "created"),
                                      EventRecord(id_, 1.0, "strategy", "canary")])
    for name in phases:
        after = current.replace(phase=name, evidence=evidence if name != "preparing" else None)
        events = [EventRecord(id_, 2.0, "weights", "weights", {"v1.3.0": 10}), phase(id_, name)]
        current = store.save_transition(current, after, events)


def good(store: Store, id_: str) -> None:
    run_deployment(store, id_, ["preparing", "progressing", "monitoring", "succeeded"])


def bad(store: Store, id_: str) -> None:
    run_deployment(store, id_, ["preparing", "progressing", "rolling_back", "rolled_back"],
                   evidence={"trigger": "error_rate_threshold", "error_rate": 0.4})


def delivered(*sinks: Sink | Broken) -> list[str]:
    return [n.message for sink in sinks for n in sink.received]


def failures(store: Store) -> list[EventRecord]:
    return [e for e in store.events_since(0, limit=10_000) if e.kind == FAILED_KIND]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'state.db'}")


# ---------------------------------------------------------------- what is a notification


def test_only_the_phases_people_are_told_about_become_notifications(store: Store) -> None:
    deployment = record("deploy-1", evidence={"trigger": "analysis"})
    told = {"awaiting_approval": "awaiting_approval", "rolling_back": "rollback_started",
            "rolled_back": "rolled_back", "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}
    for name, kind in told.items():
        made = notification_for(phase("deploy-1", name), deployment)
        assert made is not None
        assert (made.kind, made.deployment_id, made.service, made.environment, made.message) == (
            kind, "deploy-1", SERVICE, ENVIRONMENT, f"deploy-1 {name}")
    for name in ("pending", "preparing", "progressing", "monitoring"):
        assert notification_for(phase("deploy-1", name), deployment) is None
    for kind in ("strategy", "trigger", "look", FAILED_KIND):
        assert notification_for(EventRecord("deploy-1", 1.0, kind, "x", {"phase": "failed"}), deployment) is None


def test_a_notification_without_its_deployment_is_still_made() -> None:
    made = notification_for(phase("deploy-gone", "failed"), None)
    assert made is not None and made.kind == "failed" and made.service == "" and made.evidence == {}


# ---------------------------------------------------------------- delivery


def test_each_notification_is_delivered_once_in_order(store: Store) -> None:
    good(store, "deploy-1")
    bad(store, "deploy-2")
    sink = Sink()
    outbox = Outbox(store, [sink])

    assert outbox.deliver_pending() == 3
    assert outbox.deliver_pending() == 0

    assert [(n.deployment_id, n.kind) for n in sink.received] == [
        ("deploy-1", "succeeded"), ("deploy-2", "rollback_started"), ("deploy-2", "rolled_back")]
    rolled_back = sink.received[-1]
    assert (rolled_back.service, rolled_back.environment) == (SERVICE, ENVIRONMENT)
    assert rolled_back.evidence == {"trigger": "error_rate_threshold", "error_rate": 0.4}
    assert outbox.position == store.last_event_id()

    run_deployment(store, "deploy-3", ["preparing", "failed"])
    assert outbox.deliver_pending() == 1
    assert [n.kind for n in sink.received] == ["succeeded", "rollback_started", "rolled_back", "failed"]


def test_a_backlog_larger_than_one_page_is_delivered_in_one_call(store: Store) -> None:
    for i in range(4):
        good(store, f"deploy-{i}")
    sink = Sink()
    assert Outbox(store, [sink]).deliver_pending(limit=3) == 4
    assert delivered(sink) == [f"deploy-{i} succeeded" for i in range(4)]


def test_a_restart_delivers_nothing_twice(store: Store) -> None:
    good(store, "deploy-1")
    first = Sink()
    Outbox(store, [first]).deliver_pending()
    bad(store, "deploy-2")

    second = Sink()
    Outbox(store, [second]).deliver_pending()

    assert delivered(first) == ["deploy-1 succeeded"]
    assert delivered(second) == ["deploy-2 rolling_back", "deploy-2 rolled_back"]


def test_a_crash_after_delivering_resends_only_the_notification_in_flight(store: Store) -> None:
    good(store, "deploy-1")
    bad(store, "deploy-2")
    good(store, "deploy-3")
    dying = DiesAfterDelivering(at=2)
    with pytest.raises(Crash):
        Outbox(store, [dying]).deliver_pending()
    assert delivered(dying) == ["deploy-1 succeeded", "deploy-2 rolling_back"]

    restarted = Sink()
    Outbox(store, [restarted]).deliver_pending()

    # At least once: the one taken just before the crash comes again, nothing else does, none is lost.
    assert delivered(restarted) == ["deploy-2 rolling_back", "deploy-2 rolled_back", "deploy-3 succeeded"]


def test_a_crash_before_delivering_loses_nothing(store: Store) -> None:
    good(store, "deploy-1")
    bad(store, "deploy-2")
    dying = DiesBeforeDelivering(at=3)
    with pytest.raises(Crash):
        Outbox(store, [dying]).deliver_pending()

    restarted = Sink()
    Outbox(store, [restarted]).deliver_pending()

    assert delivered(dying) + delivered(restarted) == [
        "deploy-1 succeeded", "deploy-2 rolling_back", "deploy-2 rolled_back"]


def test_sinks_with_the_same_name_keep_separate_cursors(store: Store) -> None:
    good(store, "deploy-1")
    one, two = Sink(), Sink()
    outbox = Outbox(store, [one, two])
    assert outbox.cursor_names() == ["notifications:memory", "notifications:memory-2"]
    assert outbox.deliver_pending() == 2
    assert delivered(one) == delivered(two) == ["deploy-1 succeeded"]


def test_outboxes_with_different_names_each_deliver_everything(store: Store) -> None:
    good(store, "deploy-1")
    mine, theirs = Sink(), Sink()
    Outbox(store, [mine]).deliver_pending()
    Outbox(store, [theirs], name="webhooks").deliver_pending()
    assert delivered(mine) == delivered(theirs) == ["deploy-1 succeeded"]


# ---------------------------------------------------------------- failing sinks


def test_a_failing_sink_does_not_block_a_working_one(store: Store) -> None:
    good(store, "deploy-1")
    bad(store, "deploy-2")
    broken, working = Broken(), Sink()
    outbox = Outbox(store, [broken, working], clock=FakeClock())

    assert outbox.deliver_pending() == 3

    assert delivered(working) == ["deploy-1 succeeded", "deploy-2 rolling_back", "deploy-2 rolled_back"]
    (failed,) = failures(store)
    assert failed.deployment_id == "deploy-1"
    assert failed.data["sink"] == "broken" and failed.data["notification"] == "succeeded"
    assert "ConnectionError: sink unreachable" in failed.data["error"]
    assert failed.data["attempt"] == 1 and failed.data["retry"] is True
    # The broken sink holds its place before the event it could not deliver; the working one is done.
    assert failed.data["event_id"] > store.cursor("notifications:broken")
    assert store.cursor("notifications:memory") >= failed.data["event_id"]
    assert outbox.position == store.cursor("notifications:broken")


def test_a_failed_delivery_is_retried_after_its_backoff(store: Store) -> None:
    good(store, "deploy-1")
    clock = FakeClock()
    flaky = Broken(failures=1)
    outbox = Outbox(store, [flaky], clock=clock, backoff=5.0)

    assert outbox.deliver_pending() == 0
    assert outbox.deliver_pending() == 0  # still backing off: not tried again
    assert len(flaky.calls) == 1

    clock.now += 5.0
    assert outbox.deliver_pending() == 1
    assert delivered(flaky) == ["deploy-1 succeeded"]
    assert len(failures(store)) == 1
    assert outbox.position == store.last_event_id()  # past the notification and its failure event

    assert outbox.deliver_pending() == 0
    assert len(flaky.calls) == 2


def test_a_delivery_that_keeps_failing_is_given_up_after_max_attempts(store: Store) -> None:
    good(store, "deploy-1")
    good(store, "deploy-2")
    clock = FakeClock()
    broken = Broken(failures=3)
    outbox = Outbox(store, [broken], clock=clock, max_attempts=3, backoff=1.0)

    for _ in range(3):
        outbox.deliver_pending()
        clock.now += 100.0

    assert [n.message for n in broken.calls] == ["deploy-1 succeeded"] * 3 + ["deploy-2 succeeded"]
    assert delivered(broken) == ["deploy-2 succeeded"]
    assert [(e.data["attempt"], e.data["retry"]) for e in failures(store)] == [(1, True), (2, True), (3, False)]
    assert "gave up" in failures(store)[-1].message

    outbox.deliver_pending()
    assert len(broken.calls) == 4  # the given-up one is not tried again


def test_the_outbox_cursor_never_moves_backwards(store: Store) -> None:
    good(store, "deploy-1")
    Outbox(store, [Sink()]).deliver_pending()
    reached = store.cursor("notifications")
    assert reached == store.last_event_id()

    store.advance_cursor("notifications", 1)
    store.advance_cursor("notifications:memory", 1)
    assert store.cursor("notifications") == reached

    again = Sink()
    Outbox(store, [again]).deliver_pending()
    assert again.received == []
    assert store.cursor("notifications") == reached


# ---------------------------------------------------------------- the controller's task


async def test_run_delivers_when_woken_and_stops_when_told(store: Store) -> None:
    good(store, "deploy-1")
    sink = Sink()
    outbox = Outbox(store, [sink])
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop, poll=3600.0))  # after its first pass only a wake delivers
    for _ in range(500):
        if sink.received:
            break
        await asyncio.sleep(0.01)
    assert delivered(sink) == ["deploy-1 succeeded"]

    good(store, "deploy-2")
    outbox.wake()
    for _ in range(500):
        if len(sink.received) == 2:
            break
        await asyncio.sleep(0.01)
    assert delivered(sink) == ["deploy-1 succeeded", "deploy-2 succeeded"]

    stop.set()
    await asyncio.wait_for(task, timeout=30)
    assert task.exception() is None


async def test_run_goes_on_after_a_sink_fails(store: Store) -> None:
    good(store, "deploy-1")
    broken, working = Broken(), Sink()
    outbox = Outbox(store, [broken, working])
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop, poll=3600.0))
    for _ in range(500):
        if working.received:
            break
        await asyncio.sleep(0.01)
    bad(store, "deploy-2")
    outbox.wake()
    for _ in range(500):
        if len(working.received) == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=30)

    assert delivered(working) == ["deploy-1 succeeded", "deploy-2 rolling_back", "deploy-2 rolled_back"]
    assert not task.cancelled() and task.exception() is None
    assert failures(store)


def test_an_idle_pass_changes_no_cursor(store: Store) -> None:
    good(store, "deploy-1")
    clock = FakeClock()
    outbox = Outbox(store, [Sink()], clock=clock)
    outbox.deliver_pending()
    with store.engine.connect() as conn:
        before = sorted(conn.execute(select(schema.cursors)).all())
    assert [row.name for row in before] == ["notifications", "notifications:memory"]

    clock.now += 60.0
    assert outbox.deliver_pending() == 0

    with store.engine.connect() as conn:
        assert sorted(conn.execute(select(schema.cursors)).all()) == before


class Slow(Sink):
    """Takes each notification after a short while; `timeout` makes the outbox bound each call."""

    timeout = 5.0

    def __init__(self) -> None:
        super().__init__("slow")
        self.started = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def notify(self, notification: Notification) -> None:
        super().notify(notification)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.started.set)
        threading.Event().wait(0.05)


async def test_a_stopped_run_begins_no_new_delivery_and_a_later_pass_goes_on(store: Store) -> None:
    for i in range(30):
        good(store, f"deploy-{i}")
    slow = Slow()
    slow.loop = asyncio.get_running_loop()
    memory = Sink()
    outbox = Outbox(store, [slow, memory])
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop, poll=3600.0))
    await asyncio.wait_for(slow.started.wait(), timeout=30)
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    told, memory_told = len(slow.received), len(memory.received)
    assert 1 <= told < 30  # the backlog was left where it stood, from its stored cursor

    assert outbox.deliver_pending() == (30 - told) + (30 - memory_told)  # a later pass goes on
    assert delivered(slow) == delivered(memory) == [f"deploy-{i} succeeded" for i in range(30)]


def test_a_store_that_cannot_be_written_is_logged_as_a_sentence_and_a_bug_with_its_traceback(
        store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from safeship.errors import StoreError

    failures: list[Exception] = [StoreError("store x.db: the disk is full; free some space and try again"),
                                 RuntimeError("a bug")]

    def failing_pass(self: Outbox, lane: object) -> None:
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(Outbox, "_pass_of", failing_pass)
    outbox = Outbox(store, [Sink()])

    async def run_briefly() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(outbox.run(stop, poll=0.01))
        for _ in range(500):
            if not failures:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stop.set()
        await task

    with caplog.at_level("ERROR", logger="safeship.notify"):
        asyncio.run(run_briefly())
    logged = [r for r in caplog.records if "delivering notifications" in r.getMessage()]
    assert len(logged) == 2
    assert "the disk is full" in logged[0].getMessage() and not logged[0].exc_info
    assert "a bug" in logged[1].getMessage() and logged[1].exc_info
