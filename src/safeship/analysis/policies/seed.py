"""The seed's canary as written: fixed weights, one threshold check at the end of each step.

Source: the seed document, the design and code of the deployment system safeship re-implements
(its ``CanaryDeploymentStrategy``, ``RollbackManager`` and its YAML configuration block). What
this model takes from it:

* ``CanaryDeploymentStrategy::deploy`` walks 5, 10, 25, 50, 75, 100 percent whatever is configured,
  and after each weight waits, then checks once (``is_performance_degraded``).
* The wait: the code sleeps 60 s, but the seed's YAML block says ``step_duration: "2m"``. The YAML
  is the contract, so a step lasts ``ctx.step_duration``; the look interval is 60 s, the trigger
  window, and only the look that ends the step decides.
* The thresholds are the seed's rollback triggers (``ctx.triggers``; when none are configured, the
  seed's own: error rate > 0.05 over 1m, average response time > 5 s over 1m). A custom-metric
  trigger fails when the candidate's gauge, averaged over its window, is above the threshold.
* After promotion (``ctx.compare`` False) the seed's ``RollbackManager`` checks the same triggers
  at every look until the monitoring window ends.
* Every check is ``value > threshold``: an empty window exceeds nothing, so the seed advances on
  no data. That silent pass is the seed's behaviour and is kept on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import (
    Decision,
    StepContext,
    ThresholdTrigger,
    TickSample,
    Verdict,
)
from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ErrorRateThresholdTrigger,
    ResponseTimeThresholdTrigger,
)
from safeship.routing.base import TrafficCounters

SEED_WEIGHTS = (5, 10, 25, 50, 75, 100)
LOOK_SECONDS = 60.0  # the triggers' 1m window: one look per window
SEED_TRIGGERS: tuple[ThresholdTrigger, ...] = (
    ErrorRateThresholdTrigger(type="error_rate_threshold", threshold=0.05, duration=60.0),
    ResponseTimeThresholdTrigger(type="response_time_threshold", threshold=5.0, duration=60.0),
)
_EPSILON = 1e-6


class SeedPolicy:
    name = "seed"
    # the seed has no confirmation split and no record before the deployment: those are safeship's
    safeship_mechanisms = False

    def weights(self, configured: Sequence[int]) -> list[int]:
        return list(SEED_WEIGHTS)

    def interval(self, analysis: AnalysisConfig) -> float:
        return LOOK_SECONDS

    def start(self) -> dict[str, Any]:
        return {"step": None, "last_time_in_step": 0.0, "looks": []}

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        step_key = f"{ctx.step_index}:{int(ctx.compare)}"
        same_step = state.get("step") == step_key and ctx.time_in_step >= float(
            state.get("last_time_in_step", 0.0)
        )
        triggers = tuple(ctx.triggers) or SEED_TRIGGERS
        looks = [*state.get("looks", []), _look(sample)] if same_step else [_look(sample)]
        looks = _trim(looks, max(t.duration for t in triggers))
        new_state = {"step": step_key, "last_time_in_step": ctx.time_in_step, "looks": looks}
        step_over = ctx.time_in_step + _EPSILON >= ctx.step_duration
        if ctx.compare and not step_over:
            return new_state, Decision(
                Verdict.INCONCLUSIVE,
                f"the seed checks once, at the end of the {ctx.step_duration:.0f} s step",
            )
        for trigger in triggers:
            breach = _breach(trigger, looks)
            if breach is not None:
                return new_state, breach
        if not step_over:
            return new_state, Decision(
                Verdict.INCONCLUSIVE, "no seed trigger fired; still watching"
            )
        verdict = Verdict.ADVANCE if ctx.compare else Verdict.SUCCESSFUL
        return new_state, Decision(
            verdict,
            f"no seed trigger fired at {sample.candidate_weight}% after {ctx.time_in_step:.0f} s",
            {"weight": sample.candidate_weight, "checked": [t.type for t in triggers]},
        )


def _look(sample: TickSample) -> dict[str, Any]:
    return {
        "dt": sample.dt,
        "candidate": sample.candidate.to_json(),
        "gauges": dict(sample.candidate_gauges),
    }


def _trim(looks: list[dict[str, Any]], window: float) -> list[dict[str, Any]]:
    """Drop the oldest looks that no window needs any more."""
    while len(looks) > 1 and sum(float(look["dt"]) for look in looks[1:]) >= window:
        looks = looks[1:]
    return looks


def _window(looks: Sequence[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """The most recent looks that together cover `seconds`."""
    chosen: list[dict[str, Any]] = []
    covered = 0.0
    for look in reversed(looks):
        chosen.append(look)
        covered += float(look["dt"])
        if covered + _EPSILON >= seconds:
            break
    return chosen


def _breach(trigger: ThresholdTrigger, looks: Sequence[dict[str, Any]]) -> Decision | None:
    window = _window(looks, trigger.duration)
    if isinstance(trigger, CustomMetricTrigger):
        return _custom_breach(trigger, window)
    counters = TrafficCounters()
    for look in window:
        counters = counters.plus(TrafficCounters.from_json(look["candidate"]))
    if counters.requests == 0:
        return None
    seconds = sum(float(look["dt"]) for look in window)
    evidence: dict[str, Any] = {
        "trigger": trigger.type,
        "window_s": round(seconds, 1),
        "requests": counters.requests,
        "failed": counters.failed,
    }
    if isinstance(trigger, ErrorRateThresholdTrigger):
        rate = counters.failed / counters.requests
        if rate <= trigger.threshold:
            return None
        evidence |= {"error_rate": round(rate, 5), "threshold": trigger.threshold}
        return Decision(
            Verdict.FAILED,
            f"candidate error rate {rate:.2%} over the last {seconds:.0f} s is above the seed's "
            f"{trigger.threshold:.2%} threshold",
            evidence,
        )
    statistic = trigger.statistic
    value_ms = (
        counters.mean_ms
        if statistic == "mean"
        else counters.quantile_ms(0.95 if statistic == "p95" else 0.99)
    )
    limit_ms = trigger.threshold * 1000.0
    if not value_ms > limit_ms:
        return None
    evidence |= {f"{statistic}_ms": round(value_ms, 1), "threshold_ms": limit_ms}
    return Decision(
        Verdict.FAILED,
        f"candidate {statistic} response time {value_ms:.0f} ms over the last {seconds:.0f} s is "
        f"above the seed's {limit_ms:.0f} ms threshold",
        evidence,
    )


def _custom_breach(
    trigger: CustomMetricTrigger, window: Sequence[dict[str, Any]]
) -> Decision | None:
    weighted = [
        (float(look["dt"]), float(look["gauges"][trigger.metric]))
        for look in window
        if trigger.metric in look["gauges"]
    ]
    seconds = sum(dt for dt, _ in weighted)
    if seconds <= 0:
        return None
    mean = sum(dt * value for dt, value in weighted) / seconds
    if not mean > trigger.threshold:
        return None
    return Decision(
        Verdict.FAILED,
        f"candidate {trigger.metric} averaged {mean:.4g} over the last {seconds:.0f} s, above the "
        f"seed's threshold {trigger.threshold:.4g}",
        {
            "trigger": trigger.type,
            "metric": trigger.metric,
            "mean": mean,
            "threshold": trigger.threshold,
        },
    )
