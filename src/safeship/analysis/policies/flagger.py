"""Flagger's canary and blue/green analysis (Flagger v1.18.0 and later), with its documented defaults.

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
  canary.go``: "returns the canary threshold (default 1)"), the documented Canary Release spec
  above sets 10, tutorials use 5. The default row takes the documented spec's 10; the tuned row
  (``flagger-tuned``) takes the code default 1, the lowest there is.
* Interval: "schedule interval (default 60s)" (same page; ``GetAnalysisInterval`` in
  ``canary.go``, which also refuses anything under 10 s). The default row checks every 60 s;
  the tuned row every 30 s, the shortest interval Flagger's docs use
  (``docs/gitbook/tutorials/kubernetes-blue-green.md``: ``interval: 30s``).
* https://fluxcd.io/flagger/usage/metrics/ ("Builtin metrics"): ``request-success-rate`` with
  ``thresholdRange.min: 99`` (percent of non-5xx responses over the metric ``interval: 1m``)
  and ``request-duration`` with ``thresholdRange.max: 500`` (the P99, milliseconds). A custom
  metric (MetricTemplate) fails above its ``thresholdRange.max``; the seed's custom-metric
  triggers become such metrics. A check reads the requests since the previous check (one
  interval), not the metric's own 1m window.
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

Blue/green (``plan``), from the same deployment-strategies page ("Blue/Green Deployments") and
the Kubernetes blue/green tutorial (``docs/gitbook/tutorials/kubernetes-blue-green.md``):

* The spec replaces ``stepWeight``/``maxWeight`` with ``iterations: 10`` and ``threshold: 2``
  ("max number of failed iterations before rollback") at ``interval: 1m``: "Flagger will run
  conformance and load tests on the canary pods for ten minutes. If the metrics analysis
  succeeds, live traffic will be switched from the old version to the new one". The rollout
  steps: scale up the canary (green), run load tests and metric checks on the canary pods every
  interval, abort when the failure threshold is reached, then route traffic to the canary and
  promote. A failed check halts the iteration count ("Advance canary iteration 1/10" is logged
  only for passing checks), so the switch comes after ``iterations`` passing checks.
* The green pods take no user traffic during the analysis: the only requests they see are the
  load tester's, the tutorial's webhook ``hey -z 1m -q 10 -c 2`` (10 requests/s from each of 2
  workers, for one minute at every interval): 20 requests/s. This model sends that (the plan's
  ``test_traffic`` step) while the analysis runs, stops it, switches all user traffic at once
  and runs no analysis after the switch (promotion ends it, see above).
* The tuned row runs the tutorial's ``interval: 30s`` with the code-default threshold 1 and the
  same 10 iterations (five minutes, the tutorial's "analysis for five minutes").

Recreate and rolling (Flagger has neither; its strategies are canary, A/B testing and
blue/green): recreate leaves the new version alone with all user traffic, so this model runs
Flagger's blue/green analysis there (``iterations`` passing checks, ``threshold`` failed ones,
on the users' requests, the only traffic there is); a rolling update's batches are canary steps
whose weights follow the instance counts, one passing check each.

How the model knows it is past promotion: the engine says so in ``StepContext.promoted`` (True
in the monitoring window after promotion).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import (
    Decision,
    PlanRequest,
    PlanStep,
    StepContext,
    ThresholdTrigger,
    TickSample,
    Verdict,
)
from safeship.analysis.policies import plans
from safeship.config.models import AnalysisConfig, CustomMetricTrigger

# analysis.interval, "schedule interval (default 60s)": usage/deployment-strategies.md (every spec
# there writes 1m); GetAnalysisInterval, pkg/apis/flagger/v1beta1/canary.go
INTERVAL_SECONDS = 60.0
# analysis.threshold of the Canary Release spec, usage/deployment-strategies.md
THRESHOLD = 10
# analysis.iterations and analysis.threshold of the Blue/Green spec, usage/deployment-strategies.md
BLUE_GREEN_ITERATIONS = 10
BLUE_GREEN_THRESHOLD = 2
# the load-test webhook of tutorials/kubernetes-blue-green.md, `hey -z 1m -q 10 -c 2`: 2 workers
# at 10 requests/s each, restarted every interval
LOAD_TEST_RPS = 20.0
# flagger-tuned: `interval: 30s` of tutorials/kubernetes-blue-green.md, the shortest in the docs;
# threshold 1, the code default (GetAnalysisThreshold, canary.go: "default 1")
TUNED_INTERVAL_SECONDS = 30.0
TUNED_THRESHOLD = 1
# the builtin metrics' thresholdRange, usage/metrics.md
MIN_SUCCESS_RATE_PERCENT = 99.0
MAX_P99_MS = 500.0
_EPSILON = 1e-6


def configured_weights(configured: Sequence[int]) -> list[int]:
    """The configured weights below 100, in order, then 100 (promotion)."""
    steps = [int(w) for w in configured if 0 < int(w) < 100]
    return [*steps, 100]


class FlaggerPolicy:
    """Flagger with its documented analysis specs (see the module's sources)."""

    name = "flagger"
    safeship_mechanisms = False
    interval_s = INTERVAL_SECONDS
    threshold = THRESHOLD  # failed checks that roll a canary (traffic-shifting) analysis back
    blue_green_iterations = BLUE_GREEN_ITERATIONS  # passing checks before the blue/green switch
    blue_green_threshold = BLUE_GREEN_THRESHOLD  # failed checks that abort a blue/green analysis
    load_test_rps = LOAD_TEST_RPS

    def weights(self, configured: Sequence[int]) -> list[int]:
        return configured_weights(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return self.interval_s

    def plan(self, strategy: str, given: PlanRequest, own: Sequence[PlanStep]) -> list[PlanStep] | None:
        """Blue/green: the analysis on load-tester traffic before the switch, none after it.
        Recreate: the blue/green analysis on the new version's users. Canary and rolling: the
        strategy's own plan."""
        if given.baseline is None:
            return None
        analysis_s = self.blue_green_iterations * self.interval_s
        if strategy == "blue_green":
            return plans.preview_blue_green(given, rps=self.load_test_rps, before_switch_s=analysis_s)
        if strategy == "recreate":
            return plans.with_analyses(own, duration=analysis_s)
        return None

    def start(self) -> dict[str, Any]:
        return {"failed_checks": 0, "iterations": 0}

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
        # Without a baseline beside it (blue/green, recreate) the run is Flagger's blue/green
        # analysis: its own threshold, and `iterations` passing checks before it is done.
        single = not ctx.compare
        threshold = self.blue_green_threshold if single else self.threshold
        failure, readings = _check(sample, ctx.triggers)
        failed_checks = int(state.get("failed_checks", 0)) + (failure is not None)
        iterations = int(state.get("iterations", 0)) + (single and failure is None)
        new_state: dict[str, Any] = {"failed_checks": failed_checks, "iterations": iterations}
        evidence: dict[str, Any] = {
            **readings,
            "failed_checks": failed_checks,
            "threshold": threshold,
            "weight": sample.candidate_weight,
        }
        if single:
            evidence["iterations"] = iterations
        if failure is not None:
            metric, message = failure
            evidence["trigger"] = metric
            if failed_checks >= threshold:
                return new_state, Decision(
                    Verdict.FAILED,
                    f"failed checks threshold reached ({failed_checks} of {threshold}); "
                    f"last: {message}",
                    evidence,
                )
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"halt advancement: {message} (failed check {failed_checks} of {threshold})",
                evidence,
            )
        if ctx.compare:
            return new_state, Decision(
                Verdict.ADVANCE, f"checks passed at {sample.candidate_weight}%: advance", evidence
            )
        if iterations >= self.blue_green_iterations:
            return new_state, Decision(
                Verdict.SUCCESSFUL,
                f"checks passed: iteration {iterations} of {self.blue_green_iterations}, promote",
                evidence,
            )
        return new_state, Decision(
            Verdict.INCONCLUSIVE,
            f"advance canary iteration {iterations} of {self.blue_green_iterations}",
            evidence,
        )


class FlaggerTunedPolicy(FlaggerPolicy):
    """Flagger at its most aggressive documented settings: checks every 30 s, and the first
    failed check rolls back (canary and blue/green alike)."""

    name = "flagger-tuned"
    interval_s = TUNED_INTERVAL_SECONDS
    threshold = TUNED_THRESHOLD
    blue_green_threshold = TUNED_THRESHOLD


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
