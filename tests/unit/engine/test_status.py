"""The typed deployment status: rows stored by earlier safeship load, round-trip, resume and show
the same view; keys nothing reads are dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import drive, scenario

from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.engine.context import Tick
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.engine.status import DROPPED_KEYS, DeploymentStatus
from safeship.engine.views import deployment_view

FIXTURES = Path(__file__).parent / "fixtures"

# Statuses exactly as safeship stored them before the status was typed, dumped from sim runs of a
# canary: rolled back by an error-rate regression, failed with auto rollback off (restore
# weights), and succeeded (decision counters).
LEGACY = ["status_rolled_back.json", "status_failed.json", "status_succeeded.json"]

# As submit (freeze override) and approve wrote them.
GATES = {
    "approval": {"by": "alice", "at": 1000001.5},
    "freeze_override": {"window": "weekend (Sat-Sun 00:00-23:59 UTC)", "reason": "hotfix", "by": "bob"},
}


def legacy(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def kept(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in DROPPED_KEYS}


@pytest.mark.parametrize("name", LEGACY)
def test_a_stored_status_loads_and_round_trips(name: str) -> None:
    stored = {**legacy(name), **GATES}
    status = DeploymentStatus.from_json(stored)
    assert status.to_json() == kept(stored)
    assert DeploymentStatus.from_json(status.to_json()) == status
    assert json.loads(json.dumps(status.to_json())) == status.to_json()  # plain JSON for the store


def test_the_typed_parts_hold_what_was_stored() -> None:
    stored = {**legacy("status_rolled_back.json"), **GATES}
    status = DeploymentStatus.from_json(stored)
    assert status.replicas == 2
    assert status.weights == {"baseline": 100}
    assert status.versions_seen == ["baseline", "candidate"]
    assert status.driver is not None and status.driver.pid == stored["driver"]["pid"]
    assert status.approval is not None and status.approval.by == "alice"
    assert status.freeze_override is not None and status.freeze_override.reason == "hotfix"
    analysis = status.analysis
    assert analysis.marker == stored["look_marker"] and analysis.policy_state == stored["policy_state"]
    assert analysis.counters["candidate"].requests == stored["snap"]["candidate"]["requests"]
    assert analysis.errors_in_a_row == 0 and analysis.last_sample == stored["last_sample"]
    rollback = status.rollback
    assert rollback is not None
    assert (rollback.to_version, rollback.trigger, rollback.cancel) == ("baseline", "error_rate_threshold", False)
    assert [step["kind"] for step in rollback.plan] == ["scale", "wait_ready", "weights", "scale"]
    failed = DeploymentStatus.from_json(legacy("status_failed.json"))
    assert failed.restore_weights == failed.last_safe_weights == {"baseline": 90, "candidate": 10}


def test_a_new_status_writes_only_what_it_knows() -> None:
    assert DeploymentStatus().to_json() == {}
    assert DeploymentStatus(replicas=3, weights={}).to_json() == {"replicas": 3, "weights": {}}


def test_to_json_is_a_snapshot() -> None:
    status = DeploymentStatus.from_json(legacy("status_failed.json"))
    before = status.to_json()
    status.analysis.unready_since["i-1"] = 5.0
    assert status.weights is not None
    status.weights["candidate"] = 50
    status.versions_seen.append("v3")
    status.analysis.counters["candidate"].requests += 1
    assert before == kept(legacy("status_failed.json"))


def test_live_weights_follow_the_phase() -> None:
    failed = DeploymentStatus.from_json(legacy("status_failed.json"))
    assert failed.live_weights(active=False, failed=True) == {"baseline": 90, "candidate": 10}
    assert failed.live_weights(active=False, failed=False) is None
    running = DeploymentStatus(weights={"a": 70, "b": 30})
    assert running.live_weights(active=True, failed=False) == {"a": 70, "b": 30}
    assert DeploymentStatus(weights={}).live_weights(active=True, failed=False) is None


async def test_a_deployment_stored_with_a_legacy_status_resumes_and_drops_unread_keys() -> None:
    sim = await build(scenario(error_rate=0.2), policy_for=_step_policy)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="step")
    for _ in range(3):  # pending -> preparing -> progressing, first steps
        sim.clock.advance(await sim.engine.advance(record.id) or 0.05)
    current = sim.store.get_deployment(record.id)
    stale = {**current.status, "start_counters": legacy("status_failed.json")["start_counters"],
             "decision_counters": {}}
    sim.store.save_transition(current, current.replace(status=stale))
    tick = Tick(sim.store.get_deployment(record.id), sim.clock.now())
    assert not tick.dirty  # dropping what nothing reads is no change on its own
    seen = await drive(sim, record.id)
    assert seen.record.phase == "rolled_back"
    assert not DROPPED_KEYS & set(seen.record.status)
    assert seen.record.status["weights"] == {"baseline": 100}


def test_the_view_keeps_its_keys() -> None:
    from safeship.store import DeploymentRecord

    stored = {**legacy("status_rolled_back.json"), **GATES}
    record = DeploymentRecord(
        id="deploy-1", service=SERVICE, environment=ENVIRONMENT, version=CANDIDATE, from_version="baseline",
        strategy="canary", strategy_reason="r", policy="step", phase="rolled_back", step_index=3, plan=[],
        status=stored, request={}, created_at=1.0, updated_at=2.0, phase_started_at=1.0, step_started_at=1.0,
    )
    view = deployment_view(record, full=True)
    assert view["weights"] == stored["weights"]
    assert view["last_sample"] == stored["last_sample"]
    assert view["approval"] == GATES["approval"]
    assert view["freeze_override"] == GATES["freeze_override"]
    assert view["rollback"] == stored["rollback"]
    empty = deployment_view(record.replace(status={}), full=True)
    assert (empty["weights"], empty["last_sample"], empty["approval"], empty["rollback"]) == ({}, None, None, None)


def _step_policy(_name: str) -> Any:
    from policies import StepPolicy

    return StepPolicy()
