"""A/A through the real engine: a release identical to the one it replaces, under every strategy,
at low and high traffic, with failures that come in runs and with an incident that hits every
version at once, is rarely rolled back.

Each cell runs SEEDS seeded simulations of the whole deployment (plan, steps, traffic source,
policy, promotion and the monitoring window). At most one false rollback per cell is allowed: a
policy that truly rolls back 1% of good releases passes a cell 98% of the time, one at 10% passes
39% of the time, so a regression of the guarantee shows here. The seeds are fixed, so the outcome
is the same on every machine."""

from __future__ import annotations

from typing import Any

import pytest

from safeship.analysis.policies import get_policy
from safeship.config.models import DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate

SEEDS = range(1, 21)
ALLOWED_FALSE_ROLLBACKS = 1
TRAFFIC = {"low": 5, "high": 100}


# An incident while both versions serve: a canary's steps take minutes, a rolling update of two
# replicas about ten seconds. (Blue-green after the switch confirms a failure side by side with the
# old colour, which bench/aa_sweep.py measures; recreate has no version left to compare with, and an
# incident in its analysis is rolled back: the documented limit of the guarantee.)
INCIDENT_AT_S = {DeploymentStrategy.CANARY: 40.0, DeploymentStrategy.ROLLING: 4.0}


def identical(rps: float, *, burst: float, incident_at_s: float | None = None) -> Scenario:
    traffic: dict[str, Any] = {"rps": rps}
    if incident_at_s is not None:
        traffic["incidents"] = [{"at_s": incident_at_s, "duration_s": 8, "error_rate": 0.15,
                                 "latency_factor": 2.0}]
    return Scenario.model_validate({
        "name": "aa", "seed": 1, "duration_s": 900, "traffic": traffic,
        "baseline": {"error_rate": 0.01, "error_burst": burst, "latency_ms": {"p50": 40, "p99": 200}},
        "candidate": {}, "expect": "promote",
    })


def false_rollbacks(scenario: Scenario, strategy: DeploymentStrategy) -> list[str]:
    rolled_back = []
    for seed in SEEDS:
        result = simulate(scenario, policy="safeship", policy_for=get_policy, seed=seed, strategy=strategy)
        if result["decision"] == "rollback":
            rolled_back.append(f"seed {seed}: {result['reason']}")
    return rolled_back


@pytest.mark.slow
@pytest.mark.parametrize("traffic", sorted(TRAFFIC))
@pytest.mark.parametrize("strategy", list(DeploymentStrategy))
def test_identical_releases_with_runs_of_failures_are_rarely_rolled_back(
    strategy: DeploymentStrategy, traffic: str
) -> None:
    wrong = false_rollbacks(identical(TRAFFIC[traffic], burst=3), strategy)
    assert len(wrong) <= ALLOWED_FALSE_ROLLBACKS, wrong


@pytest.mark.slow
@pytest.mark.parametrize("traffic", sorted(TRAFFIC))
@pytest.mark.parametrize("strategy", [DeploymentStrategy.CANARY, DeploymentStrategy.ROLLING])
def test_an_incident_that_hits_both_serving_versions_is_not_a_regression(
    strategy: DeploymentStrategy, traffic: str
) -> None:
    wrong = false_rollbacks(identical(TRAFFIC[traffic], burst=3, incident_at_s=INCIDENT_AT_S[strategy]), strategy)
    assert len(wrong) <= ALLOWED_FALSE_ROLLBACKS, wrong
