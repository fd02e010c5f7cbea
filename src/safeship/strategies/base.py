"""A strategy turns a request into a plan: a list of declarative steps the engine converges on.

Steps are plain JSON objects so that the plan is stored with the deployment and a resumed engine
runs the same plan; one TypedDict per step kind below describes that JSON. Every step is
idempotent: running it twice does no harm.

    scale       {"version", "replicas"}             start missing instances, drain and stop extra ones
    wait_ready  {"version", "replicas", "timeout"}  until that many are ready; a crash or timeout fails
    weights     {"weights": {version: percent}}     sync ready backends and set traffic weights
    hold        {"max_wait"}                        queue new requests (recreate gap)
    analyze     {"compare", "duration", "policy_step", "min_duration"?, "confirm"?, "interval"?}
                                                    the policy judges until advance / pass / fail
    test_traffic {"version", "rps"}                 a load tester sends `rps` requests/s to that
                                                    version (0 stops it); users' weights unchanged
    promote     {}                                  the decision: the candidate takes all traffic
    pause       {"duration"}                        wait (blue-green keeps the old colour this long)
    monitor     {"duration", "interval", "confirm"?}  post-promotion window: a failure still rolls back
    gate        {"gate", "type"}                    ask the service's webhook gate of that name (with_gates)
    prove       {"baseline", "percent", "duration"}  with no record of the replaced version from before
                                                    the deployment (safeship's policy): split and judge
                                                    side by side before the switch; with one: nothing

A plan is the strategy's own unless the deployment's analysis policy shapes it (`shaped`): the
models of other tools run those tools' own rollouts (a blue/green analysis on load-tester traffic
before the switch, say) with the same step kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

from safeship.config.models import IntelligentDeployment
from safeship.config.webhooks import POSITIONAL_TYPES, WebhookGateConfig


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
    # seconds between looks for this step (absent: the policy's own interval); a model of another
    # tool whose analyses differ by phase (Argo's background run and its blue-green runs) sets it
    interval: NotRequired[float]


class TestTrafficStep(TypedDict):
    """A load tester's synthetic requests to one version, beside the users' weighted traffic: what
    Flagger's load-tester webhook and a blue/green preview test send to a version that takes no
    user traffic yet. 0 stops it."""

    kind: Literal["test_traffic"]
    version: str
    rps: float


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


class GateStep(TypedDict):
    """Ask the service's webhook gate `gate` (services.<name>.webhooks) and go on when it lets the
    deployment pass; only the gate's name and type are kept in the plan, its url and settings are
    read from the config when the step runs."""

    kind: Literal["gate"]
    gate: str
    type: str  # confirm-rollout | pre-rollout | confirm-traffic-increase | confirm-promotion


class ProveStep(TypedDict):
    """Before blue-green's switch, when the replaced version has no record from before the
    deployment to judge the new colour alone against: the traffic is split `percent` (candidate)
    / the rest (`baseline`) and the two are judged side by side for `duration` seconds, so the new
    colour takes all traffic only after a comparison that could have shown it worse. The split's
    baseline counts are then the control of the analysis after the switch. With a record (or
    under another tool's model) the step does nothing."""

    kind: Literal["prove"]
    baseline: str
    percent: int
    duration: float


class IncidentCheckStep(TypedDict):
    """The last step of a rollback from a phase with no concurrent control: the restored version
    is measured against its own record from before the deployment for `duration` seconds; if it
    is raised just as much, the rollback is labelled an incident (every version was hurt)."""

    kind: Literal["incident_check"]
    version: str
    duration: float


Step = (ScaleStep | WaitReadyStep | WeightsStep | HoldStep | AnalyzeStep | PromoteStep | PauseStep | MonitorStep
        | GateStep | TestTrafficStep | IncidentCheckStep | ProveStep)


def steps_from_json(plan: Sequence[Mapping[str, Any]]) -> list[Step]:
    """A stored plan as typed steps. Nothing is checked here: a step of a kind no executor knows
    is refused by the engine when the plan reaches it, as plans stored by any version are run."""
    return [cast(Step, step) for step in plan]


def steps_to_json(plan: Sequence[Step]) -> list[dict[str, Any]]:
    """A plan as the store keeps it: plain JSON objects."""
    return [dict(step) for step in plan]


# A policy's own rollout for a strategy: (strategy name, what was asked, the strategy's own plan as
# JSON steps) -> its plan as JSON steps, or None for the strategy's own (analysis.base.Policy.plan)
PlanShape = Callable[[str, "PlanInput", Sequence[dict[str, Any]]], "list[dict[str, Any]] | None"]


@dataclass(frozen=True)
class PlanInput:
    service: str
    candidate: str
    baseline: str | None  # None on a first deployment
    replicas: int
    settings: IntelligentDeployment  # `rollback` is the deployment's own (request, service or default)
    policy_weights: Sequence[int]  # the analysis policy's canary weights, ending at 100
    readiness_timeout: float
    # safeship's own confirmation split (`confirm` on analyses of the candidate alone); False for
    # the models of other tools, which have no such thing
    confirm: bool = True
    shape: PlanShape | None = None  # the analysis policy's own rollout, when it models another tool


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
    if given.baseline is None or analysis.confirm_duration <= 0 or not given.confirm:
        return None
    return {"baseline": given.baseline, "percent": analysis.confirm_percent, "duration": analysis.confirm_duration}


def prove(confirm: ConfirmSplit) -> ProveStep:
    """The side-by-side proof before a switch when the replaced version has no record (ProveStep),
    with the confirmation split's share and length."""
    return {"kind": "prove", "baseline": confirm["baseline"], "percent": int(confirm["percent"]),
            "duration": float(confirm["duration"])}


def incident_check(version: str, duration: float) -> IncidentCheckStep:
    return {"kind": "incident_check", "version": version, "duration": float(duration)}


def test_traffic(version: str, rps: float) -> TestTrafficStep:
    return {"kind": "test_traffic", "version": version, "rps": float(rps)}


def shaped(strategy: str, given: PlanInput, own: list[Step]) -> list[Step]:
    """The plan a deployment runs under `strategy`: the policy's own rollout when it shapes one
    (`given.shape`), else `own`. Without safeship's confirmation split (`given.confirm` False)
    no step of it carries a `confirm` and it has no `prove` step, whoever built it."""
    plan = own
    if given.shape is not None:
        found = given.shape(strategy, given, steps_to_json(own))
        if found is not None:
            plan = steps_from_json(found)
    if given.confirm:
        return plan
    return [_without_confirm(step) for step in plan if step["kind"] != "prove"]


def _without_confirm(step: Step) -> Step:
    if step["kind"] == "analyze" and "confirm" in step:
        analysis: AnalyzeStep = {**step}
        del analysis["confirm"]
        return analysis
    if step["kind"] == "monitor" and "confirm" in step:
        window: MonitorStep = {**step}
        del window["confirm"]
        return window
    return step


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


def gate(config: WebhookGateConfig) -> GateStep:
    return {"kind": "gate", "gate": config.name, "type": config.type}


def with_gates(plan: Sequence[Step], gates: Sequence[WebhookGateConfig], candidate: str) -> list[Step]:
    """`plan` with a `gate` step for each of the service's positional webhook gates, where it runs:

    - confirm-rollout: first, before anything of the rollout changes (the candidate starts later);
    - pre-rollout: before the first step that gives the candidate traffic (it is ready by then);
      a `prove` step counts as one, as it gives the candidate its share when it runs;
    - confirm-traffic-increase: before every weights (or prove) step that raises the candidate's share,
      except the switch to 100% that belongs to the promotion;
    - confirm-promotion: before the promotion, that is before the promote step and the weights
      steps right before it that give the candidate all traffic.

    Gates of one type run in the order the config lists them. post-rollout and rollback gates are
    not steps (the engine asks them). No gates: the plan unchanged."""
    steps = list(plan)
    wanted = [g for g in gates if g.type in POSITIONAL_TYPES]
    if not wanted:
        return steps

    def of(kind: str) -> list[Step]:
        return [gate(g) for g in wanted if g.type == kind]

    promote_at = next((i for i, s in enumerate(steps) if s["kind"] == "promote"), len(steps))
    promotion_starts = promote_at
    while (promote_at < len(steps) and promotion_starts > 0 and steps[promotion_starts - 1]["kind"] == "weights"
           and _share(steps[promotion_starts - 1], candidate) >= 100):
        promotion_starts -= 1
    out: list[Step] = list(of("confirm-rollout"))
    share, has_traffic = 0, False
    for index, step in enumerate(steps):
        if index == promotion_starts and promote_at < len(steps):
            if not has_traffic:
                out += of("pre-rollout")
                has_traffic = True
            out += of("confirm-promotion")
        if step["kind"] in ("weights", "prove"):  # a prove step may give the candidate its share
            new_share = _share(step, candidate)
            if new_share > 0 and not has_traffic:
                out += of("pre-rollout")
                has_traffic = True
            if new_share > share and index < promotion_starts:
                out += of("confirm-traffic-increase")
            share = new_share
        out.append(step)
    return out


def _share(step: Step, candidate: str) -> int:
    if step["kind"] == "prove":
        return int(step["percent"])
    if step["kind"] != "weights":
        return 0
    return int(step["weights"].get(candidate, 0))
