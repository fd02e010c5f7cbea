"""What every analysis policy sees and answers. Policies are pure: state in, state and decision out.

A policy is a canary schedule plus a judge. The engine feeds it one `TickSample` per look (every
`interval()` seconds) and persists the returned state, so a resumed engine continues the same
evidence. Health (readiness, crashes) is the engine's business; policies judge traffic metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ErrorRateThresholdTrigger,
    IntelligentDeployment,
    ResponseTimeThresholdTrigger,
)
from safeship.routing.base import TrafficCounters

ThresholdTrigger = ErrorRateThresholdTrigger | ResponseTimeThresholdTrigger | CustomMetricTrigger


class Verdict(str, enum.Enum):
    """Argo's analysis phases, plus the canary schedule's own 'advance'."""

    INCONCLUSIVE = "inconclusive"  # keep watching at this weight
    ADVANCE = "advance"  # this step is done: move to the next weight
    SUCCESSFUL = "successful"  # the whole analysis passed: promote
    FAILED = "failed"  # roll back
    ERROR = "error"  # the measurement itself failed; counts against the error limit

    @property
    def is_final(self) -> bool:
        return self in (Verdict.SUCCESSFUL, Verdict.FAILED)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TickSample:
    """What happened during one look's interval (deltas, not cumulative)."""

    t: float  # seconds since the analysis started
    dt: float  # seconds this sample covers
    baseline: TrafficCounters
    candidate: TrafficCounters
    candidate_weight: int  # percent of traffic the candidate had during the interval
    baseline_gauges: Mapping[str, float] = field(default_factory=dict)  # custom metrics, mean over instances
    candidate_gauges: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepContext:
    step_index: int  # index into the policy's weights
    time_in_step: float  # seconds since this weight was applied
    time_in_analysis: float
    compare: bool  # True while a baseline serves traffic beside the candidate (canary, rolling)
    triggers: Sequence[ThresholdTrigger] = ()
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    step_duration: float = 120.0  # the configured step duration
    min_step_duration: float = 10.0
    promoted: bool = False  # True in the monitoring window after promotion, when the candidate serves alone
    # The version being replaced, as it served alone over `history_span_s` before the deployment
    # (cumulative counts, failures, latency histogram), fixed before the candidate's first request;
    # None when there is no record. The control where no baseline serves beside the candidate.
    history: TrafficCounters | None = None
    history_span_s: float | None = None
    history_dispersion: float | None = None  # the record's own dispersion of failures; None: unknown
    # The deployment's strategy ("canary", "blue_green", "rolling", "recreate"; "" when not known),
    # fixed before its first look: a policy may share its error budget by where the strategy
    # gathers its evidence (side by side, or against the record).
    strategy: str = ""
    # The seconds the deployment's plan gives its analysis before full traffic (its analyze steps'
    # durations, laid end to end): how long a deployment that used all of them would have been
    # judged before the monitoring window began.
    planned_analysis_s: float = 0.0
    # The versions' names, for the sentences that explain a decision ("" when not known).
    candidate_version: str = ""
    baseline_version: str = ""


class Policy(Protocol):
    """A canary schedule and a judge.

    Two optional members, read with `uses_safeship_mechanisms` and `plan_shaper` (a Protocol
    cannot declare a member optional, so they are documented here and read with getattr):

    * ``safeship_mechanisms: bool`` (absent: False). True only for safeship's own policy: its
      deployments confirm a failure of the candidate alone side by side before rolling back
      (the plan's ``confirm``) and fix the replaced version's record before the deployment
      (``StepContext.history``). These are safeship's inventions; a model of another tool gets
      neither, or the comparison would credit that tool with them.
    * ``plan(strategy, given, own) -> list[PlanStep] | None``: the whole rollout of a model of
      another tool, per strategy (``strategy`` is a ``DeploymentStrategy`` value; ``given``
      what the strategy was asked, see `PlanRequest`; ``own`` the strategy's own plan as JSON
      steps, for a model that only adjusts it). None: the strategy's own plan. The steps are
      the plan's JSON objects (``safeship.strategies.base`` describes each kind), built here as
      plain mappings because the analysis layer does not import the strategies.
    """

    name: str

    def weights(self, configured: Sequence[int]) -> list[int]:
        """The canary weights this policy walks through, ending at 100."""
        ...

    def interval(self, analysis: AnalysisConfig) -> float:
        """Seconds between looks."""
        ...

    def start(self) -> dict[str, Any]:
        """Fresh, JSON-serialisable state."""
        ...

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        """Fold one sample into the state and decide. Must not mutate `state` in place."""
        ...


PlanStep = dict[str, Any]  # one plan step as the store keeps it (kinds: safeship.strategies.base)


class PlanRequest(Protocol):
    """What a strategy is asked to plan, as a policy that shapes the plan sees it
    (``safeship.strategies.base.PlanInput`` has these fields)."""

    @property
    def service(self) -> str: ...

    @property
    def candidate(self) -> str: ...

    @property
    def baseline(self) -> str | None: ...  # None on a first deployment

    @property
    def replicas(self) -> int: ...

    @property
    def settings(self) -> IntelligentDeployment: ...

    @property
    def policy_weights(self) -> Sequence[int]: ...  # the policy's own `weights`

    @property
    def readiness_timeout(self) -> float: ...


class ShapesPlan(Protocol):
    """The optional `plan` member of a Policy (see Policy)."""

    def plan(self, strategy: str, given: PlanRequest, own: Sequence[PlanStep]) -> list[PlanStep] | None: ...


PlanShaper = Callable[[str, PlanRequest, Sequence[PlanStep]], list[PlanStep] | None]


def uses_safeship_mechanisms(policy: object) -> bool:
    """True when the policy's deployments get safeship's own mechanisms (the confirmation split,
    the record before the deployment); False for models of other tools and any policy that
    does not say."""
    return getattr(policy, "safeship_mechanisms", False) is True


def plan_shaper(policy: object) -> PlanShaper | None:
    """The policy's `plan` member when it has one, else None (the strategies plan alone)."""
    found = getattr(policy, "plan", None)
    return found if callable(found) else None


# ---------------------------------------------------------------- settling a side-by-side split


@dataclass(frozen=True)
class SplitEvidence:
    """What a side-by-side split showed after an alarm on the candidate alone, for the policy
    that raised the alarm to settle (`settle_split`). Counts are deltas."""

    alarm: Mapping[str, Any]  # the alarm's evidence (its test, e-value, bound, counts)
    reason: str  # the alarm's sentence
    baseline_version: str  # the replaced version serving beside the candidate
    candidate: TrafficCounters  # since the split began
    baseline: TrafficCounters  # since the split began
    recent_baseline: TrafficCounters  # since the split was last settled (the whole split at first)
    history: TrafficCounters | None  # the replaced version's record before the deployment
    seconds: float  # since the split began
    incident_since: float | None  # seconds into the split when an incident was first shown
    # Asked before the split's time is up: only an incident is acted on (any other answer waits
    # for the split's end), so the policy should answer INCIDENT only on strong evidence.
    early: bool = False
    # how clustered the record's failures are (its dispersion, >= 1; None: not measured): a run
    # of failures on the old version in a split is no incident when its record shows such runs
    history_dispersion: float | None = None
    # the policy state the split's own looks built (begun by the policy's `split_ledger`)
    split_state: Mapping[str, Any] | None = None


class SplitKind(str, enum.Enum):
    ROLLBACK = "rollback"  # the alarm stands
    INCIDENT = "incident"  # the replaced version is raised as well: hold the split and watch
    RESUME = "resume"  # the incident passed: the candidate takes its traffic again


@dataclass(frozen=True)
class SplitOutcome:
    kind: SplitKind
    sentence: str
    ledger: dict[str, Any] | None = None  # RESUME: the policy state to go on with


def split_settler(policy: object) -> Callable[[dict[str, Any], SplitEvidence], SplitOutcome] | None:
    """The policy's optional ``settle_split(ledger, evidence) -> SplitOutcome``: how an alarm
    raised on the candidate alone is settled after a side-by-side split (``ledger`` is the policy
    state at the alarm). A policy without it lets every alarm stand."""
    found = getattr(policy, "settle_split", None)
    return found if callable(found) else None


def split_starter(policy: object) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The policy's optional ``split_ledger(ledger) -> state``: the state a side-by-side split's
    looks begin with, given the deployment's ledger at the alarm (what the policy carries on into
    the split). Without it the split begins with the policy's `start()`."""
    found = getattr(policy, "split_ledger", None)
    return found if callable(found) else None
