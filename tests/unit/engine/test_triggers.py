"""The seed's four rollback triggers, each rolling back a bad release, with the rollback row stored."""

from __future__ import annotations

from typing import Any

import pytest
from harness import run, scenario

from safeship.config.models import DeploymentStrategy, SafeshipConfig
from safeship.engine.simulate import CANDIDATE

BAD: dict[str, dict[str, Any]] = {
    "health_check_failure": {"crash_after_s": 20},
    "error_rate_threshold": {"error_rate": 0.25},
    "response_time_threshold": {"latency_ms": {"p50": 6000, "p99": 9000}},
    "custom_metric": {"metrics": {"queue_depth": {"baseline": 10, "candidate": 500, "noise": 5,
                                                  "fail_above": 100}}},
}


# safeship's comparison with the baseline may fire before the absolute trigger; it is then the
# comparison test of the same metric that must have fired, never another one
COMPARISON_TESTS = {
    "health_check_failure": set(),
    "error_rate_threshold": {"errors"},
    "response_time_threshold": {"latency_p95", "latency_p99"},
    "custom_metric": {"metric:queue_depth"},
}


def _policy(name: str) -> Any:
    from safeship.analysis.policies import get_policy

    return lambda _n: get_policy(name)


@pytest.mark.parametrize("policy", ["seed", "safeship"])
@pytest.mark.parametrize("trigger", sorted(BAD))
async def test_trigger_rolls_back_a_bad_release(trigger: str, policy: str) -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 120
    seen = await run(scenario(**BAD[trigger]), DeploymentStrategy.CANARY, config=config, policy=_policy(policy))
    assert seen.record.phase == "rolled_back", seen.record.reason
    assert seen.weights[-1] == {"baseline": 100}
    rows = seen.sim.store.rollbacks(deployment_id=seen.record.id)
    assert len(rows) == 1
    row = rows[0]
    assert row.success and row.automatic and row.from_version == CANDIDATE and row.to_version == "baseline"
    fired = row.evidence.get("trigger")
    if policy == "seed":
        assert fired == trigger, row.evidence
    else:
        assert fired == trigger or (fired == "analysis" and row.evidence.get("test") in COMPARISON_TESTS[trigger]), (
            row.evidence)
    assert len(row.evidence) > 1  # the numbers behind the decision are kept, not only its name
    assert row.duration_s is not None and row.duration_s >= 0


async def test_auto_rollback_off_leaves_last_safe_weights_and_says_how() -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.rollback.auto_rollback = False
    seen = await run(scenario(error_rate=0.25), DeploymentStrategy.CANARY, config=config,
                     policy=_policy("seed"))
    assert seen.record.phase == "failed"
    assert "rollback-manager --rollback --deployment-id" in (seen.record.reason or "") or any(
        "rollback-manager --rollback" in e.message for e in seen.sim.store.events(seen.record.id))
    assert seen.sim.store.rollbacks(deployment_id=seen.record.id) == []
    # The first step failed, so the last safe weights are the baseline's: the candidate keeps running
    # (for a person to look at) but serves no one.
    assert seen.weights[-1] == {"baseline": 100}
    assert seen.counts[-1][3] >= 1


async def test_auto_rollback_off_returns_traffic_to_the_last_step_that_passed() -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.rollback.auto_rollback = False
    config.intelligent_deployment.strategies.canary.step_duration = 20
    # errors start once the candidate has served ~45 s: steps 5% and 10% pass, 25% fails
    seen = await run(scenario(error_rate=0.25, onset_s=45), DeploymentStrategy.CANARY, config=config)
    assert seen.record.phase == "failed"
    assert seen.weights[-1] == {"baseline": 90, CANDIDATE: 10}
    assert "rollback-manager --rollback" in (seen.record.reason or "")


@pytest.mark.parametrize("trigger", ["error_rate_threshold", "response_time_threshold"])
async def test_with_no_control_the_absolute_trigger_itself_rolls_back(trigger: str) -> None:
    """Recreate with no record of the replaced version: no comparison can run, so it must be the
    seed's trigger that fires."""
    bad = scenario(**BAD[trigger]).model_copy(update={"history_s": 0.0})
    seen = await run(bad, DeploymentStrategy.RECREATE, policy=_policy("safeship"))
    assert seen.record.phase == "rolled_back", seen.record.reason
    assert any(e.kind == "history_unavailable" for e in seen.sim.store.events(seen.record.id))
    [row] = seen.sim.store.rollbacks(deployment_id=seen.record.id)
    assert row.evidence.get("trigger") == trigger, row.evidence
