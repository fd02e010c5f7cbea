"""The peer policies (seed, Flagger, Argo, Kayenta): tables of looks and the decisions they give."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from safeship import histogram
from safeship.analysis.base import (
    Decision,
    Policy,
    StepContext,
    ThresholdTrigger,
    TickSample,
    Verdict,
)
from safeship.analysis.policies import POLICIES, get_policy
from safeship.analysis.policies.argo import ArgoPolicy, ArgoTunedPolicy, latency_bound
from safeship.analysis.policies.flagger import FlaggerPolicy, FlaggerTunedPolicy
from safeship.analysis.policies.kayenta import POINT_SECONDS, KayentaPolicy, KayentaTunedPolicy, classify
from safeship.analysis.policies.seed import SeedPolicy
from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ResponseTimeThresholdTrigger,
)
from safeship.errors import InputError
from safeship.routing.base import TrafficCounters

# W: wait (inconclusive), A: advance, F: failed, S: successful
W, A, F, S = Verdict.INCONCLUSIVE, Verdict.ADVANCE, Verdict.FAILED, Verdict.SUCCESSFUL
CONFIGURED = [5, 10, 25, 50, 75, 100]
QUEUE_DEPTH = CustomMetricTrigger(type="custom_metric", metric="queue_depth", threshold=0.5)


def traffic(requests: int, errors: int = 0, latency_ms: float = 40.0) -> TrafficCounters:
    """`requests` requests, the first `errors` of them 5xx, all taking `latency_ms`."""
    buckets = histogram.empty()
    buckets[histogram.bucket_of(latency_ms)] = requests
    return TrafficCounters(requests, errors, 0, requests * latency_ms, buckets)


def look(
    candidate: TrafficCounters,
    baseline: TrafficCounters | None = None,
    *,
    dt: float = 60.0,
    weight: int = 10,
    gauges: Mapping[str, float] | None = None,
) -> TickSample:
    return TickSample(
        t=0.0,
        dt=dt,
        baseline=baseline if baseline is not None else traffic(1000, 5),
        candidate=candidate,
        candidate_weight=weight,
        candidate_gauges=dict(gauges or {}),
    )


def context(
    time_in_step: float,
    *,
    step: int = 0,
    compare: bool = True,
    duration: float = 120.0,
    triggers: Sequence[ThresholdTrigger] = (),
) -> StepContext:
    return StepContext(
        step_index=step,
        time_in_step=time_in_step,
        time_in_analysis=time_in_step,
        compare=compare,
        triggers=triggers,
        step_duration=duration,
    )


def run(policy: Policy, looks: Sequence[tuple[TickSample, StepContext]]) -> list[Decision]:
    """Feed the looks in order; every state must stay JSON and no input state may change."""
    state = policy.start()
    decisions = []
    for sample, ctx in looks:
        before = copy.deepcopy(state)
        new_state, decision = policy.observe(state, sample, ctx)
        assert state == before, "observe() mutated its input state"
        json.dumps(new_state, allow_nan=False)
        json.dumps(dict(decision.evidence), allow_nan=False)
        state = new_state
        decisions.append(decision)
    return decisions


def verdicts(decisions: Sequence[Decision]) -> list[Verdict]:
    return [d.verdict for d in decisions]


def every_minute(
    samples: Sequence[TickSample], **kwargs: Any
) -> list[tuple[TickSample, StepContext]]:
    return [(s, context(60.0 * (n + 1), **kwargs)) for n, s in enumerate(samples)]


GOOD, BAD = traffic(100, 0), traffic(100, 10)  # 0% and 10% failed


# ---------------------------------------------------------------- registry


def test_get_policy_knows_every_registered_name() -> None:
    assert set(POLICIES) == {"safeship", "seed", "flagger", "argo", "kayenta",
                             "flagger-tuned", "argo-tuned", "kayenta-tuned"}
    for name in POLICIES:
        assert get_policy(name).name == name


def test_get_policy_rejects_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(InputError) as raised:
        get_policy("nope")
    message = str(raised.value)
    assert "'nope'" in message
    for name in ("argo", "flagger", "kayenta", "safeship", "seed"):
        assert name in message


# ---------------------------------------------------------------- seed


def test_seed_walks_its_own_weights_and_looks_once_a_minute() -> None:
    assert SeedPolicy().weights([20, 100]) == [5, 10, 25, 50, 75, 100]
    assert SeedPolicy().interval(AnalysisConfig()) == 60.0


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ([GOOD, GOOD], [W, A]),
        ([BAD, BAD], [W, F]),  # fails at the end of the step, not before
        ([BAD, GOOD], [W, A]),  # only the last minute counts
        ([GOOD, traffic(100, 6)], [W, F]),  # 6% > 5%
        ([GOOD, traffic(100, 5)], [W, A]),  # 5% is not above 5%
        ([GOOD, traffic(100, 0, latency_ms=6000.0)], [W, F]),  # mean 6 s > 5 s
        ([GOOD, traffic(0)], [W, A]),  # an empty window exceeds nothing: the seed advances
    ],
)
def test_seed_checks_at_the_end_of_the_step(
    minutes: list[TrafficCounters], expected: list[Verdict]
) -> None:
    decisions = run(SeedPolicy(), every_minute([look(c) for c in minutes]))
    assert verdicts(decisions) == expected


def test_seed_failure_names_the_trigger_and_numbers() -> None:
    decision = run(SeedPolicy(), every_minute([look(BAD), look(BAD)]))[-1]
    assert decision.evidence["trigger"] == "error_rate_threshold"
    assert decision.evidence["error_rate"] == pytest.approx(0.10)
    assert decision.evidence["threshold"] == 0.05


def test_seed_custom_metric_trigger_fails_on_the_mean_gauge() -> None:
    samples = [look(GOOD, gauges={"queue_depth": 0.2}), look(GOOD, gauges={"queue_depth": 0.9})]
    decisions = run(SeedPolicy(), every_minute(samples, triggers=[QUEUE_DEPTH]))
    assert verdicts(decisions) == [W, F]
    assert decisions[-1].evidence["mean"] == pytest.approx(0.9)


def test_seed_after_promotion_checks_every_look_then_succeeds() -> None:
    bad = [(look(BAD, dt=30.0), context(30.0, compare=False, duration=300.0))]
    assert verdicts(run(SeedPolicy(), bad)) == [F]
    good = [
        (look(GOOD, dt=30.0), context(30.0 * n, compare=False, duration=90.0)) for n in (1, 2, 3)
    ]
    assert verdicts(run(SeedPolicy(), good)) == [W, W, S]


# ---------------------------------------------------------------- flagger


def promoted(time_in_step: float, duration: float = 300.0) -> StepContext:
    return StepContext(
        step_index=0,
        time_in_step=time_in_step,
        time_in_analysis=time_in_step,
        compare=False,
        step_duration=duration,
        promoted=True,
    )


def test_flagger_walks_the_configured_weights_and_checks_once_a_minute() -> None:
    assert FlaggerPolicy().weights(CONFIGURED) == [5, 10, 25, 50, 75, 100]
    assert FlaggerPolicy().weights([20, 100]) == [20, 100]
    assert FlaggerPolicy().interval(AnalysisConfig()) == 60.0


def test_flagger_advances_one_step_per_passed_check() -> None:
    looks = [(look(GOOD), context(60.0, step=step)) for step in range(5)]
    assert verdicts(run(FlaggerPolicy(), looks)) == [A, A, A, A, A]


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ([BAD] * 10, [W] * 9 + [F]),  # rollback only at the tenth failed check
        ([BAD, GOOD] * 5 + [BAD] * 5, [W, A] * 5 + [W] * 4 + [F]),  # passes reset nothing
        ([traffic(1000, 11)] * 10, [W] * 9 + [F]),  # 98.9% < 99%
        ([traffic(1000, 10)], [A]),  # 99.0% is in range
        ([traffic(100, 0, latency_ms=800.0)] * 10, [W] * 9 + [F]),  # p99 800 ms > 500 ms
    ],
)
def test_flagger_counts_failed_checks_to_the_threshold(
    minutes: list[TrafficCounters], expected: list[Verdict]
) -> None:
    decisions = run(FlaggerPolicy(), every_minute([look(c) for c in minutes]))
    assert verdicts(decisions) == expected
    if expected[-1] is F:
        assert decisions[-1].evidence["failed_checks"] == 10


def test_flagger_no_values_and_nan_are_failed_checks() -> None:
    before_traffic = run(FlaggerPolicy(), every_minute([look(traffic(0))]))
    assert verdicts(before_traffic) == [W]
    assert "no values found" in before_traffic[0].reason
    # since v1.18.0 a NaN result (0/0 once the canary has series) is no values found as well
    later = run(FlaggerPolicy(), every_minute([look(GOOD), look(traffic(0))]))
    assert verdicts(later) == [A, W]
    assert later[1].evidence["failed_checks"] == 1


def test_flagger_custom_metric_is_a_max_threshold_check() -> None:
    samples = [
        look(GOOD, gauges={"queue_depth": 0.4}),
        look(GOOD, gauges={"queue_depth": 0.7}),
        look(GOOD),  # no series: no values found
        look(GOOD, gauges={"queue_depth": float("nan")}),  # NaN: no values found
    ]
    decisions = run(FlaggerPolicy(), every_minute(samples, triggers=[QUEUE_DEPTH]))
    assert verdicts(decisions) == [A, W, W, W]
    assert decisions[3].evidence["failed_checks"] == 3


def test_flagger_never_fails_after_promotion() -> None:
    """Flagger runs no analysis once it promotes: failing traffic in the window changes nothing."""
    looks = [(look(c, dt=30.0), promoted(30.0 * n)) for n, c in enumerate([BAD] * 10, 1)]
    decisions = run(FlaggerPolicy(), looks)
    assert verdicts(decisions) == [W] * 9 + [S]
    assert all(d.evidence == {"promoted": True} for d in decisions)


def test_flagger_single_version_phase_before_promotion_is_its_blue_green_analysis() -> None:
    """Without a baseline beside the candidate the run is Flagger's blue/green analysis: the
    documented threshold 2, and 10 passing iterations before it is done."""
    looks = [(look(BAD), context(60.0 * n, compare=False, duration=900.0)) for n in range(1, 3)]
    decisions = run(FlaggerPolicy(), looks)
    assert verdicts(decisions) == [W, F]
    assert decisions[-1].evidence["threshold"] == 2
    good = [(look(GOOD), context(60.0 * n, compare=False, duration=60.0)) for n in range(1, 11)]
    assert verdicts(run(FlaggerPolicy(), good)) == [W] * 9 + [S]  # iterations, not the step's time
    # a failed check halts the iteration count instead of advancing it
    mixed = [(look(c), context(60.0 * n, compare=False)) for n, c in enumerate([BAD] + [GOOD] * 10, 1)]
    assert verdicts(run(FlaggerPolicy(), mixed)) == [W] * 10 + [S]


# ---------------------------------------------------------------- argo


def test_argo_uses_the_configured_weights() -> None:
    assert ArgoPolicy().weights(CONFIGURED) == [5, 10, 25, 50, 75, 100]
    assert ArgoPolicy().weights([20, 40, 60, 80, 100]) == [20, 40, 60, 80, 100]
    assert ArgoPolicy().interval(AnalysisConfig()) == 300.0  # the background run's interval: 5m


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ([GOOD, GOOD], [W, A]),  # the pause is the configured step
        ([BAD, BAD, BAD, BAD], [W, A, W, F]),  # failed (4) > failureLimit (3)
        ([traffic(100, 5), traffic(100, 5)], [W, A]),  # 95% meets result[0] >= 0.95
        ([GOOD, traffic(0), traffic(0), traffic(0), traffic(0)], [W, A, W, A, F]),  # NaN fails
        ([traffic(0)] * 5, [W, A, W, A, F]),  # empty result: errors; the fifth in a row fails
    ],
)
def test_argo_fails_once_the_failure_limit_is_exceeded(
    minutes: list[TrafficCounters], expected: list[Verdict]
) -> None:
    looks = [(look(c), context(60.0 * (n % 2 + 1), step=n // 2)) for n, c in enumerate(minutes)]
    assert verdicts(run(ArgoPolicy(), looks)) == expected


def test_argo_failure_names_the_metric_and_limit() -> None:
    decision = run(ArgoPolicy(), every_minute([look(BAD)] * 4, duration=600.0))[-1]
    assert decision.verdict is F
    assert decision.evidence == {
        "trigger": "success-rate",
        "value": pytest.approx(0.9),
        "failed": 4,
        "failure_limit": 3,
        "run": "background",
    }


def test_argo_fails_on_a_latency_regression() -> None:
    slow = traffic(100, 0, latency_ms=800.0)  # every request 800 ms: p99 > 0.5 s
    decisions = run(ArgoPolicy(), every_minute([look(slow)] * 4, duration=600.0))
    assert verdicts(decisions) == [W, W, W, F]
    assert decisions[-1].evidence["trigger"] == "latency"
    assert decisions[-1].evidence["failed"] == 4
    # the same canary at 300 ms passes the default P99 bound
    fast = traffic(100, 0, latency_ms=300.0)
    assert verdicts(run(ArgoPolicy(), every_minute([look(fast)] * 4, duration=240.0))) == [
        W,
        W,
        W,
        A,
    ]


def test_argo_latency_bound_is_the_configured_quantile_trigger() -> None:
    p95 = ResponseTimeThresholdTrigger(type="response_time_threshold", threshold=0.2, statistic="p95")
    mean = ResponseTimeThresholdTrigger(type="response_time_threshold", threshold=5.0)
    assert latency_bound([mean]) == (0.99, 0.5)  # a mean trigger is no quantile bound
    assert latency_bound([mean, p95]) == (0.95, 0.2)
    medium = traffic(100, 0, latency_ms=300.0)  # fine under 0.5 s, too slow for the 0.2 s SLO
    decisions = run(ArgoPolicy(), every_minute([look(medium)] * 4, duration=600.0, triggers=[p95]))
    assert verdicts(decisions) == [W, W, W, F]
    assert decisions[-1].evidence["trigger"] == "latency"


def test_argo_custom_metric_success_condition() -> None:
    samples = [look(GOOD, gauges={"queue_depth": 0.9})] * 4
    decisions = run(ArgoPolicy(), every_minute(samples, duration=600.0, triggers=[QUEUE_DEPTH]))
    assert verdicts(decisions) == [W, W, W, F]
    assert decisions[-1].evidence["trigger"] == "queue_depth"


def test_argo_single_version_phase_succeeds_after_its_duration() -> None:
    looks = [(look(GOOD), context(60.0 * n, compare=False, duration=120.0)) for n in (1, 2)]
    assert verdicts(run(ArgoPolicy(), looks)) == [W, S]


def test_argo_post_promotion_analysis_fails_a_bad_release() -> None:
    looks = [(look(BAD), context(60.0 * n, compare=False, duration=600.0)) for n in range(1, 5)]
    assert verdicts(run(ArgoPolicy(), looks)) == [W, W, W, F]


def test_argo_stops_its_analysis_once_the_rollout_completes() -> None:
    looks = [(look(c, dt=30.0), promoted(30.0 * n)) for n, c in enumerate([BAD] * 10, 1)]
    assert verdicts(run(ArgoPolicy(), looks)) == [W] * 9 + [S]
    compared = [(look(GOOD), context(60.0 * n, step=0)) for n in (1, 2)]
    window = [(look(BAD, dt=30.0), promoted(30.0 * n, duration=150.0)) for n in range(1, 6)]
    assert verdicts(run(ArgoPolicy(), compared + window)) == [W, A, W, W, W, W, S]


# ---------------------------------------------------------------- tuned rows


def test_flagger_tuned_checks_every_30_seconds_and_rolls_back_at_the_first_failed_check() -> None:
    tuned = FlaggerTunedPolicy()
    assert tuned.interval(AnalysisConfig()) == 30.0
    assert verdicts(run(tuned, [(look(BAD, dt=30.0), context(30.0))])) == [F]
    assert verdicts(run(tuned, [(look(BAD, dt=30.0), context(30.0, compare=False))])) == [F]


def test_argo_tuned_measures_every_60_seconds_and_aborts_at_the_first_failed_measurement() -> None:
    tuned = ArgoTunedPolicy()
    assert tuned.interval(AnalysisConfig()) == 60.0
    decision = run(tuned, [(look(BAD), context(60.0))])[-1]
    assert decision.verdict is F and decision.evidence["failure_limit"] == 0


def test_argo_counts_each_single_version_run_from_nothing() -> None:
    """Blue-green's pre- and post-promotion runs are two AnalysisRuns: failures of the first do
    not count in the second."""
    pre = [(look(BAD), context(60.0 * n, compare=False, step=0, duration=300.0)) for n in (1, 2, 3)]
    post = [(look(BAD), context(60.0 * n, compare=False, step=1, duration=300.0)) for n in (1, 2, 3, 4)]
    decisions = run(ArgoPolicy(), pre + post)
    assert verdicts(decisions) == [W, W, W, W, W, W, F]
    assert decisions[-1].evidence["failed"] == 4 and decisions[-1].evidence["run"] == "run-1"


# ---------------------------------------------------------------- kayenta


def minute_points(
    canary: Sequence[TrafficCounters], baseline: Sequence[TrafficCounters], seconds: float
) -> list[tuple[TickSample, StepContext]]:
    """One look per 60 s data point for `seconds`, cycling through the given per-look counters."""
    looks = []
    for n in range(int(seconds // 60)):
        sample = look(canary[n % len(canary)], baseline[n % len(baseline)], dt=60.0, weight=5)
        looks.append((sample, context(60.0 * (n + 1), duration=120.0)))
    return looks


BASELINE_POINTS = [traffic(950, e) for e in (3, 5, 4, 7, 6, 4, 5, 2)]  # about 0.5% failed


def test_kayenta_runs_one_canary_step_at_the_first_configured_weight() -> None:
    assert KayentaPolicy().weights(CONFIGURED) == [5, 100]
    assert KayentaPolicy().weights([100]) == [100]


def test_kayenta_takes_one_data_point_per_documented_step_of_60_seconds() -> None:
    # CanaryAnalysisExecutionRequestScope.step defaults to 60 s
    assert POINT_SECONDS == 60.0
    assert KayentaPolicy().interval(AnalysisConfig()) == 60.0


def test_kayenta_fails_a_clearly_worse_candidate_at_the_first_judgement() -> None:
    worse = [traffic(50, e) for e in (4, 6, 5, 3, 7, 5)]  # about 10% failed
    decisions = run(KayentaPolicy(), minute_points(worse, BASELINE_POINTS, 300))
    assert verdicts(decisions) == [W] * 4 + [F]
    metrics = decisions[-1].evidence["metrics"]
    assert metrics["error-rate"]["classification"] == "High"
    assert metrics["latency-mean-ms"]["classification"] == "Pass"
    assert decisions[-1].evidence["score"] == 50.0


def test_kayenta_fails_a_slower_candidate() -> None:
    slower = [traffic(50, 0, latency_ms=ms) for ms in (110.0, 130.0, 120.0)]
    baseline = [traffic(950, 5, latency_ms=ms) for ms in (38.0, 42.0, 40.0, 41.0)]
    decisions = run(KayentaPolicy(), minute_points(slower, baseline, 300))
    assert decisions[-1].verdict is F
    assert decisions[-1].evidence["metrics"]["latency-mean-ms"]["classification"] == "High"


def test_kayenta_passes_a_candidate_like_its_baseline() -> None:
    decisions = run(KayentaPolicy(), minute_points(BASELINE_POINTS, BASELINE_POINTS, 900))
    judged = [(n, d) for n, d in enumerate(decisions) if "score" in d.evidence]
    assert [n for n, _ in judged] == [4, 9, 14]  # every 5 minutes, 3 judgements
    assert verdicts([d for _, d in judged]) == [W, W, A]
    assert all(d.evidence["score"] == 100.0 for _, d in judged)


def test_kayenta_default_direction_either_fails_a_quiet_canary_with_fewer_errors() -> None:
    """The judge's default direction is "either": a canary with the same error rate but so few
    requests that most minutes show no failure at all reads as significantly lower, Low."""
    quiet = [traffic(50, e) for e in (0, 0, 1, 0, 0, 0, 0, 0, 1, 0)]
    decisions = run(KayentaPolicy(), minute_points(quiet, BASELINE_POINTS, 900))
    assert decisions[-1].verdict is F
    assert decisions[-1].evidence["metrics"]["error-rate"]["classification"] == "Low"


def test_kayenta_tuned_judges_every_minute() -> None:
    decisions = run(KayentaTunedPolicy(), minute_points(BASELINE_POINTS, BASELINE_POINTS, 900))
    judged = [n for n, d in enumerate(decisions) if "score" in d.evidence]
    assert judged == list(range(15))
    assert decisions[-1].verdict is A


def test_kayenta_without_canary_data_scores_zero() -> None:
    decisions = run(KayentaPolicy(), minute_points([traffic(0)], BASELINE_POINTS, 300))
    assert decisions[-1].verdict is F
    assert decisions[-1].evidence["score"] == 0.0


def test_kayenta_has_nothing_to_judge_without_a_baseline() -> None:
    looks = [(look(BAD), context(30.0 * n, compare=False, duration=60.0)) for n in (1, 2)]
    assert verdicts(run(KayentaPolicy(), looks)) == [W, S]


@pytest.mark.parametrize(
    ("baseline", "canary", "expected"),
    [
        ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], "Pass"),  # identical after sorting
        ([0.0] * 10, [0.0] * 10, "Pass"),  # one value only
        ([], [1.0], "Nodata"),
        ([1.0, None], [None], "Nodata"),  # NaN points are removed
        ([1.0 + i / 100 for i in range(20)], [3.0 + i / 100 for i in range(20)], "High"),
        ([3.0 + i / 100 for i in range(20)], [1.0 + i / 100 for i in range(20)], "Low"),  # lower
    ],
)
def test_kayenta_classifies_a_metric(
    baseline: list[float | None], canary: list[float | None], expected: str
) -> None:
    assert classify(baseline, canary)["classification"] == expected


def test_kayenta_direction_increase_lets_a_lower_canary_pass() -> None:
    baseline, canary = [3.0 + i / 100 for i in range(20)], [1.0 + i / 100 for i in range(20)]
    assert classify(baseline, canary, "increase")["classification"] == "Pass"
    assert classify(canary, baseline, "decrease")["classification"] == "Pass"
    assert classify(canary, baseline, "increase")["classification"] == "High"
