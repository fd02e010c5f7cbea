"""A strategy turns a request into a plan: a list of declarative steps the engine converges on.

Steps are plain JSON objects so that the plan is stored with the deployment and a resumed engine
runs the same plan; one TypedDict per step kind below describes that JSON. Every step is
idempotent: running it twice does no harm.

    scale       {"version", "replicas"}             start missing instances, drain and stop extra ones
    wait_ready  {"version", "replicas", "timeout"}  until that many are ready; a crash or timeout fails
    weights     {"weights": {version: percent}}     sync ready backends and set traffic weights
    hold        {"max_wait"}                        queue new requests (recreate gap)
    analyze     {"compare", "duration", "policy_step", "min_duration"?, "confirm"?}
                                                    the policy judges until advance / pass / fail
    promote     {}                                  the decision: the candidate takes all traffic
    pause       {"duration"}                        wait (blue-green keeps the old colour this long)
    monitor     {"duration", "interval", "confirm"?}  post-promotion window: a failure still rolls back
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

from safeship.config.models import IntelligentDeployment


class ScaleStep(TypedDict):
    kind: Literal["scale"]
    version: str
    replicas: int


class WaitReadyStep(TypedDict):
    kind: Literal["wait_ready"]
    version: str
    replicas: int
    timeout: float  # seconds before too few ready instances fail the step


class WeightsStep(TypedDict):
    kind: Literal["weights"]
    weights: dict[str, int]  # version -> percent of traffic; empty: no version takes traffic


class HoldStep(TypedDict):
    kind: Literal["hold"]
    max_wait: float  # seconds the router queues new requests while no backend serves


class ConfirmSplit(TypedDict):
    """How an analysis of the candidate alone confirms a failure before it rolls back: the
    traffic is split `percent` (candidate) / the rest (`baseline`, still warm) for up to
    `duration` seconds and the two are compared side by side. Worse than the baseline: the
    failure stands. Not worse: the failure came from the moment (an incident every version saw),
    not the release; the candidate takes all traffic again and the step passes."""

    baseline: str
    percent: int
    duration: float


class AnalyzeStep(TypedDict):
    kind: Literal["analyze"]
    duration: float  # seconds of evidence the policy is asked to gather
    compare: NotRequired[bool]  # judge the candidate against the baseline serving beside it
    policy_step: NotRequired[int]  # which of the policy's canary weights this step stands for
    # the shortest the step lasts, whatever the evidence (absent: canary.min_step_duration);
    # a canary with adaptive: false sets it to `duration`
    min_duration: NotRequired[float]
    confirm: NotRequired[ConfirmSplit]  # only on analyses of the candidate alone (compare false)


class PromoteStep(TypedDict):
    kind: Literal["promote"]


class PauseStep(TypedDict):
    kind: Literal["pause"]
    duration: float


class MonitorStep(TypedDict):
    kind: Literal["monitor"]
    duration: float
    interval: float  # seconds between looks
    confirm: NotRequired[ConfirmSplit]  # the replaced version is still warm: confirm a failure first


Step = ScaleStep | WaitReadyStep | WeightsStep | HoldStep | AnalyzeStep | PromoteStep | PauseStep | MonitorStep


def steps_from_json(plan: Sequence[Mapping[str, Any]]) -> list[Step]:
    """A stored plan as typed steps. Nothing is checked here: a step of a kind no executor knows
    is refused by the engine when the plan reaches it, as plans stored by any version are run."""
    return [cast(Step, step) for step in plan]


def steps_to_json(plan: Sequence[Step]) -> list[dict[str, Any]]:
    """A plan as the store keeps it: plain JSON objects."""
    return [dict(step) for step in plan]


@dataclass(frozen=True)
class PlanInput:
    service: str
    candidate: str
    baseline: str | None  # None on a first deployment
    replicas: int
    settings: IntelligentDeployment  # `rollback` is the deployment's own (request, service or default)
    policy_weights: Sequence[int]  # the analysis policy's canary weights, ending at 100
    readiness_timeout: float


class Strategy(Protocol):
    name: str

    def plan(self, given: PlanInput) -> list[Step]: ...


def scale(version: str, replicas: int) -> ScaleStep:
    return {"kind": "scale", "version": version, "replicas": replicas}


def wait_ready(version: str, replicas: int, timeout: float) -> WaitReadyStep:
    return {"kind": "wait_ready", "version": version, "replicas": replicas, "timeout": timeout}


def weights(split: dict[str, int]) -> WeightsStep:
    return {"kind": "weights", "weights": {v: w for v, w in split.items()}}


def analyze(*, compare: bool, duration: float, policy_step: int, min_duration: float | None = None,
            confirm: ConfirmSplit | None = None) -> AnalyzeStep:
    step: AnalyzeStep = {"kind": "analyze", "compare": compare, "duration": duration, "policy_step": policy_step}
    if min_duration is not None:
        step["min_duration"] = min_duration
    if confirm is not None:
        step["confirm"] = confirm
    return step


def promote() -> PromoteStep:
    return {"kind": "promote"}


def pause(duration: float) -> PauseStep:
    return {"kind": "pause", "duration": duration}


def hold(max_wait: float) -> HoldStep:
    return {"kind": "hold", "max_wait": max_wait}


def monitor(settings: IntelligentDeployment, confirm: ConfirmSplit | None = None) -> MonitorStep:
    window = settings.rollback.monitoring
    step: MonitorStep = {"kind": "monitor", "duration": window.duration, "interval": window.interval}
    if confirm is not None:
        step["confirm"] = confirm
    return step


def confirm_split(given: PlanInput) -> ConfirmSplit | None:
    """How a failure of the candidate alone is confirmed while the replaced version is still warm
    (`analysis.confirm_duration`; 0 or no replaced version: it is not)."""
    analysis = given.settings.analysis
    if given.baseline is None or analysis.confirm_duration <= 0:
        return None
    return {"baseline": given.baseline, "percent": analysis.confirm_percent, "duration": analysis.confirm_duration}


def split(candidate: str, baseline: str | None, candidate_percent: int) -> dict[str, int]:
    if baseline is None or candidate_percent >= 100:
        return {candidate: 100}
    return {baseline: 100 - candidate_percent, candidate: candidate_percent}


def first_deployment(given: PlanInput) -> list[Step]:
    """Nothing runs yet, so there is nothing to compare with and no user to protect from a change:
    start the new version, wait for readiness, give it the traffic, watch it."""
    return [
        scale(given.candidate, given.replicas),
        wait_ready(given.candidate, given.replicas, given.readiness_timeout),
        weights({given.candidate: 100}),
        promote(),
        monitor(given.settings),
    ]
