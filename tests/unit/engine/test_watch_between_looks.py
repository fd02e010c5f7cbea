"""In a monitoring window the traffic is looked at every 30 s, but the candidate's instances are
watched every second: a crash there is rolled back within seconds, and the requests the dead
instances dropped in the meantime are counted at the times they were sent (virtual clock)."""

from __future__ import annotations

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate


def test_a_crash_after_promotion_is_rolled_back_before_the_next_look() -> None:
    scenario = Scenario.model_validate({
        "name": "crash", "seed": 2, "duration_s": 900, "traffic": {"rps": 40},
        "baseline": {"error_rate": 0.0, "latency_ms": {"p50": 40, "p99": 200}},
        "candidate": {"error_rate": 0.0, "crash_after_s": 400}, "expect": "rollback",
    })
    for seed in (1, 2):
        result = simulate(scenario, policy="safeship", policy_for=get_policy, seed=seed)
        assert result["decision"] == "rollback", result["reason"]
        assert result["promoted_at_s"] is not None and result["promoted_at_s"] < 400  # crashed while monitored
        assert "died" in result["reason"]
        # the candidate fails nothing until it dies; at 40 req/s half of the traffic on a dead
        # instance until the next 30 s look would have dropped ~300 requests
        assert result["candidate_failed_requests_horizon"] < 60, result
