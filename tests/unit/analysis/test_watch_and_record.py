"""A release promoted early is watched as long as its plan would have judged it, and the record
before a deployment is long enough to know a quiet or bursty service's rate.

Each case is the shape of a generated release the benchmark labels must-catch and safeship
promoted before: a canary whose errors start eight minutes in (gen1-00004, gen1-01520), a canary
whose instance crashes at 626 s (gen1-01916), and a blue-green release with seven times the
errors of a bursty 32 req/s service (gen1-01869), whose 30-minute record held too few failures to
bound its rate below the regression."""

from __future__ import annotations

import asyncio
from typing import Any

from safeship.analysis.policies import get_policy
from safeship.config.models import SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.simulate import run_simulation, simulate
from safeship.store import Store


def _scenario(strategy: str, candidate: dict[str, Any], *, rps: float, baseline: dict[str, Any],
              history_s: float = 86_400) -> Scenario:
    return Scenario.model_validate({
        "name": "watch", "strategy": strategy, "duration_s": 1800, "history_s": history_s,
        "traffic": {"rps": rps}, "baseline": baseline, "candidate": candidate, "expect": "rollback",
    })


CALM = {"error_rate": 0.003, "latency_ms": {"p50": 30, "p99": 480}}


def test_errors_that_start_after_an_early_promotion_are_caught_in_the_watch() -> None:
    # promoted at 282 s, watched until 582 s: errors from 480 s (ramping over 330 s) were served
    # for good; the configured schedule (5 steps x 120 s, then 300 s) would have watched to 900 s
    scenario = _scenario("canary", {"error_rate": 0.02, "onset_s": 480, "ramp_s": 330}, rps=94, baseline=CALM)
    runs = [simulate(scenario, policy="safeship", policy_for=get_policy, seed=s) for s in (1, 2, 3)]
    assert [r["decision"] for r in runs] == ["rollback"] * 3, [r["reason"] for r in runs]


def test_a_crash_ten_minutes_in_is_caught_in_the_watch() -> None:
    scenario = _scenario("canary", {"crash_after_s": 626.5}, rps=200, baseline=CALM)
    result = simulate(scenario, policy="safeship", policy_for=get_policy, seed=1)
    assert result["decision"] == "rollback", result["reason"]
    assert "died" in result["reason"]


def _run_with_events(scenario: Scenario, seed: int) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    store = Store("sqlite://", deferred=True)
    result = asyncio.run(run_simulation(scenario, policy="safeship", policy_for=get_policy, seed=seed, store=store))
    deployment = store.list_deployments()[0]
    return result, [(e.at - deployment.created_at, e.kind, e.message) for e in store.events(deployment.id)]


def test_the_watch_lasts_the_plans_whole_analysis_time_for_a_good_release() -> None:
    scenario = _scenario("canary", {}, rps=94, baseline=CALM).model_copy(update={"expect": "promote"})
    result, events = _run_with_events(scenario, seed=1)
    assert result["decision"] == "promote"
    # promoted on evidence, well before the plan's 600 s of steps ...
    assert result["promoted_at_s"] is not None and result["promoted_at_s"] < 400
    # ... and watched until the plan's 600 s and the 300 s window had passed, not 300 s after it
    live = [at for at, kind, message in events if kind == "phase" and message == "candidate is live"]
    assert live and live[0] >= 900, events[-5:]


def test_a_days_record_bounds_a_bursty_quiet_service_well_enough() -> None:
    bursty = {"error_rate": 0.0024, "error_burst": 9.1, "latency_ms": {"p50": 148, "p99": 2900}}
    candidate = {"error_rate": 0.0176, "error_burst": 3.6}
    scenario = _scenario("blue_green", candidate, rps=32, baseline=bursty)
    runs = [simulate(scenario, policy="safeship", policy_for=get_policy, seed=s) for s in range(1, 9)]
    caught = [r for r in runs if r["decision"] == "rollback"]
    assert len(caught) >= 6, [r["reason"] for r in runs]  # with a 30-minute record: 4 of 8
    assert all("before the deployment" in r["reason"] for r in caught)


def test_the_record_is_no_longer_than_the_version_served() -> None:
    # the config asks for a day; a version that served for ten minutes has a ten-minute record
    assert SafeshipConfig().intelligent_deployment.analysis.history == 86_400
    scenario = _scenario("blue_green", {}, rps=32, baseline=CALM, history_s=600)
    _, events = _run_with_events(scenario.model_copy(update={"expect": "promote"}), seed=1)
    history = [message for _, kind, message in events if kind == "history"]
    assert history and "over 600s" in history[0], history


def test_a_quiet_service_is_judged_with_its_records_own_dispersion() -> None:
    # 4x the errors at 3 req/s: with the fixed discount for runs of 10 (phi = 19), whatever the
    # record showed, this was missed in 30 of 30 seeds under blue-green, recreate and canary. The
    # record shows independent failures, and the candidate is judged so from its first request.
    plain = {"error_rate": 0.01, "latency_ms": {"p50": 40, "p99": 200}}
    for strategy in ("blue_green", "recreate", "canary"):
        bad = _scenario(strategy, {"error_rate": 0.04}, rps=3, baseline=plain)
        runs = [simulate(bad, policy="safeship", policy_for=get_policy, seed=s) for s in range(1, 6)]
        assert [r["decision"] for r in runs] == ["rollback"] * 5, (strategy, [r["reason"] for r in runs])
        good = _scenario(strategy, {}, rps=3, baseline=plain).model_copy(update={"expect": "promote"})
        runs = [simulate(good, policy="safeship", policy_for=get_policy, seed=s) for s in range(1, 6)]
        assert [r["decision"] for r in runs] == ["promote"] * 5, (strategy, [r["reason"] for r in runs])
