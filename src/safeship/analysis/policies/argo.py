"""Argo Rollouts' canary and blue-green strategies with their AnalysisRuns, as the docs show them.

Sources, checked against Argo Rollouts v1.8 (https://argo-rollouts.readthedocs.io/en/stable/,
from ``docs/features/analysis.md`` and ``docs/features/bluegreen.md``):

* features/analysis/ ("Background Analysis"): ``setWeight`` steps each followed by a ``pause``,
  and a background AnalysisRun that "has no end time" and measures "at 5 minute
  intervals/samples" (``interval: 5m``), failing the rollout when a measurement fails more often
  than ``failureLimit: 3``; "if the rollout completes all of its canary steps, the rollout is
  considered successful and the analysis run is stopped by the controller".
* Weights: the user writes the ``setWeight`` steps, so this model walks the configured
  ``traffic_percentages``, like every other policy in the comparison (the docs' example uses
  20, 40, 60, 80). Argo has no default pause; the docs' example pauses 10m, two background
  measurements per weight, which at five weights would run past the benchmark's 30-minute
  scenarios. So a pause here is the configured step duration (the seed's budget), lengthened to
  one measurement interval where it is shorter, so that every weight is measured at least once
  (``plan``): 5 minutes at the default 5m interval.
* analysis/prometheus/ and features/analysis/: the success-rate template,
  ``successCondition: result[0] >= 0.95``, ``failureLimit: 3``. The docs' query selects the
  whole service; this model measures the canary's own requests (as the docs' Kayenta example
  selects pods by ``rollouts-pod-template-hash``), which can only make it stricter. The run's
  first measurement is taken one interval after it starts, not at once (an immediate one finds
  no canary series yet: an Error, which counts against nothing but the error limit).
* Latency: a second metric in the same template, the P99 of the canary's requests
  (``histogram_quantile(0.99, ...)``) with ``successCondition: result[0] <= 0.5`` and the same
  ``failureLimit``. Argo's docs give no latency threshold, so the model takes the user's own:
  a configured p99 (or p95) response-time trigger, as the bound on that quantile; without one,
  500 ms, the same P99 bound as Flagger's builtin ``request-duration``, so both threshold-based
  peers hold the same latency bar.
* Limits (features/analysis/ "Failure Conditions and Failure Limit", "Consecutive Error Limit",
  "Inconclusive Runs"; AnalysisRun spec): ``failureLimit`` defaults to 0 (the first failed
  measurement aborts), ``consecutiveErrorLimit`` to 4 (the fifth error in a row fails),
  ``inconclusiveLimit`` to 0; all are "more than" limits, counted per metric over the run.
  Every documented success-rate template sets ``failureLimit: 3``: the default row takes 3, the
  documented template as written; the tuned row (``argo-tuned``) takes the code default 0.
  With only a success condition a measurement is never Inconclusive, so ``inconclusiveLimit``
  never acts.
* No data, from analysis/ ("Handling Metric Results") and ``utils/evaluate/evaluate.go``: with
  only a success condition, a false condition is a Failed measurement and NaN >= 0.95 is
  false, so an interval without canary requests (PromQL 0/0 = NaN) counts as Failed (and NaN
  <= 0.5 for the latency query as well). Before the canary has any series the query returns an
  empty array and ``result[0]`` is an evaluation error: an Error measurement. Neither is a
  silent pass.
* Each seed custom-metric trigger becomes one more metric in the template:
  ``successCondition: result[0] <= threshold``, same limits; a missing gauge is an Error.

Blue-green (``plan``), from features/bluegreen/ ("Sequence of Events", ``prePromotionAnalysis``,
``postPromotionAnalysis``, ``scaleDownDelaySeconds``) and features/analysis/ ("BlueGreen Pre
Promotion Analysis", "BlueGreen Post Promotion Analysis"):

* The new ReplicaSet starts at full size behind the preview service; "once revision 2
  ReplicaSet Pods are fully available, prePromotionAnalysis begins"; on its success the active
  service switches to the new version; then "postPromotionAnalysis analysis begins" and once
  it "completes successfully, the update is successful"; "if the analysis run fails or errors
  out, the Rollout enters an aborted state and switch traffic back to the previous stable
  Replicaset"; the old ReplicaSet is scaled down ``scaleDownDelaySeconds`` (default 30) later.
* Both runs must complete, so they carry a ``count``: the docs' example of a run that completes
  is ``interval: 60s`` with ``count: 5`` ("Multiple measurements can be performed over a longer
  duration period, by specifying the count and interval fields"). This model runs the
  success-rate template with those, each run with its own failure counts: 5 minutes before the
  switch, 5 minutes after it.
* The preview service takes no user traffic. The docs' template queries the service it is given
  (the docs pass the preview service to the pre-promotion run), and with no requests at all the
  query is NaN, a Failed measurement. Assumption: as with Flagger, a load tester drives the
  preview during the pre-promotion run, at Flagger's documented 20 requests/s (Argo documents
  no load tester of its own; its example runs a ``smoke-tests`` template).

Rolling and recreate (Argo has neither as a strategy of its own): a rolling update is what
Argo's canary without traffic routing does, reaching each ``setWeight`` by instance counts, so
this model runs the rolling batches as canary steps under the background run, each lasting at
least one measurement interval. A recreate leaves the new version alone with all traffic, as a
blue-green switch does, so this model runs Argo's post-promotion analysis there (``count``
measurements at ``interval``, ``failureLimit``); a plain Deployment with ``strategy: Recreate``
would get no analysis from Argo at all.

After promotion (safeship's monitoring window) Argo's runs have ended, so this model judges
nothing and passes when the window ends; it knows it is past promotion from
``StepContext.promoted``, which the engine sets.
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
from safeship.analysis.policies.flagger import LOAD_TEST_RPS, configured_weights
from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ResponseTimeThresholdTrigger,
)

# the background run's `interval: 5m`, features/analysis.md "Background Analysis"
BACKGROUND_INTERVAL_SECONDS = 300.0
# a run that completes: `interval: 60s` and `count: 5`, features/analysis.md "Analysis at a
# Predefined Step"; used for blue-green's pre- and post-promotion runs (and recreate's)
RUN_INTERVAL_SECONDS = 60.0
RUN_COUNT = 5
# the success-rate template's `successCondition: result[0] >= 0.95`, `failureLimit: 3`
MIN_SUCCESS_RATE = 0.95
FAILURE_LIMIT = 3
MAX_LATENCY_SECONDS = 0.5  # P99, when no p99/p95 response-time trigger is configured
CONSECUTIVE_ERROR_LIMIT = 4  # consecutiveErrorLimit's default, AnalysisRun spec
INCONCLUSIVE_LIMIT = 0  # inconclusiveLimit's default, AnalysisRun spec
# argo-tuned: the shortest interval of the docs' analysis examples (`interval: 60s`) for the
# background run too, and failureLimit 0, its code default: the first failed measurement aborts
TUNED_BACKGROUND_INTERVAL_SECONDS = 60.0
TUNED_FAILURE_LIMIT = 0
# preview traffic during the pre-promotion run: an assumption (see the module docstring)
PREVIEW_LOAD_RPS = LOAD_TEST_RPS
SUCCESS_RATE = "success-rate"
LATENCY = "latency"
BACKGROUND_RUN = "background"
_EPSILON = 1e-6

Measurement = tuple[str, str, float | None]  # phase, message, value


class ArgoPolicy:
    """Argo Rollouts with the docs' success-rate template (see the module's sources)."""

    name = "argo"
    safeship_mechanisms = False
    background_interval_s = BACKGROUND_INTERVAL_SECONDS
    run_interval_s = RUN_INTERVAL_SECONDS
    run_count = RUN_COUNT
    failure_limit = FAILURE_LIMIT

    def weights(self, configured: Sequence[int]) -> list[int]:
        return configured_weights(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return self.background_interval_s

    def plan(self, strategy: str, given: PlanRequest, own: Sequence[PlanStep]) -> list[PlanStep] | None:
        """Canary and rolling: the strategy's steps, each pause at least one background interval.
        Blue-green: pre-promotion run on the preview (load-tester traffic), switch,
        post-promotion run. Recreate: a post-promotion run after the new version starts."""
        if given.baseline is None:
            return None
        run_s = self.run_count * self.run_interval_s
        if strategy in ("canary", "rolling"):
            interval = self.background_interval_s
            return plans.with_analyses(own, at_least=interval, interval=interval)
        if strategy == "blue_green":
            return plans.preview_blue_green(
                given, rps=PREVIEW_LOAD_RPS, before_switch_s=run_s, before_interval=self.run_interval_s,
                after_switch_s=run_s, after_interval=self.run_interval_s)
        if strategy == "recreate":
            return plans.with_analyses(own, duration=run_s, interval=self.run_interval_s)
        return None

    def start(self) -> dict[str, Any]:
        return {"run": None, "metrics": {}, "canary_has_series": False}

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
        # One background run spans the canary steps; each single-version step (blue-green's
        # pre- and post-promotion runs, recreate's) is a run of its own, counted from nothing.
        run = BACKGROUND_RUN if ctx.compare else f"run-{ctx.step_index}"
        same_run = state.get("run") == run
        had_series = bool(state.get("canary_has_series")) and same_run
        old_counts: dict[str, Any] = state.get("metrics", {}) if same_run else {}
        limit = self.failure_limit
        counts: dict[str, dict[str, int]] = {}
        measured: dict[str, Any] = {}
        verdict: Decision | None = None
        for metric, (phase, message, value) in _measure(sample, ctx.triggers, had_series).items():
            before = old_counts.get(metric, {})
            failed = int(before.get("failed", 0)) + (phase == "Failed")
            errors = int(before.get("consecutive_errors", 0)) + 1 if phase == "Error" else 0
            counts[metric] = {"failed": failed, "consecutive_errors": errors}
            measured[metric] = {"phase": phase, "value": value}
            found: dict[str, Any] = {"trigger": metric, "value": value, "failed": failed, "run": run}
            if verdict is None and failed > limit:
                verdict = Decision(
                    Verdict.FAILED,
                    f"metric {metric} assessed Failed due to failed ({failed}) > failureLimit "
                    f"({limit}); last measurement: {message}",
                    found | {"failure_limit": limit},
                )
            elif verdict is None and errors > CONSECUTIVE_ERROR_LIMIT:
                verdict = Decision(
                    Verdict.FAILED,
                    f"metric {metric} assessed Error due to consecutiveErrors ({errors}) > "
                    f"consecutiveErrorLimit ({CONSECUTIVE_ERROR_LIMIT}): {message}",
                    found | {"errors_in_a_row": errors, "error_limit": CONSECUTIVE_ERROR_LIMIT},
                )
        new_state: dict[str, Any] = {
            "run": run,
            "metrics": {**old_counts, **counts},
            "canary_has_series": had_series or sample.candidate.requests > 0,
        }
        if verdict is not None:
            return new_state, verdict
        evidence = {"weight": sample.candidate_weight, "run": run, "measurements": measured}
        if ctx.time_in_step + _EPSILON < ctx.step_duration:
            doing = ("background analysis running" if ctx.compare
                     else f"AnalysisRun measuring for {ctx.step_duration:.0f} s")
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"at {sample.candidate_weight}% for {ctx.step_duration:.0f} s; {doing}",
                evidence,
            )
        if ctx.compare:
            return new_state, Decision(
                Verdict.ADVANCE, f"pause at {sample.candidate_weight}% over: next step", evidence
            )
        return new_state, Decision(Verdict.SUCCESSFUL, "AnalysisRun completed: Successful", evidence)


class ArgoTunedPolicy(ArgoPolicy):
    """Argo at its most aggressive documented settings: the background run measures every 60 s and
    the first failed measurement aborts (failureLimit 0), in every run."""

    name = "argo-tuned"
    background_interval_s = TUNED_BACKGROUND_INTERVAL_SECONDS
    failure_limit = TUNED_FAILURE_LIMIT


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
