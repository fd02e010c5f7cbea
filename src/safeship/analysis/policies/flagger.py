"""Flagger's canary analysis (Flagger v1.18.0 and later), with its documented defaults.

Sources, checked against Flagger's main branch (v1.3x):

* https://fluxcd.io/flagger/usage/deployment-strategies/ ("Canary Release", from
  ``docs/gitbook/usage/deployment-strategies.md``): the analysis spec ``interval: 1m``,
  ``threshold: 10`` ("max number of failed metric checks before rollback"), ``maxWeight: 50``,
  ``stepWeight: 2``; and "Rollout Weights": ``stepWeights: [...]`` sets the weights
  themselves. Each run that passes its checks moves the weight one step; a passing run at the
  last weight promotes.
* Weights: Flagger lets the user choose them (``stepWeights``), so this model walks the
  configured ``traffic_percentages``, like every other policy in the comparison, and promotes
  after a passing check at the last weight below 100 (``maxWeight`` is the last step weight,
  ``pkg/controller/scheduler.go`` ``maxWeight``/``nextStepWeight``).
* Threshold: the code default is 1 (``GetAnalysisThreshold``, ``pkg/apis/flagger/v1beta1/
  canary.go``), the documented spec above sets 10, tutorials use 5. The docs leave the choice
  open, so this model takes 10, the one most favourable to Flagger: it takes ten failed checks
  to roll back a good release, and a failed check already halts advancement, so a bad release
  never gets more traffic while the count grows.
* https://fluxcd.io/flagger/usage/metrics/ ("Builtin metrics"): ``request-success-rate`` with
  ``thresholdRange.min: 99`` (percent of non-5xx responses over the metric ``interval: 1m``)
  and ``request-duration`` with ``thresholdRange.max: 500`` (the P99, milliseconds). A custom
  metric (MetricTemplate) fails above its ``thresholdRange.max``; the seed's custom-metric
  triggers become such metrics.
* ``pkg/controller/scheduler.go`` and ``scheduler_metrics.go``: the first metric out of range
  fails the run; ``FailedChecks`` only grows during a run (nothing but a new revision resets
  it), and the canary rolls back once ``FailedChecks >= threshold``. Flagger acts on the count
  at its next run; this model rolls back on the threshold-th failed check itself, one interval
  sooner, which only flatters Flagger.
* No data: since v1.18.0 ("Fix for when Prometheus returns NaN", fluxcd/flagger#1095, in
  CHANGELOG.md under 1.18.0) ``pkg/metrics/providers/prometheus.go`` returns
  ``ErrNoValuesFound`` for an empty result *and* for NaN, and the scheduler answers "Halt
  advancement no values found" and counts a failed check. So an interval without canary
  requests (PromQL 0/0 = NaN) is a failed check; the older "NaN passes" behaviour is gone.
* Promotion ends the analysis: the rollback check and ``runAnalysis`` only run in the
  Progressing and WaitingPromotion phases; once promoted (Promoting, Finalising, Succeeded)
  Flagger routes traffic to the primary and runs no more checks. So in safeship's
  post-promotion monitoring window this model judges nothing and passes when the window ends.

Before promotion, single-version phases (``ctx.compare`` False: blue-green after the switch,
recreate) run the same checks every interval, against the same failed-check count, until the
phase's duration is over (Flagger's blue/green runs its checks for ``iterations`` intervals
before promoting).

How the model knows it is past promotion: the engine says so in ``StepContext.promoted`` (True
in the monitoring window after promotion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import Decision, StepContext, ThresholdTrigger, TickSample, Verdict
from safeship.config.models import AnalysisConfig, CustomMetricTrigger

INTERVAL_SECONDS = 60.0
THRESHOLD = 10
MIN_SUCCESS_RATE_PERCENT = 99.0
MAX_P99_MS = 500.0
_EPSILON = 1e-6


def configured_weights(configured: Sequence[int]) -> list[int]:
    """The configured weights below 100, in order, then 100 (promotion)."""
    steps = [int(w) for w in configured if 0 < int(w) < 100]
    return [*steps, 100]


class FlaggerPolicy:
    name = "flagger"

    def weights(self, configured: Sequence[int]) -> list[int]:
        return configured_weights(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return INTERVAL_SECONDS

    def start(self) -> dict[str, Any]:
        return {"failed_checks": 0}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        if ctx.promoted:
            window_over = ctx.time_in_step + _EPSILON >= ctx.step_duration
            return dict(state), Decision(
                Verdict.SUCCESSFUL if window_over else Verdict.INCONCLUSIVE,
                "promoted: Flagger runs no analysis after promotion",
                {"promoted": True},
            )
        failure, readings = _check(sample, ctx.triggers)
        failed_checks = int(state.get("failed_checks", 0)) + (failure is not None)
        new_state: dict[str, Any] = {
            "failed_checks": failed_checks,
        }
        evidence: dict[str, Any] = {
            **readings,
            "failed_checks": failed_checks,
            "threshold": THRESHOLD,
            "weight": sample.candidate_weight,
        }
        if failure is not None:
            metric, message = failure
            evidence["trigger"] = metric
            if failed_checks >= THRESHOLD:
                return new_state, Decision(
                    Verdict.FAILED,
                    f"failed checks threshold reached ({failed_checks} of {THRESHOLD}); "
                    f"last: {message}",
                    evidence,
                )
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"halt advancement: {message} (failed check {failed_checks} of {THRESHOLD})",
                evidence,
            )
        if ctx.compare:
            return new_state, Decision(
                Verdict.ADVANCE, f"checks passed at {sample.candidate_weight}%: advance", evidence
            )
        if ctx.time_in_step + _EPSILON >= ctx.step_duration:
            return new_state, Decision(Verdict.SUCCESSFUL, "checks passed to the end", evidence)
        return new_state, Decision(Verdict.INCONCLUSIVE, "checks passed; still watching", evidence)


def _check(
    sample: TickSample, triggers: Sequence[ThresholdTrigger]
) -> tuple[tuple[str, str] | None, dict[str, Any]]:
    """Flagger's metric checks in order; the first failure ends the run, as in Flagger."""
    candidate = sample.candidate
    readings: dict[str, Any] = {"requests": candidate.requests}
    if candidate.requests <= 0:
        # An empty result or 0/0 = NaN: ErrNoValuesFound since v1.18.0, a failed check.
        return (
            "request-success-rate",
            "no values found for request-success-rate: the canary is probably not "
            "receiving traffic",
        ), readings
    success = 100.0 * (1.0 - candidate.failed / candidate.requests)
    p99 = candidate.quantile_ms(0.99)
    readings |= {"success_rate_percent": round(success, 3), "p99_ms": round(p99, 1)}
    if success < MIN_SUCCESS_RATE_PERCENT:
        return (
            "request-success-rate",
            f"success rate {success:.2f}% < {MIN_SUCCESS_RATE_PERCENT:g}%",
        ), readings
    if p99 > MAX_P99_MS:
        return (
            "request-duration",
            f"request duration {p99:.0f}ms > {MAX_P99_MS:.0f}ms",
        ), readings
    for trigger in triggers:
        if not isinstance(trigger, CustomMetricTrigger):
            continue
        value = sample.candidate_gauges.get(trigger.metric)
        if value is None or math.isnan(value):
            return (trigger.metric, f"no values found for custom metric {trigger.metric}"), readings
        readings[trigger.metric] = value
        if value > trigger.threshold:
            return (
                trigger.metric,
                f"{trigger.metric} {value:.4g} > {trigger.threshold:.4g}",
            ), readings
    return None, readings
