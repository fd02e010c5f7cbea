"""Which stored events people are told about, and as what: a deployment on the sim world told
from start to end, each event under an idempotency key that a restart keeps, with the same body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.notify import MemorySink, notification_for
from safeship.engine.outbox import Outbox
from safeship.engine.policies import policy_for
from safeship.engine.simulate import BASELINE, CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.store import DeploymentRecord, EventRecord, Store


def scenario(**candidate: Any) -> Scenario:
    return Scenario.model_validate({
        "name": "kinds", "seed": 1, "duration_s": 3600, "traffic": {"rps": 100},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 180}},
        "candidate": candidate, "expect": "promote",
    })


async def deploy(store: Store, **candidate: Any) -> DeploymentRecord:
    sim = await build(scenario(**candidate), policy_for=policy_for, store=store)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="safeship")
    return await sim.engine.run(record.id)


async def test_a_good_release_is_told_from_start_to_success(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        final = await deploy(store)
        sink = MemorySink()
        Outbox(store, [sink]).deliver_pending()
    finally:
        store.close()
    assert final.phase == "succeeded"
    kinds = [n.kind for n in sink.received]
    assert kinds[0] == "started" and kinds[-2:] == ["promoted", "succeeded"]
    steps = [n for n in sink.received if n.kind == "step_advanced"]
    assert len(steps) == len(kinds) - 3 >= 2  # nothing else in between (no look is told)
    shares = [n.weights[CANDIDATE] for n in steps]
    assert shares == sorted(shares) and len(set(shares)) == len(shares) and shares[-1] == 100
    assert all((n.from_version, n.to_version, n.version) == (BASELINE, CANDIDATE, CANDIDATE) for n in sink.received)
    assert sink.received[0].weights == {BASELINE: 100} and sink.received[0].phase == "pending"
    assert sink.received[-1].phase == "succeeded" and sink.received[-1].reason is None
    keys = [n.key for n in sink.received]
    assert len(set(keys)) == len(keys) and all(k == f"{final.id}:{n.event_id}" for k, n in zip(keys, sink.received,
                                                                                               strict=True))


async def test_a_bad_release_is_told_its_rollback_with_from_to_reason_and_evidence(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        final = await deploy(store, error_rate=0.3)
        first = MemorySink()
        Outbox(store, [first]).deliver_pending()
        again = MemorySink()  # another outbox from the start: a restart that lost its cursor
        Outbox(store, [again], name="replay").deliver_pending()
    finally:
        store.close()
    assert final.phase == "rolled_back"
    assert [n.kind for n in first.received] == ["started", "step_advanced", "rollback_started", "rolled_back"]
    started, rolled_back = first.received[2], first.received[3]
    for told in (started, rolled_back):
        assert (told.from_version, told.to_version) == (CANDIDATE, BASELINE)
        assert told.reason == final.reason and told.evidence == final.evidence and told.evidence["trigger"]
    assert rolled_back.weights == {BASELINE: 100} and rolled_back.phase == "rolled_back"
    # The same events make the same notifications, with the same keys and bodies, whoever reads them.
    assert [n.body() for n in again.received] == [n.body() for n in first.received]


def _record(**changes: Any) -> DeploymentRecord:
    base = DeploymentRecord(
        id="deploy-1", service=SERVICE, environment=ENVIRONMENT, version="v2", from_version="v1",
        strategy="canary", strategy_reason="", policy="safeship", phase="progressing", step_index=0, plan=[],
        status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0, step_started_at=1.0)
    return base.replace(**changes)


def _event(id_: int, kind: str, **data: Any) -> EventRecord:
    return EventRecord("deploy-1", float(id_), kind, kind, data, id=id_)


def test_weights_are_a_step_only_when_they_move_traffic_further_to_the_candidate() -> None:
    deployment = _record()
    progressing = _event(1, "phase", phase="progressing")
    first = _event(2, "weights", weights={"v1": 90, "v2": 10})
    told = notification_for(first, deployment, [progressing])
    assert told is not None and told.kind == "step_advanced" and told.weights == {"v1": 90, "v2": 10}
    back = _event(3, "weights", weights={"v1": 100})
    assert notification_for(back, deployment, [progressing, first]) is None
    cleared = _event(4, "confirm_cleared")
    whole = _event(5, "weights", weights={"v2": 100})
    assert notification_for(whole, deployment, [progressing, first, back, cleared]) is None
    rolling_back = _event(6, "phase", phase="rolling_back")
    assert notification_for(_event(7, "weights", weights={"v2": 100}), deployment,
                            [progressing, rolling_back]) is None
    monitoring = _event(8, "phase", phase="monitoring")
    assert notification_for(_event(9, "weights", weights={"v2": 100}), deployment,
                            [progressing, first, monitoring]) is None


def test_waiting_for_approval_and_a_cancel_are_told() -> None:
    cancelled = _record(status={"rollback": {"to_version": "v1"}}, reason="cancelled by ops")
    waiting = notification_for(_event(1, "phase", phase="awaiting_approval"), _record())
    assert waiting is not None and waiting.kind == "awaiting_approval" and waiting.phase == "awaiting_approval"
    done = notification_for(_event(2, "phase", phase="cancelled"), cancelled)
    assert done is not None and done.kind == "cancelled" and (done.from_version, done.to_version) == ("v2", "v1")
    assert done.reason == "cancelled by ops"


def test_a_rollback_to_nothing_is_told_with_no_version_taking_traffic() -> None:
    forced = _record(from_version=None, status={"rollback": {"to_version": None}}, reason="forced")
    events = [_event(1, "phase", phase="progressing"), _event(2, "weights", weights={"v2": 100}),
              _event(3, "phase", phase="rolling_back"), _event(4, "weights", weights={})]
    told = notification_for(_event(5, "phase", phase="rolled_back"), forced, events)
    assert told is not None and told.weights == {} and (told.from_version, told.to_version) == ("v2", None)
