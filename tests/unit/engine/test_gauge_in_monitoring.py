"""The seed's custom-metric trigger holds where looks are seldom: in recreate's monitoring window
(looks every 30 s) a gauge whose every look of the window is above its threshold rolls back, and a
gauge whose window mean stays below it does not."""

from __future__ import annotations

from typing import Any

from safeship.analysis.policies import get_policy
from safeship.config.models import DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate


def _heap(candidate_mb: float, noise: float) -> Scenario:
    metrics: dict[str, Any] = {"heap_mb": {"baseline": 300, "candidate": candidate_mb, "noise": noise,
                                           "fail_above": 800}}
    return Scenario.model_validate({
        "name": "heap", "seed": 5, "duration_s": 900, "strategy": "recreate",
        "traffic": {"rps": 40},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 200}},
        "candidate": {"ramp_s": 300, "metrics": metrics}, "expect": "rollback",
    })


def test_a_heap_that_grows_past_its_limit_after_promotion_is_rolled_back() -> None:
    for seed in (1, 2, 3):
        result = simulate(_heap(1100, 12), policy="safeship", policy_for=get_policy, seed=seed,
                          strategy=DeploymentStrategy.RECREATE)
        assert result["decision"] == "rollback", (seed, result["reason"])
        assert "heap_mb above 800" in result["reason"]
        assert result["promoted_at_s"] is not None  # caught in the monitoring window, after promotion


def test_a_heap_that_stays_under_its_limit_is_kept() -> None:
    for seed in (1, 2, 3):
        result = simulate(_heap(740, 40), policy="safeship", policy_for=get_policy, seed=seed,
                          strategy=DeploymentStrategy.RECREATE)
        assert result["decision"] == "promote", (seed, result["reason"])
        assert result["phase"] == "succeeded"
