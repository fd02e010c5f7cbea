"""Spinnaker's canary stage judged by Kayenta's NetflixACAJudge, from their documentation.

Sources (Spinnaker 1.3x docs, Kayenta master):

* https://spinnaker.io/docs/guides/user/canary/judge/ (How canary judgment works): per metric, a
  Mann-Whitney U test at a fixed 98% confidence level. A metric is High only when the test
  rejects and the whole confidence interval of the canary-minus-baseline shift lies above the
  tolerance band ±0.25 * |Hodges-Lehmann estimate|, and its mean ratio reaches
  ``allowedIncrease`` (default 1.0); Low is the mirror image (the interval below the band, mean
  ratio at most ``allowedDecrease``, default 1.0). NaN points are removed (``nanStrategy: remove``, the
  default); a metric left without data on either side is Nodata, excluded from the score; if 50%
  or more of the metrics are Nodata the canary scores 0. Score = Pass / counted metrics * 100.
  Identical data passes. Outlier removal is optional there and not used here.
* https://spinnaker.io/docs/guides/user/canary/config/canary-config/ and kayenta's
  ``docs/canary-config.md``: each metric fails on a significant deviation in the direction it is
  configured with, ``increase``, ``decrease`` or ``either`` ("fail if it is significantly higher
  or lower than the baseline"). A metric that does not say is ``either``: the judge reads
  ``direction`` with the default ``"either"`` (``NetflixACAJudge.scala``,
  ``MapUtils.getAsStringWithDefault("either", ..., "canary", "direction")``, kayenta master).
  Both rows here run that default, so a canary significantly *lower* than its baseline (fewer
  errors, faster) is classified Low and fails its metric too; a user may configure ``increase``,
  but the default is what a canary config gets unless someone decides otherwise.
* https://spinnaker.io/docs/guides/user/canary/stage/ (Add a canary stage): a real-time analysis
  scores every Interval over a Lifetime; "growing" (the stage's default, ``useLookback: false``
  in deck-kayenta) judges each time from the beginning. Orca fails the stage as soon as a score
  is at or below ``marginal``, and passes only if the last score reaches ``pass``; thresholds
  marginal 75 / pass 95 (deck-kayenta's own tests use these; the Argo Kayenta example uses 90).
* Data points: one per ``step`` seconds, default 60 (kayenta-standalone-canary-analysis,
  ``CanaryAnalysisExecutionRequestScope.step``: "The value defaults to 60 which means a data
  point will be requested every 60 seconds"; the Argo Rollouts Kayenta example uses
  ``step: 60`` too). So this model looks once a minute, one point per version and metric per
  look.
* Lifetime and interval: orca-kayenta's ``KayentaCanaryContext`` takes ``lifetimeDuration`` (or
  ``lifetimeHours``), no default, and ``canaryAnalysisIntervalMins`` (whole minutes; unset, one
  judgement over the whole lifetime). Argo's Kayenta example runs ``count: 3`` judgements over
  hours; the best-practices page wants 50 points per metric. To fit the benchmark's 30-minute
  scenarios the default row runs a 15-minute lifetime judged 3 times, 5 minutes apart: 5, 10 and
  15 points per version and metric (5 points a side is the fewest at which a two-sided
  Mann-Whitney test can reject at 98%). The tuned row (``kayenta-tuned``) judges every minute,
  the shortest ``canaryAnalysisIntervalMins``, over the same lifetime: a failing score stops the
  stage at the first judgement that shows it.
* Schedule: in Spinnaker the user builds the pipeline's stages, and the canary stage itself
  "doesn't perform any provisioning or cleanup operations" (the stage page); the documented
  pipeline (the Google/Waze pipeline in "Canary analysis: Lessons learned and best practices
  from Google and Waze", Google Cloud blog, 2019, linked from kayenta's docs) deploys a baseline
  and a canary with a small share of production traffic, runs the canary analysis, cleans up,
  then deploys to production with the pipeline's deploy strategy. So this model runs one canary
  stage at the configured schedule's first weight (the same 5% the other policies start at),
  beside the version that serves, then the strategy's own rollout with no analysis of its own
  (Spinnaker's deploy stages judge nothing): for the canary strategy, straight to 100%; for
  blue-green, red/black's switch; for rolling, its batches; for recreate, the recreate (so a
  Kayenta pipeline runs the two versions side by side before a recreate, as its canary stage
  needs; a service that cannot do that cannot use Kayenta's canary stage at all). Walking every
  configured weight with a 15-minute analysis each would run past the scenarios' end, and a
  per-step analysis of the configured step duration (2 minutes, 2 points) could never reject at
  98% confidence.

What the test compares: per 60 s point, each version's error rate (failed / requests), its mean
latency and each custom-metric gauge. The mean, not a p99, because the canary's few requests and
the baseline's many would bias a per-point quantile; and the mean of the latency histogram
(geometric bucket middles), not ``latency_sum_ms``, because the sim world writes the exact
theoretical mean there, which would give noiseless points that differ by rounding alone.
Single-version phases (the monitoring window after promotion) have no baseline to compare with,
so Kayenta has nothing to judge there and they pass when their duration is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from safeship import histogram
from safeship.analysis.base import Decision, PlanRequest, PlanStep, StepContext, TickSample, Verdict
from safeship.analysis.policies import plans
from safeship.config.models import AnalysisConfig, CustomMetricTrigger
from safeship.routing.base import TrafficCounters

POINT_SECONDS = 60.0  # the documented default data point step
LIFETIME_SECONDS = 900.0  # the canary stage's lifetime (no default; see the module docstring)
JUDGEMENT_INTERVAL_SECONDS = 300.0  # canaryAnalysisIntervalMins: 5
JUDGEMENT_COUNT = 3  # judgements over the lifetime
TUNED_JUDGEMENT_INTERVAL_SECONDS = 60.0  # kayenta-tuned: canaryAnalysisIntervalMins: 1, the shortest
DIRECTION = "either"  # the judge's default metric direction (NetflixACAJudge.scala)
ALLOWED_DECREASE = 1.0  # effectSize.allowedDecrease's default (docs/canary-config.md)
CONFIDENCE = 0.98
TOLERANCE = 0.25
ALLOWED_INCREASE = 1.0
PASS_SCORE = 95.0
MARGINAL_SCORE = 75.0
NODATA_FAIL_SHARE = 0.5
ERROR_RATE = "error-rate"
LATENCY = "latency-mean-ms"
_EPSILON = 1e-6
_BUCKET_MIDDLES = [
    math.sqrt(upper * (histogram.BOUNDS_MS[i - 1] if i else upper / 1.15))
    for i, upper in enumerate(histogram.BOUNDS_MS)
] + [histogram.BOUNDS_MS[-1]]  # the overflow bucket: at least its lower bound


class KayentaPolicy:
    """One Spinnaker canary stage judged by Kayenta, then the deploy (see the module's sources)."""

    name = "kayenta"
    safeship_mechanisms = False
    judgement_interval_s = JUDGEMENT_INTERVAL_SECONDS
    lifetime_s = LIFETIME_SECONDS
    direction = DIRECTION

    @property
    def judgement_count(self) -> int:
        return max(1, round(self.lifetime_s / self.judgement_interval_s))

    def weights(self, configured: Sequence[int]) -> list[int]:
        first = next(iter(configured), 100)
        return [first, 100] if first < 100 else [100]

    def interval(self, analysis: AnalysisConfig) -> float:
        return POINT_SECONDS

    def plan(self, strategy: str, given: PlanRequest, own: Sequence[PlanStep]) -> list[PlanStep] | None:
        """The canary stage at the first weight, then the strategy's rollout judging nothing (the
        canary strategy's own plan is already that)."""
        first = next(iter(given.policy_weights), 100)
        if given.baseline is None or strategy == "canary" or first >= 100:
            return None
        return plans.canary_stage_first(given, own, percent=int(first), duration=self.lifetime_s)

    def start(self) -> dict[str, Any]:
        return {"step": None, "points": {}, "scores": []}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        if not ctx.compare:
            if ctx.time_in_step + _EPSILON >= ctx.step_duration:
                return state, Decision(
                    Verdict.SUCCESSFUL, "no baseline in this phase; nothing to judge"
                )
            return state, Decision(
                Verdict.INCONCLUSIVE, "no baseline in this phase; nothing to judge"
            )
        same_step = state.get("step") == ctx.step_index
        points = _append(state.get("points", {}) if same_step else {}, sample, ctx)
        scores: list[float] = list(state.get("scores", [])) if same_step else []
        new_state: dict[str, Any] = {"step": ctx.step_index, "points": points, "scores": scores}
        count = self.judgement_count
        due = int((ctx.time_in_step + _EPSILON) // self.judgement_interval_s)
        if due <= len(scores):
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"collecting points for judgement {len(scores) + 1} of {count}",
            )
        score, results = judge(points, self.direction)
        scores.append(score)
        evidence = {
            "trigger": "kayenta-score",
            "score": score,
            "run": len(scores),
            "metrics": results,
        }
        if score <= MARGINAL_SCORE:
            return new_state, Decision(
                Verdict.FAILED,
                f"canary score {score:.0f} is not above the marginal threshold "
                f"{MARGINAL_SCORE:.0f} ({_summary(results)})",
                evidence,
            )
        if len(scores) < count:
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"interim canary score {score:.0f}; analysis continues",
                evidence,
            )
        if score >= PASS_SCORE:
            return new_state, Decision(
                Verdict.ADVANCE,
                f"final canary score {score:.0f} reaches {PASS_SCORE:.0f}",
                evidence,
            )
        return new_state, Decision(
            Verdict.FAILED,
            f"final canary score {score:.0f} is below the pass threshold {PASS_SCORE:.0f} "
            f"({_summary(results)})",
            evidence,
        )


def _append(
    old: dict[str, Any], sample: TickSample, ctx: StepContext
) -> dict[str, dict[str, list[float | None]]]:
    """A new points table: the old series plus this look's point for every metric."""
    readings = {
        ERROR_RATE: (_error_rate(sample.baseline), _error_rate(sample.candidate)),
        LATENCY: (_mean_latency(sample.baseline), _mean_latency(sample.candidate)),
    }
    for trigger in ctx.triggers:
        if isinstance(trigger, CustomMetricTrigger):
            readings[trigger.metric] = (
                _finite(sample.baseline_gauges.get(trigger.metric)),
                _finite(sample.candidate_gauges.get(trigger.metric)),
            )
    table: dict[str, dict[str, list[float | None]]] = {}
    for metric, (baseline, canary) in readings.items():
        series = old.get(metric, {})
        table[metric] = {
            "baseline": [*series.get("baseline", []), baseline],
            "canary": [*series.get("canary", []), canary],
        }
    return table


def _error_rate(counters: TrafficCounters) -> float | None:
    return counters.failed / counters.requests if counters.requests else None


def _mean_latency(counters: TrafficCounters) -> float | None:
    """The histogram's mean: each request at its bucket's geometric middle."""
    if not counters.requests:
        return None
    total = sum(count * _BUCKET_MIDDLES[i] for i, count in enumerate(counters.latency_buckets))
    return total / counters.requests


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def judge(
    points: dict[str, dict[str, list[float | None]]], direction: str = DIRECTION
) -> tuple[float, dict[str, Any]]:
    """NetflixACAJudge over the points table: the summary score and each metric's result."""
    results = {metric: classify(s["baseline"], s["canary"], direction) for metric, s in points.items()}
    labels = [r["classification"] for r in results.values()]
    nodata = labels.count("Nodata")
    if not labels or nodata >= NODATA_FAIL_SHARE * len(labels):
        return 0.0, results
    counted = len(labels) - nodata
    return round(100.0 * labels.count("Pass") / counted, 2), results


def classify(
    baseline: Sequence[float | None], canary: Sequence[float | None], direction: str = DIRECTION
) -> dict[str, Any]:
    """One metric in `direction` (increase, decrease or either): Pass, High, Low or Nodata, with
    the numbers behind it."""
    control = np.array([v for v in baseline if v is not None], dtype=float)
    experiment = np.array([v for v in canary if v is not None], dtype=float)
    result: dict[str, Any] = {
        "baseline_points": int(control.size),
        "canary_points": int(experiment.size),
    }
    if control.size == 0 or experiment.size == 0:
        return result | {"classification": "Nodata"}
    baseline_mean, canary_mean = float(control.mean()), float(experiment.mean())
    ratio = canary_mean / baseline_mean if baseline_mean != 0 else math.nan
    result |= {
        "baseline_mean": baseline_mean,
        "canary_mean": canary_mean,
        "ratio": None if math.isnan(ratio) else ratio,
    }
    if (
        np.array_equal(np.sort(control), np.sort(experiment))
        or np.unique(np.concatenate([control, experiment])).size == 1
    ):
        return result | {"classification": "Pass"}
    p_value = float(stats.mannwhitneyu(experiment, control, alternative="two-sided").pvalue)
    estimate, lower, upper = _shift_interval(experiment, control)
    band = TOLERANCE * abs(estimate)
    significant = p_value < 1.0 - CONFIDENCE
    high = (
        direction in ("increase", "either")
        and significant
        and lower > band
        and (math.isnan(ratio) or ratio >= ALLOWED_INCREASE)
    )
    low = (
        direction in ("decrease", "either")
        and significant
        and upper < -band
        and (math.isnan(ratio) or ratio <= ALLOWED_DECREASE)
    )
    return result | {
        "classification": "High" if high else "Low" if low else "Pass",
        "p_value": p_value,
        "shift_estimate": estimate,
        "shift_interval": [lower, upper],
    }


def _shift_interval(experiment: np.ndarray, control: np.ndarray) -> tuple[float, float, float]:
    """Hodges-Lehmann shift (canary - baseline) and its distribution-free 98% interval.

    The interval takes order statistics of all pairwise differences at the ranks the normal
    approximation of U gives, as R's ``wilcox.test(conf.int = TRUE)`` (which Kayenta mirrors)
    does for samples of this size.
    """
    differences = np.sort(np.subtract.outer(experiment, control).ravel())
    n, m = experiment.size, control.size
    z = float(stats.norm.ppf(1.0 - (1.0 - CONFIDENCE) / 2.0))
    k = math.floor(n * m / 2.0 - z * math.sqrt(n * m * (n + m + 1) / 12.0))
    k = min(max(k, 0), differences.size - 1)
    return (
        float(np.median(differences)),
        float(differences[k]),
        float(differences[differences.size - 1 - k]),
    )


def _summary(results: dict[str, Any]) -> str:
    parts = []
    for metric, result in results.items():
        label = result["classification"]
        ratio = result.get("ratio")
        parts.append(f"{metric} {label}" + (f" x{ratio:.2f}" if label in ("High", "Low") and ratio else ""))
    return ", ".join(parts)


class KayentaTunedPolicy(KayentaPolicy):
    """Kayenta judged every minute (the shortest canaryAnalysisIntervalMins) over the same
    lifetime: the stage fails at the first score at or below marginal."""

    name = "kayenta-tuned"
    judgement_interval_s = TUNED_JUDGEMENT_INTERVAL_SECONDS
