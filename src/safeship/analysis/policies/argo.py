"""Argo Rollouts' canary with a background AnalysisRun, as its documentation shows it.

Sources, checked against Argo Rollouts v1.8 (https://argo-rollouts.readthedocs.io/en/stable/):

* features/analysis/ ("Background Analysis"): ``setWeight`` steps each followed by a ``pause``,
  and a background AnalysisRun that "has no end time" and fails the rollout when a measurement
  fails more often than ``failureLimit: 3``; "if the rollout completes all of its canary steps,
  the rollout is considered successful and the analysis run is stopped by the controller".
* Weights: the user writes the ``setWeight`` steps, so this model walks the configured
  ``traffic_percentages``, like every other policy in the comparison (the docs' example uses
  20, 40, 60, 80). Argo has no default pause; the docs' example pauses 10m, longer than the
  benchmark scenarios run, so a pause here is ``ctx.step_duration`` (the configured step, the
  same budget as the seed's).
* analysis/prometheus/ and features/analysis/: the success-rate template,
  ``successCondition: result[0] >= 0.95``, ``failureLimit: 3``, measured every ``interval``
  (the docs use 5m for background runs and 60s for repeated measurements; this model measures
  every 60 s, so a bad canary is seen sooner). The docs' query selects the whole service; this
  model measures the canary's own requests (as the docs' Kayenta example selects pods by
  ``rollouts-pod-template-hash``), which can only make it stricter.
* Latency: a second metric in the same template, the P99 of the canary's requests
  (``histogram_quantile(0.99, ...)``) with ``successCondition: result[0] <= 0.5`` and the same
  ``failureLimit: 3``. Argo's docs give no latency threshold, so the model takes the user's own:
  a configured p99 (or p95) response-time trigger, as the bound on that quantile; without one,
  500 ms, the same P99 bound as Flagger's builtin ``request-duration``, so both threshold-based
  peers hold the same latency bar.
* Limits (features/analysis/ "Failure Conditions and Failure Limit", "Consecutive Error Limit",
  "Inconclusive Runs"; AnalysisRun spec): ``failureLimit`` defaults to 0 (the first failed
  measurement aborts), ``consecutiveErrorLimit`` to 4 (the fifth error in a row fails),
  ``inconclusiveLimit`` to 0; all are "more than" limits, counted per metric over the run.
  Every documented success-rate template sets ``failureLimit: 3``, which tolerates three noisy
  measurements; the docs leave the choice open, so this model takes 3, the more favourable to
  Argo. With only a success condition a measurement is never Inconclusive, so
  ``inconclusiveLimit`` never acts. ``count`` is unset: a background run has no end.
* No data, from analysis/ ("Handling Metric Results") and ``utils/evaluate/evaluate.go``: with
  only a success condition, a false condition is a Failed measurement and NaN >= 0.95 is
  false, so an interval without canary requests (PromQL 0/0 = NaN) counts as Failed (and NaN
  <= 0.5 for the latency query as well). Before the canary has any series the query returns an
  empty array and ``result[0]`` is an evaluation error: an Error measurement. Neither is a
  silent pass.
* Each seed custom-metric trigger becomes one more metric in the template:
  ``successCondition: result[0] <= threshold``, same limits; a missing gauge is an Error.

One AnalysisRun spans the canary steps, so failure counts carry across steps. Blue-green's
single-version phase (``ctx.compare`` False before promotion) is Argo's
``postPromotionAnalysis``: the same metrics after the traffic switch, successful when the phase
is over; recreate's phase is treated the same way. After promotion (safeship's monitoring
window) Argo has stopped the run, so this model judges nothing and passes when the window ends;
it knows it is past promotion from ``StepContext.promoted``, which the engine sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import Decision, StepContext, ThresholdTrigger, TickSample, Verdict
from safeship.analysis.policies.flagger import configured_weights
from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ResponseTimeThresholdTrigger,
)

INTERVAL_SECONDS = 60.0
MIN_SUCCESS_RATE = 0.95
MAX_LATENCY_SECONDS = 0.5  # P99, when no p99/p95 response-time trigger is configured
FAILURE_LIMIT = 3
CONSECUTIVE_ERROR_LIMIT = 4
INCONCLUSIVE_LIMIT = 0
SUCCESS_RATE = "success-rate"
LATENCY = "latency"
_EPSILON = 1e-6

Measurement = tuple[str, str, float | None]  # phase, message, value


class ArgoPolicy:
    name = "argo"

    def weights(self, configured: Sequence[int]) -> list[int]:
        return configured_weights(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return INTERVAL_SECONDS

    def start(self) -> dict[str, Any]:
        return {"metrics": {}, "canary_has_series": False}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        if ctx.promoted:
            window_over = ctx.time_in_step + _EPSILON >= ctx.step_duration
            return dict(state), Decision(
                Verdict.SUCCESSFUL if window_over else Verdict.INCONCLUSIVE,
                "rollout complete: the AnalysisRun was stopped",
                {"promoted": True},
            )
        had_series = bool(state.get("canary_has_series"))
        old_counts: dict[str, Any] = state.get("metrics", {})
        counts: dict[str, dict[str, int]] = {}
        measured: dict[str, Any] = {}
        verdict: Decision | None = None
        for metric, (phase, message, value) in _measure(sample, ctx.triggers, had_series).items():
            before = old_counts.get(metric, {})
            failed = int(before.get("failed", 0)) + (phase == "Failed")
            errors = int(before.get("consecutive_errors", 0)) + 1 if phase == "Error" else 0
            counts[metric] = {"failed": failed, "consecutive_errors": errors}
            measured[metric] = {"phase": phase, "value": value}
            found: dict[str, Any] = {"trigger": metric, "value": value, "failed": failed}
            if verdict is None and failed > FAILURE_LIMIT:
                verdict = Decision(
                    Verdict.FAILED,
                    f"metric {metric} assessed Failed due to failed ({failed}) > failureLimit "
                    f"({FAILURE_LIMIT}); last measurement: {message}",
                    found | {"failure_limit": FAILURE_LIMIT},
                )
            elif verdict is None and errors > CONSECUTIVE_ERROR_LIMIT:
                verdict = Decision(
                    Verdict.FAILED,
                    f"metric {metric} assessed Error due to consecutiveErrors ({errors}) > "
                    f"consecutiveErrorLimit ({CONSECUTIVE_ERROR_LIMIT}): {message}",
                    found | {"errors_in_a_row": errors, "error_limit": CONSECUTIVE_ERROR_LIMIT},
                )
        new_state: dict[str, Any] = {
            "metrics": {**old_counts, **counts},
            "canary_has_series": had_series or sample.candidate.requests > 0,
        }
        if verdict is not None:
            return new_state, verdict
        evidence = {"weight": sample.candidate_weight, "measurements": measured}
        if ctx.time_in_step + _EPSILON < ctx.step_duration:
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"paused at {sample.candidate_weight}% for {ctx.step_duration:.0f} s; "
                "background analysis running",
                evidence,
            )
        if ctx.compare:
            return new_state, Decision(
                Verdict.ADVANCE, f"pause at {sample.candidate_weight}% over: next step", evidence
            )
        return new_state, Decision(Verdict.SUCCESSFUL, "analysis ran its duration", evidence)


def latency_bound(triggers: Sequence[ThresholdTrigger]) -> tuple[float, float]:
    """(quantile, seconds) of the latency metric: the user's p99/p95 trigger, else P99 <= 0.5 s."""
    for statistic, quantile in (("p99", 0.99), ("p95", 0.95)):
        for trigger in triggers:
            if isinstance(trigger, ResponseTimeThresholdTrigger) and trigger.statistic == statistic:
                return quantile, float(trigger.threshold)
    return 0.99, MAX_LATENCY_SECONDS


def _measure(
    sample: TickSample, triggers: Sequence[ThresholdTrigger], had_series: bool
) -> dict[str, Measurement]:
    """One measurement per metric: Successful, Failed or Error, as Argo's evaluator decides."""
    candidate = sample.candidate
    quantile, bound = latency_bound(triggers)
    name = f"p{round(quantile * 100)}"
    results: dict[str, Measurement] = {}
    if candidate.requests > 0:
        rate = 1.0 - candidate.failed / candidate.requests
        ok = rate >= MIN_SUCCESS_RATE
        results[SUCCESS_RATE] = (
            "Successful" if ok else "Failed",
            f"success rate {rate:.2%} {'>=' if ok else '<'} {MIN_SUCCESS_RATE:.0%}",
            round(rate, 5),
        )
        seconds = candidate.quantile_ms(quantile) / 1000.0
        fast = seconds <= bound
        results[LATENCY] = (
            "Successful" if fast else "Failed",
            f"{name} latency {seconds:.3f}s {'<=' if fast else '>'} {bound:g}s",
            round(seconds, 4),
        )
    elif had_series:
        for metric, condition in ((SUCCESS_RATE, f">= {MIN_SUCCESS_RATE}"), (LATENCY, f"<= {bound:g}")):
            results[metric] = (
                "Failed",
                f"no canary requests: result[0] is NaN, NaN {condition} is false",
                None,
            )
    else:
        for metric in (SUCCESS_RATE, LATENCY):
            results[metric] = ("Error", "empty query result: result[0] is out of range", None)
    for trigger in triggers:
        if not isinstance(trigger, CustomMetricTrigger):
            continue
        value = sample.candidate_gauges.get(trigger.metric)
        if value is None:
            results[trigger.metric] = ("Error", f"no value for {trigger.metric}", None)
            continue
        ok = value <= trigger.threshold  # NaN fails here, as in Argo
        reading = None if math.isnan(value) else value
        results[trigger.metric] = (
            "Successful" if ok else "Failed",
            f"{trigger.metric} {value:.4g} {'<=' if ok else '>'} {trigger.threshold:.4g}",
            reading,
        )
    return results
