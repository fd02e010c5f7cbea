"""Two operator instances on one cluster and one store (two loops in this process, each with its own
API clients, store connection and Lease identity, as two replicas would have): only the Lease
holder writes; when it is killed mid-canary the other takes the Lease over within the lease time
and finishes the deployment exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import LEASE_NAMESPACE, SERVICE, OperatorRig, operator_config, release_body, serve_release_kinds
from emulator import ApiHandle

from safeship.kube.client import KubeClient
from safeship.operator import release as rel
from safeship.operator.lease import LEASE_API, LEASE_KIND, LeaseSettings
from safeship.operator.runner import Operator, OperatorSettings, Tracked
from safeship.store import Store


async def test_only_the_holder_writes_and_the_other_takes_over_and_finishes_once(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    a = rig.start("operator-a")
    await rig.until(a.elector.is_leader, what="operator-a leads")
    b = rig.start("operator-b")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    await rig.apply(release_body(rig.api, "v2", strategies={"canary": {"traffic_percentages": [50, 100],
                                                                       "step_duration": "2s"}}))
    await rig.until(lambda: rig.status().get("version") == "v2" and rig.status().get("candidateWeight", 0) >= 50,
                    what="v2 canary under way")
    assert not b.elector.is_leader() and b.stats["status_writes"] == 0 and b.stats["ticks"] == 0
    writes_by_a = len(rig.status_writes())

    await rig.stop("operator-a", cleanly=False)  # as a SIGKILL: the Lease is not released
    held = rig.api.read("coordination.k8s.io/v1", "Lease", "safeship-operator", LEASE_NAMESPACE)
    assert held is not None and held["spec"]["holderIdentity"] == "operator-a"
    # b takes the Lease over once it has expired (a bounded wait: the lease time is 3 s) ...
    await rig.until(b.elector.is_leader, timeout=10, what="operator-b takes the Lease over")
    taken = rig.api.read("coordination.k8s.io/v1", "Lease", "safeship-operator", LEASE_NAMESPACE)
    assert taken is not None and taken["spec"]["holderIdentity"] == "operator-b"
    # ... and never before: what the Lease records, not how long the test waited.
    waited = _micro(taken["spec"]["acquireTime"]) - _micro(held["spec"]["renewTime"])
    assert waited >= rig.lease_duration_s, waited

    await rig.until(lambda: rig.status().get("phase") == "succeeded" and rig.status().get("version") == "v2",
                    timeout=30, what="v2 finished by operator-b")
    status = rig.status()
    assert status["leader"] == "operator-b" and status["leaderEpoch"] == 1
    lease = rig.api.read("coordination.k8s.io/v1", "Lease", "safeship-operator", LEASE_NAMESPACE)
    assert lease is not None and lease["spec"]["holderIdentity"] == "operator-b"
    assert lease["spec"]["leaseTransitions"] == 1

    # Exactly once: one deployment of v2, each weight reached once, one promotion.
    store = b.store
    v2 = [d for d in store.list_deployments(service=SERVICE, environment="production") if d.version == "v2"]
    assert len(v2) == 1 and v2[0].phase == "succeeded"
    events = store.events(v2[0].id)
    weights = Counter(str(sorted(e.data.get("weights", {}).items())) for e in events if e.kind == "weights")
    assert weights and max(weights.values()) == 1, weights
    assert sum(1 for e in events if e.kind == "promoted") == 1

    # Every status write before the kill came from a (epoch 0), every one after from b (epoch 1).
    writes = rig.status_writes()
    leaders = [w["status"].get("leaderEpoch") for w in writes[writes_by_a:] if "leaderEpoch" in w["status"]]
    assert leaders and set(leaders) == {1}, leaders
    assert all(w["status"].get("leader", "operator-a") == "operator-a" for w in writes[:writes_by_a])
    assert b.stats["status_writes"] >= 1


class _Elector:
    def __init__(self, leader: bool, epoch: int) -> None:
        self.leader, self.epoch, self.identity, self.lost = leader, epoch, "x", False

    def is_leader(self) -> bool:
        return self.leader

    def lose(self) -> None:
        self.lost, self.leader = True, False


class _NoWrites:
    async def patch_status(self, *args: object) -> dict[str, object]:
        raise AssertionError("a status was written")


@pytest.mark.parametrize(("leader", "epoch", "stored_epoch"), [(False, -1, 0), (True, 1, 2)])
async def test_status_is_not_written_by_a_non_holder_or_over_a_newer_epoch(
        leader: bool, epoch: int, stored_epoch: int, operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = Operator(OperatorSettings(config=None, environment="production",  # type: ignore[arg-type]
                                         lease=LeaseSettings(identity="x")), None, _NoWrites())  # type: ignore[arg-type]
    operator.elector = _Elector(leader, epoch)  # type: ignore[assignment]
    before = rel.ReleaseStatus(leaderEpoch=stored_epoch, phase="progressing")
    tracked = Tracked(obj={**release_body(rig.api, "v1"), "status": before.model_dump(mode="json")})
    await operator._write_status(tracked, before, before.model_copy(update={"phase": "succeeded"}))
    assert operator.stats["status_refused"] == 1 and operator.stats["status_writes"] == 0
    assert operator.elector.lost is leader  # type: ignore[attr-defined]  # a newer holder wrote: step down


# As many requests as a client's connection pool holds (httpx's default limit is 100 connections).
HELD = 100


async def test_the_lease_is_renewed_while_the_server_holds_every_other_request(kube_api: ApiHandle,
                                                                              tmp_path: Path) -> None:
    """A busy API server: it answers none of the operator's Release requests (as many in flight on
    the operator's client as its pool holds), yet the operator renews its Lease, on connections of
    its own. With one client for both, the renewal would wait for a free connection."""
    serve_release_kinds(kube_api)
    store = Store(operator_config(kube_api, tmp_path / "state.db").store.url)
    kube = KubeClient.from_kubeconfig(str(kube_api.kubeconfig), context=kube_api.context,
                                      namespace=kube_api.namespace)
    operator = Operator(OperatorSettings(
        config=operator_config(kube_api, tmp_path / "state.db"), environment="production",
        lease=LeaseSettings(namespace=LEASE_NAMESPACE, identity="busy"), namespace=kube_api.namespace,
        state_dir=tmp_path), store, kube)
    held = kube_api.emulator.hold("GET", rel.PLURAL)
    in_flight: list[asyncio.Task[object]] = []
    try:
        assert await operator.elector.step()
        first = kube_api.read(LEASE_API, LEASE_KIND, "safeship-operator", LEASE_NAMESPACE)
        assert first is not None and first["spec"]["holderIdentity"] == "busy"
        in_flight = [asyncio.create_task(kube.get(rel.API_VERSION, rel.KIND, f"release-{i}"))
                     for i in range(HELD)]
        for _ in range(1000):  # bounded: until the server holds every one of them
            if held.waiting == HELD:
                break
            await asyncio.sleep(0.01)
        assert held.waiting == HELD

        assert await operator.elector.step()
        renewed = kube_api.read(LEASE_API, LEASE_KIND, "safeship-operator", LEASE_NAMESPACE)
        assert renewed is not None and renewed["spec"]["holderIdentity"] == "busy"
        assert renewed["spec"]["renewTime"] != first["spec"]["renewTime"]
        assert held.waiting == HELD and not any(task.done() for task in in_flight)  # still unanswered
    finally:
        held.release()
        for task in in_flight:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=15)
        await operator.close()
        await kube.close()
        store.close()


def _micro(value: str) -> float:
    """A Lease's MicroTime ("2026-12-06T15:52:00.123456Z") in seconds since the epoch."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
