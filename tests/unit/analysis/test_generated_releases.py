"""The benchmark's generated releases: deterministic for a seed, broad as declared, and labelled
must-catch or should-catch by a rule on the release alone."""

from __future__ import annotations

from safeship.benchmark.generate import BAD_KINDS, GOOD_KINDS, MODIFIER_CHANCES, STRATEGIES, draw, draw_one
from safeship.benchmark.labels import label_release, strategy_windows
from safeship.config.scenario import Scenario


def _scenario(strategy: str, rps: float, base: float, candidate: dict[str, object]) -> Scenario:
    return Scenario.model_validate({"name": "t", "strategy": strategy, "traffic": {"rps": rps},
                                    "baseline": {"error_rate": base}, "candidate": candidate,
                                    "expect": "rollback"})


def test_the_same_seed_draws_the_same_releases_and_labels() -> None:
    first, again = draw(40, 3), draw(40, 3)
    assert [r.spec for r in first] == [r.spec for r in again]
    assert [r.label for r in first] == [r.label for r in again]
    assert draw_one(3, 17).spec == first[17].spec  # one release depends on its index only
    assert [r.spec for r in draw(40, 4)] != [r.spec for r in first]


def test_every_drawn_release_is_a_valid_scenario_and_the_distribution_is_covered() -> None:
    drawn = draw(600, 1)
    for release in drawn:
        scenario = release.scenario()  # the same model that reads scenario files
        assert scenario.expect == ("promote" if release.label.kind == "good" else "rollback")
    assert {r.strategy for r in drawn} == set(STRATEGIES)
    assert {r.kind for r in drawn} == {k for k, _ in GOOD_KINDS} | {k for k, _ in BAD_KINDS}
    assert {s for r in drawn for s in r.shapes} == set(MODIFIER_CHANCES)
    rates = [r.spec["traffic"]["rps"] for r in drawn]
    assert min(rates) < 3 and max(rates) > 1000
    assert {len(r.spec["traffic"].get("incidents", [])) for r in drawn} == {0, 1, 2}
    assert {r.spec["traffic"]["pattern"] for r in drawn} == {"constant", "diurnal", "bursty"}
    labels = {r.label.kind for r in drawn}
    assert labels == {"good", "must", "should"}


def test_a_three_times_error_regression_at_100_rps_is_must_catch_on_every_strategy() -> None:
    # the release last round's blue-green promoted in 27 of 30 seeds
    for strategy in STRATEGIES:
        label = label_release(_scenario(strategy, 100, 0.005, {"error_rate": 0.015}), bad=True)
        assert label.kind == "must", (strategy, label.reason)


def test_a_small_regression_on_a_quiet_service_is_only_should_catch() -> None:
    label = label_release(_scenario("canary", 1, 0.005, {"error_rate": 0.0065}), bad=True)
    assert label.kind == "should"
    assert label.excess_errors < 20


def test_runs_of_failures_in_the_baseline_raise_the_bar() -> None:
    independent = _scenario("blue_green", 50, 0.01, {"error_rate": 0.02})
    bursty = independent.model_copy(update={"baseline": independent.baseline.model_copy(update={"error_burst": 20})})
    assert label_release(independent, bad=True).kind == "must"
    assert label_release(bursty, bad=True).kind == "should"


def test_a_regression_that_starts_after_the_windows_is_should_catch() -> None:
    windows = sum(seconds for _, seconds in strategy_windows("blue_green"))
    late = _scenario("blue_green", 100, 0.005, {"error_rate": 0.05, "onset_s": windows + 10})
    assert label_release(late, bad=True).kind == "should"


def test_a_load_dependent_regression_counts_only_where_the_weight_reaches_it() -> None:
    # canary weights stay below 100% until the monitoring window: above 80% only that window counts
    full = label_release(_scenario("canary", 100, 0.005, {"error_rate": 0.02}), bad=True)
    high = label_release(_scenario("canary", 100, 0.005, {"error_rate": 0.02, "min_weight_percent": 80}), bad=True)
    assert 0 < high.excess_errors < full.excess_errors


def test_a_crash_inside_the_windows_is_must_catch_and_one_long_after_is_not() -> None:
    assert label_release(_scenario("recreate", 5, 0.0, {"crash_after_s": 30}), bad=True).kind == "must"
    assert label_release(_scenario("recreate", 5, 0.0, {"crash_after_s": 3000}), bad=True).kind == "should"


def test_rolling_windows_follow_the_instance_counts() -> None:
    shares = [round(w) for w, _ in strategy_windows("rolling", replicas=2)]
    assert shares == [33, 50, 67, 100]


def _latency(strategy: str, rps: float, base_p99: float, candidate_p99: float) -> Scenario:
    return Scenario.model_validate({
        "name": "t", "strategy": strategy, "traffic": {"rps": rps},
        "baseline": {"error_rate": 0.001, "latency_ms": {"p50": 126, "p99": base_p99}},
        "candidate": {"latency_ms": {"p50": 126, "p99": candidate_p99}}, "expect": "rollback",
    })


def test_a_release_within_the_declared_tolerance_is_never_must_catch() -> None:
    # p99 190 -> 211 ms (x1.11) at 1,500 req/s was must-catch, while a good release was x1.10: no
    # policy could be right on both. Must-catch counts what lies beyond 1.25x the p99, and beyond
    # 1.2x the errors.
    for strategy in STRATEGIES:
        assert label_release(_latency(strategy, 1500, 190, 211), bad=True).kind == "should", strategy
        assert label_release(_latency(strategy, 1500, 190, 400), bad=True).kind == "must", strategy
        within = _scenario(strategy, 2000, 0.01, {"error_rate": 0.0119})
        assert label_release(within, bad=True).kind == "should", strategy


def test_a_metric_must_stay_above_its_threshold_for_the_triggers_minute_inside_the_windows() -> None:
    def growth(ramp_s: float) -> Scenario:
        return Scenario.model_validate({
            "name": "t", "strategy": "blue_green", "traffic": {"rps": 100}, "baseline": {"error_rate": 0.001},
            "candidate": {"ramp_s": ramp_s, "metrics": {"memory_mb": {
                "baseline": 300, "candidate": 900, "fail_above": 600}}}, "expect": "rollback",
        })
    # the gauge crosses 600 MB half way through its ramp; blue-green judges 360 s
    assert label_release(growth(560), bad=True).kind == "must"  # crosses at 280 s, above it until 340 s
    assert label_release(growth(640), bad=True).kind == "should"  # crosses at 320 s: the trigger cannot fire in time


def test_a_retried_release_counts_by_what_its_users_got() -> None:
    from safeship.benchmark.stats import rows

    def run(label: str, decision: str, retry: str | None, kind: str | None) -> dict[str, object]:
        return {"policy": "safeship", "strategy": "recreate", "scenario": f"s-{label}-{retry}", "label": label,
                "decision": decision, "expected": "rollback", "candidate_failed_requests_horizon": 0,
                "promoted_at_s": None, "rollback_kind": kind, "in_incident": True, "retry_decision": retry}

    row = rows([run("good", "rollback", "promote", "incident"), run("good", "rollback", "rollback", "incident"),
                run("must", "rollback", "promote", "incident"), run("must", "rollback", None, None)])[0]
    assert (row.incident_rollbacks.hits, row.false_rollbacks.hits) == (2, 0)
    assert (row.retried_promoted.hits, row.retried_promoted.runs) == (1, 2)
    assert (row.must_missed.hits, row.must_missed.runs) == (1, 2)  # promoted on its retry: missed
