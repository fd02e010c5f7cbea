"""What every analysis policy sees and answers. Policies are pure: state in, state and decision out.

A policy is a canary schedule plus a judge. The engine feeds it one `TickSample` per look (every
`interval()` seconds) and persists the returned state, so a resumed engine continues the same
evidence. Health (readiness, crashes) is the engine's business; policies judge traffic metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ErrorRateThresholdTrigger,
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


class Policy(Protocol):
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
