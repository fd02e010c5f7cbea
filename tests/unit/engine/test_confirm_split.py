"""Blue-green confirms a failure of the new colour alone side by side with the old, still warm,
colour before it rolls back: an incident that hits every version is not blamed on the release,
and a release that really is worse is still rolled back."""

from __future__ import annotations

from typing import Any

from harness import drive

from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.policies import policy_for
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build

BASELINE = "baseline"


def _scenario(candidate: dict[str, Any], incidents: list[dict[str, Any]]) -> Scenario:
    return Scenario.model_validate({
        "name": "confirm", "seed": 3, "duration_s": 1800, "strategy": "blue_green",
        "traffic": {"rps": 80, "incidents": incidents},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 200}},
        "candidate": candidate, "expect": "promote",
    })


async def _deploy(scenario: Scenario, seed: int) -> tuple[Any, list[dict[str, int]], list[str]]:
    sim = await build(scenario, policy_for=policy_for, seed=seed)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.BLUE_GREEN),
                               policy="safeship")
    sim.world.start_deployment(record.created_at)
    seen = await drive(sim, record.id)
    kinds = [e.kind for e in sim.store.events(record.id)]
    return seen.record, seen.weights, kinds


async def test_an_incident_after_the_switch_is_checked_side_by_side_and_the_release_kept() -> None:
    incident = [{"at_s": 60, "duration_s": 40, "error_rate": 0.12, "latency_factor": 2.0}]
    for seed in (1, 2):
        record, weights, kinds = await _deploy(_scenario({}, incident), seed)
        assert "confirming" in kinds and "confirm_cleared" in kinds, (seed, kinds)
        assert {BASELINE: 50, CANDIDATE: 50} in weights, (seed, weights)
        assert weights[-1] == {CANDIDATE: 100}, (seed, weights)
        assert record.phase == "succeeded", (seed, record.phase, record.reason)


async def test_a_worse_release_is_still_rolled_back_after_the_side_by_side_check() -> None:
    record, weights, kinds = await _deploy(_scenario({"error_rate": 0.04}, []), 1)
    assert record.phase == "rolled_back", record.reason
    assert "confirming" in kinds and "confirm_cleared" not in kinds, kinds
    assert {BASELINE: 50, CANDIDATE: 50} in weights
    assert weights[-1] == {BASELINE: 100}
    assert "side by side" in (record.reason or "")


async def test_a_crash_is_not_second_guessed() -> None:
    record, weights, kinds = await _deploy(_scenario({"crash_after_s": 20}, []), 1)
    assert record.phase == "rolled_back", record.reason
    assert "confirming" not in kinds
    assert {BASELINE: 50, CANDIDATE: 50} not in weights
