"""Flagger's canary analysis with its documented defaults.

Sources:

* https://fluxcd.io/flagger/usage/deployment-strategies (Canary Release): ``interval: 1m``,
  ``threshold: 5`` (failed checks before rollback), ``maxWeight: 50``, ``stepWeight: 10``. Each
  passing check moves the weight up one step; a passing check at ``maxWeight`` promotes.
* https://fluxcd.io/flagger/usage/metrics (Builtin metrics): ``request-success-rate`` with
  ``thresholdRange.min: 99`` (percent of non-5xx responses over the metric interval) and
  ``request-duration`` with ``thresholdRange.max: 500`` (the P99 in milliseconds). A custom
  metric (MetricTemplate) fails above its ``thresholdRange.max``; the seed's custom-metric
  triggers become such metrics.
* Flagger's controller, ``pkg/controller/scheduler.go`` and ``scheduler_metrics.go``: the first
  metric out of range fails the check; ``FailedChecks`` only grows during a run (nothing resets
  it but a new revision), and the canary rolls back once it reaches ``threshold``. Flagger acts
  on the count at its next run; this model rolls back on the fifth failed check itself, one
  interval sooner, which only flatters Flagger.
* No data, from ``pkg/metrics/providers/prometheus.go``: an empty query result is "no values
  found" and halts advancement as a failed check. But once the canary's series exist, an
  interval without requests makes the success-rate query 0/0 = NaN, and NaN compares false
  against both range ends, so the check passes and the canary advances: the well-known complaint
  about empty metrics passing (fluxcd/flagger#1011). This model does both.

Single-version phases (``ctx.compare`` False: blue-green after the switch, recreate, the
monitoring window after promotion) run the same checks, against the same failed-check count,
until the phase's duration is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import Decision, StepContext, ThresholdTrigger, TickSample, Verdict
from safeship.config.models import AnalysisConfig, CustomMetricTrigger

INTERVAL_SECONDS = 60.0
THRESHOLD = 5
STEP_WEIGHT = 10
MAX_WEIGHT = 50
MIN_SUCCESS_RATE_PERCENT = 99.0
MAX_P99_MS = 500.0
_EPSILON = 1e-6


class FlaggerPolicy:
    name = "flagger"

    def weights(self, configured: Sequence[int]) -> list[int]:
        return [*range(STEP_WEIGHT, MAX_WEIGHT + 1, STEP_WEIGHT), 100]

    def interval(self, analysis: AnalysisConfig) -> float:
        return INTERVAL_SECONDS

    def start(self) -> dict[str, Any]:
        return {"failed_checks": 0, "canary_has_series": False}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        has_series = bool(state.get("canary_has_series")) or sample.candidate.requests > 0
        failure, readings = _check(sample, ctx.triggers, bool(state.get("canary_has_series")))
        failed_checks = int(state.get("failed_checks", 0)) + (failure is not None)
        new_state = {"failed_checks": failed_checks, "canary_has_series": has_series}
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
    sample: TickSample, triggers: Sequence[ThresholdTrigger], has_series: bool
) -> tuple[tuple[str, str] | None, dict[str, Any]]:
    """Flagger's metric checks in order; the first failure ends the check, as in Flagger."""
    candidate = sample.candidate
    readings: dict[str, Any] = {"requests": candidate.requests}
    if candidate.requests == 0:
        if not has_series:
            return (
                "request-success-rate",
                "no values found for request-success-rate: the canary is probably not "
                "receiving traffic",
            ), readings
        # 0/0 in PromQL is NaN; NaN is neither below min nor above max, so both checks pass.
        readings["empty_interval"] = True
    else:
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
        if value is None:
            return (trigger.metric, f"no values found for custom metric {trigger.metric}"), readings
        readings[trigger.metric] = None if math.isnan(value) else value
        if value > trigger.threshold:  # a NaN reading passes here too, as it does in Flagger
            return (
                trigger.metric,
                f"{trigger.metric} {value:.4g} > {trigger.threshold:.4g}",
            ), readings
    return None, readings
