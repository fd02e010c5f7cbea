"""`simulate`'s horizon: what a promoted candidate serves after its promotion is charged for at
least `horizon_after_promotion_s`, and every count comes from the router's users' counters."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate
from safeship.routing.base import RouteKey, TrafficCounters
from safeship.routing.sim import SimRouter

GOOD = Scenario.model_validate({"name": "good", "expect": "promote", "duration_s": 900, "traffic": {"rps": 50}})
BAD = Scenario.model_validate({"name": "bad", "expect": "rollback", "duration_s": 900, "traffic": {"rps": 50},
                               "candidate": {"error_rate": 0.2}})


def test_the_horizon_is_the_scenario_duration_by_default() -> None:
    result = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3)
    assert result["decision"] == "promote"
    assert result["horizon_s"] == 900.0


def test_a_promotion_is_charged_for_at_least_the_time_after_it() -> None:
    short = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3)
    long = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3, horizon_after_promotion_s=1800)
    assert long["promoted_at_s"] == short["promoted_at_s"]
    assert long["horizon_s"] == pytest.approx(long["promoted_at_s"] + 1800)
    # the same deployment, decided the same way; only the time it is charged for is longer
    for key in ("decision", "time_to_decision_s", "candidate_requests", "candidate_failed_requests", "reason"):
        assert long[key] == short[key], key
    assert long["candidate_failed_requests_horizon"] > short["candidate_failed_requests_horizon"]


def test_a_horizon_shorter_than_the_scenario_changes_nothing() -> None:
    plain = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3)
    short = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3, horizon_after_promotion_s=1.0)
    assert short == plain


def test_without_a_promotion_the_horizon_is_the_scenario_duration() -> None:
    result = simulate(BAD, policy="safeship", policy_for=get_policy, seed=3, horizon_after_promotion_s=3600)
    assert result["decision"] == "rollback"
    assert result["promoted_at_s"] is None
    assert result["horizon_s"] == 900.0


def test_counts_come_from_the_users_counters_when_the_router_has_them(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[RouteKey] = []

    async def user_counters(self: SimRouter, route: RouteKey) -> Mapping[str, TrafficCounters]:
        read.append(route)
        # the users' share: here, half of every version's requests and failures
        return {v: TrafficCounters(requests=c.requests // 2, errors=c.failed // 2)
                for v, c in (await self.counters(route)).items()}

    plain = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3)
    monkeypatch.setattr(SimRouter, "user_counters", user_counters, raising=False)
    users = simulate(GOOD, policy="seed", policy_for=get_policy, seed=3)
    assert read
    assert users["decision"] == plain["decision"]
    assert users["candidate_requests"] == plain["candidate_requests"] // 2
    assert users["candidate_failed_requests_horizon"] == plain["candidate_failed_requests_horizon"] // 2
