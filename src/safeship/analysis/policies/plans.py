"""Plan steps for the models of other tools, which run those tools' own rollouts (`Policy.plan`).

The steps are the plan's JSON objects, the same kinds the strategies build
(``safeship.strategies.base`` describes each one); the analysis layer does not import the
strategies, so the few step shapes these models need are written out here. Each function returns
new objects and never changes the plan it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from safeship.analysis.base import PlanRequest, PlanStep


def scale(version: str, replicas: int) -> PlanStep:
    return {"kind": "scale", "version": version, "replicas": int(replicas)}


def wait_ready(version: str, replicas: int, timeout: float) -> PlanStep:
    return {"kind": "wait_ready", "version": version, "replicas": int(replicas), "timeout": float(timeout)}


def weights(split: dict[str, int]) -> PlanStep:
    return {"kind": "weights", "weights": dict(split)}


def test_traffic(version: str, rps: float) -> PlanStep:
    return {"kind": "test_traffic", "version": version, "rps": float(rps)}


def analyze(*, compare: bool, duration: float, policy_step: int, interval: float | None = None) -> PlanStep:
    step: PlanStep = {"kind": "analyze", "compare": compare, "duration": float(duration), "policy_step": policy_step}
    if interval is not None:
        step["interval"] = float(interval)
    return step


def promote() -> PlanStep:
    return {"kind": "promote"}


def pause(duration: float) -> PlanStep:
    return {"kind": "pause", "duration": float(duration)}


def monitor(given: PlanRequest) -> PlanStep:
    """The monitoring window after promotion, without safeship's confirmation split."""
    window = given.settings.rollback.monitoring
    return {"kind": "monitor", "duration": float(window.duration), "interval": float(window.interval)}


def preview_blue_green(given: PlanRequest, *, rps: float, before_switch_s: float,
                       before_interval: float | None = None, after_switch_s: float | None = None,
                       after_interval: float | None = None) -> list[PlanStep]:
    """Blue-green with the analysis before the switch: the whole new colour starts; a load tester
    sends it `rps` requests/s (users still all reach the old colour) while it is analysed for
    `before_switch_s`; the load tester stops; all user traffic switches at once; with
    `after_switch_s`, a second analysis of the new colour alone (a failure switches back);
    promotion; the monitoring window; the old colour stops `scale_down_delay` later. The
    analysis before the switch is the plan's `policy_step` 0, the one after it 1."""
    assert given.baseline is not None, "a first deployment has no switch"
    blue_green = given.settings.strategies.blue_green
    candidate, replicas = given.candidate, given.replicas
    steps = [
        scale(candidate, replicas),
        wait_ready(candidate, replicas, blue_green.health_check_timeout),
        test_traffic(candidate, rps),
        analyze(compare=False, duration=before_switch_s, policy_step=0, interval=before_interval),
        test_traffic(candidate, 0.0),
        weights({candidate: 100}),
        wait_ready(candidate, replicas, blue_green.traffic_switch_timeout),
    ]
    if after_switch_s is not None:
        steps.append(analyze(compare=False, duration=after_switch_s, policy_step=1, interval=after_interval))
    return [*steps, promote(), monitor(given), pause(blue_green.scale_down_delay), scale(given.baseline, 0)]


def with_analyses(plan: Sequence[PlanStep], *, at_least: float | None = None, duration: float | None = None,
                  interval: float | None = None) -> list[PlanStep]:
    """`plan` with every analyze step lasting at least `at_least` seconds (or exactly `duration`)
    and looking every `interval` seconds when given."""
    out: list[PlanStep] = []
    for step in plan:
        if step.get("kind") == "analyze":
            step = dict(step)
            if duration is not None:
                step["duration"] = float(duration)
            if at_least is not None:
                step["duration"] = max(float(step["duration"]), float(at_least))
            step.pop("min_duration", None)  # the step lasts what the model says, not safeship's shortest
            if interval is not None:
                step["interval"] = float(interval)
        out.append(dict(step))
    return out


def analyses_as_pauses(plan: Sequence[PlanStep]) -> list[PlanStep]:
    """`plan` with each analyze step replaced by a pause of its duration: the deployment moves as
    the strategy moves it, and nothing is judged there."""
    return [pause(float(s["duration"])) if s.get("kind") == "analyze" else dict(s) for s in plan]


def canary_stage_first(given: PlanRequest, plan: Sequence[PlanStep], *, percent: int, duration: float,
                       interval: float | None = None) -> list[PlanStep]:
    """A canary stage before `plan`: enough candidate instances for `percent` of the traffic start
    and take that share beside the baseline, which is judged against them for `duration`
    (`policy_step` 0); then `plan` runs with its own analyses turned into pauses."""
    assert given.baseline is not None, "a first deployment has no baseline to compare with"
    candidate = given.candidate
    needed = max(1, math.ceil(given.replicas * percent / 100))
    stage = [
        scale(candidate, needed),
        wait_ready(candidate, needed, given.readiness_timeout),
        weights({given.baseline: 100 - percent, candidate: percent}),
        analyze(compare=True, duration=duration, policy_step=0, interval=interval),
    ]
    return [*stage, *analyses_as_pauses(plan)]
