"""Argo Rollouts' canary with a background AnalysisRun, as its documentation shows it.

Sources:

* https://argoproj.github.io/argo-rollouts/features/analysis/ ("Background Analysis"): the
  steps ``setWeight: 20, 40, 60, 80`` each followed by a ``pause``, and a background AnalysisRun
  that "has no end time" and fails the rollout when a measurement fails more often than
  ``failureLimit: 3``. The example pauses 10m per step and measures every 5m; that rollout takes
  40 minutes, longer than the benchmark scenarios run, and Argo has no default pause, so this
  model pauses ``ctx.step_duration`` (the configured step, the same budget as the seed) and
  measures every ``interval: 1m`` (60s is the docs' own example of a repeated measurement).
* https://argoproj.github.io/argo-rollouts/analysis/prometheus/: the success-rate template,
  ``successCondition: result[0] >= 0.95``, ``failureLimit: 3``. The docs' query selects the whole
  service; this model measures the canary's own requests (the way the docs' Kayenta example
  selects pods by ``rollouts-pod-template-hash``), which can only make it stricter.
* Limits: the analysis page ("Failure Conditions and Failure Limit") makes ``failureLimit`` the
  number of failed measurements a run may have; the AnalysisRun spec defaults it to 0 (the first
  failed measurement aborts) and ``consecutiveErrorLimit`` to 4 (the fifth error in a row fails).
  Both are "more than" limits. Every documented success-rate template sets ``failureLimit: 3``,
  which tolerates three noisy minutes, so this model uses 3.
* No data, from the analysis page ("Handling Metric Results") and ``utils/evaluate/evaluate.go``:
  with only a success condition, a false condition is a Failed measurement and NaN >= 0.95 is
  false, so an interval without canary requests (PromQL 0/0 = NaN) counts as Failed. Before the
  canary has any series the query returns an empty array and ``result[0]`` is an evaluation
  error: an Error measurement (Argo retries errors sooner than the interval; this model measures
  once a minute). Neither is a silent pass.
* Each seed custom-metric trigger becomes one more metric in the template:
  ``successCondition: result[0] <= threshold``, same limits; a missing gauge is an Error.

One AnalysisRun spans the whole rollout, so failure counts carry across steps. Single-version
phases (``ctx.compare`` False: blue-green's post-promotion analysis, recreate, the monitoring
window) keep measuring and succeed when the phase's duration is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import Decision, StepContext, ThresholdTrigger, TickSample, Verdict
from safeship.config.models import AnalysisConfig, CustomMetricTrigger

STEP_WEIGHTS = (20, 40, 60, 80, 100)
INTERVAL_SECONDS = 60.0
MIN_SUCCESS_RATE = 0.95
FAILURE_LIMIT = 3
CONSECUTIVE_ERROR_LIMIT = 4
SUCCESS_RATE = "success-rate"
_EPSILON = 1e-6

Measurement = tuple[str, str, float | None]  # phase, message, value


class ArgoPolicy:
    name = "argo"

    def weights(self, configured: Sequence[int]) -> list[int]:
        return list(STEP_WEIGHTS)

    def interval(self, analysis: AnalysisConfig) -> float:
        return INTERVAL_SECONDS

    def start(self) -> dict[str, Any]:
        return {"metrics": {}, "canary_has_series": False}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
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
        new_state = {
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


def _measure(
    sample: TickSample, triggers: Sequence[ThresholdTrigger], had_series: bool
) -> dict[str, Measurement]:
    """One measurement per metric: Successful, Failed or Error, as Argo's evaluator decides."""
    candidate = sample.candidate
    results: dict[str, Measurement] = {}
    if candidate.requests > 0:
        rate = 1.0 - candidate.failed / candidate.requests
        ok = rate >= MIN_SUCCESS_RATE
        results[SUCCESS_RATE] = (
            "Successful" if ok else "Failed",
            f"success rate {rate:.2%} {'>=' if ok else '<'} {MIN_SUCCESS_RATE:.0%}",
            round(rate, 5),
        )
    elif had_series:
        results[SUCCESS_RATE] = (
            "Failed",
            "no canary requests: result[0] is NaN, NaN >= 0.95 is false",
            None,
        )
    else:
        results[SUCCESS_RATE] = ("Error", "empty query result: result[0] is out of range", None)
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
