"""What the engine keeps about a deployment between ticks, besides the record's own columns.

The store keeps it as one JSON object (the deployment's status column); `DeploymentStatus` is
its typed form. Every key it writes has a reader. The JSON shape is the one stored by every
earlier safeship, so old rows load: keys that no code reads any more are dropped on loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from safeship.engine.process_mark import DriverMark
from safeship.routing.base import TrafficCounters
from safeship.strategies.base import Step, steps_from_json, steps_to_json

Weights = dict[str, int]  # version -> percent of traffic

# Stored by earlier versions and never read: loading drops them.
DROPPED_KEYS = frozenset({"start_counters", "decision_counters"})


class CountSummary(TypedDict):
    """One version's requests in one look, as people read them."""

    requests: int
    failed: int
    error_rate: float | None
    p99_ms: float | None


class SampleSummary(TypedDict):
    """The last look of the analysis, as `--status` and the API show it."""

    baseline: CountSummary
    candidate: CountSummary
    dt: float


@dataclass(frozen=True)
class Approval:
    by: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at}


@dataclass(frozen=True)
class FreezeOverride:
    window: str  # the freeze window in force, described
    reason: str | None
    by: str | None

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "reason": self.reason, "by": self.by}


class Confirming(TypedDict):
    since: float
    reason: str
    trigger: str
    start: dict[str, dict[str, Any]]  # cumulative counters per version when the split began (to_json)
    ledger: NotRequired[dict[str, Any] | None]  # the policy state at the alarm, settled at the split's end
    alarm: NotRequired[dict[str, Any]]  # the alarm's evidence
    incident_since: NotRequired[float | None]  # seconds into the split when an incident was shown
    settled_at: NotRequired[float | None]  # when the split was last settled
    recent: NotRequired[dict[str, dict[str, Any]]]  # cumulative counters at the last settling (to_json)
    incident: NotRequired[str]  # the incident's sentence while the split holds


@dataclass
class AnalysisProgress:
    """Where the analysis steps stand. Its state carries over from one analysis step to the next."""

    marker: str | None = None  # "step_index:phase" of the step the looks below belong to
    started_at: float | None = None  # the first look of the first analysis step
    last_look: float | None = None
    counters: dict[str, TrafficCounters] = field(default_factory=dict)  # cumulative, at the last look
    policy_state: dict[str, Any] | None = None  # the policy's own, opaque JSON
    errors_in_a_row: int = 0  # failed measurements and temporary errors since the last good look
    last_sample: SampleSummary | None = None
    unready_since: dict[str, float] = field(default_factory=dict)  # instance id -> first seen unready
    # The version being replaced, as it served alone before the deployment: fixed before the
    # candidate's first request, and the control for steps where the versions do not serve side
    # by side (blue-green after the switch, recreate). None: no record (a first deployment, or a
    # traffic source that kept none that far back).
    history: TrafficCounters | None = None
    history_span_s: float | None = None
    history_dispersion: float | None = None  # the record's own dispersion of failures, when known
    # A confirmation split under way (see AnalyzeStep.confirm): when it started and the failure
    # it checks. None: none.
    confirming: Confirming | None = None

    @property
    def started(self) -> bool:
        return self.started_at is not None


@dataclass
class GateProgress:
    """The webhook gate step under way: how often it was asked, what it last answered, and since
    when it holds the deployment (a confirm gate that has not answered 2xx)."""

    marker: str  # "step_index:gate name": a new gate step starts from nothing
    name: str
    type: str
    started_at: float
    attempts: int = 0
    next_at: float | None = None  # when it is asked next; None: now
    last_answer: str | None = None
    last_asked_at: float | None = None
    held_since: float | None = None  # a confirm gate's first answer that was not 2xx

    def to_json(self) -> dict[str, Any]:
        return {"marker": self.marker, "name": self.name, "type": self.type, "started_at": self.started_at,
                "attempts": self.attempts, "next_at": self.next_at, "last_answer": self.last_answer,
                "last_asked_at": self.last_asked_at, "held_since": self.held_since}

    def view(self) -> dict[str, Any]:
        """As `--status` and the API show it."""
        return {"name": self.name, "type": self.type, "held": self.held_since is not None,
                "since": self.held_since if self.held_since is not None else self.started_at,
                "last_answer": self.last_answer, "last_asked_at": self.last_asked_at, "attempts": self.attempts,
                "next_at": self.next_at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateProgress:
        return cls(
            marker=str(data["marker"]), name=str(data["name"]), type=str(data["type"]),
            started_at=float(data["started_at"]), attempts=int(data.get("attempts") or 0),
            next_at=_number(data.get("next_at")), last_answer=data.get("last_answer"),
            last_asked_at=_number(data.get("last_asked_at")), held_since=_number(data.get("held_since")),
        )


@dataclass
class RollbackProgress:
    """A rollback under way: its own plan, where it stands in it, and why it started."""

    id: str  # the rollback record's id
    plan: list[Step]
    step: int
    attempt: int  # 1 for the first run of the plan; bounded by max_rollback_attempts
    started_at: float
    to_version: str | None  # None: nothing earlier to return to, no version takes traffic
    automatic: bool
    cancel: bool  # a cancel, which keeps no rollback record
    promoted: bool  # the candidate had been promoted: the version returned to becomes stable again
    reason: str
    trigger: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "plan": steps_to_json(self.plan), "step": self.step, "attempt": self.attempt,
            "started_at": self.started_at, "to_version": self.to_version, "automatic": self.automatic,
            "cancel": self.cancel, "promoted": self.promoted, "reason": self.reason, "trigger": self.trigger,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RollbackProgress:
        return cls(
            id=str(data["id"]),
            plan=steps_from_json(data["plan"]),
            step=int(data["step"]),
            attempt=int(data["attempt"]),
            started_at=float(data["started_at"]),
            to_version=data.get("to_version"),
            automatic=bool(data["automatic"]),
            cancel=bool(data["cancel"]),
            promoted=bool(data.get("promoted", False)),
            reason=str(data["reason"]),
            trigger=str(data["trigger"]),
        )


@dataclass
class DeploymentStatus:
    """The engine's working state of one deployment, kept between ticks.

    A tick loads it from the record it read (`from_json`), changes it, and the new record carries
    `to_json()`; nothing else writes it. `to_json()` returns new containers (only the policy's
    state is shared, which policies never change in place), so a snapshot taken with it is not
    changed by later edits. Every field has a reader: the engine, the view or the controller."""

    replicas: int | None = None  # the instance count asked for; a rollback restores this many
    driver: DriverMark | None = None  # the process that ticks it
    approval: Approval | None = None
    freeze_override: FreezeOverride | None = None
    weights: Weights | None = None  # the traffic split last set; None before the first one
    last_safe_weights: Weights | None = None  # the split of the last analysis that passed
    restore_weights: Weights | None = None  # what traffic went back to when a failure stopped it
    versions_seen: list[str] = field(default_factory=list)  # versions given backends, to empty later
    analysis: AnalysisProgress = field(default_factory=AnalysisProgress)
    rollback: RollbackProgress | None = None
    gate: GateProgress | None = None  # the webhook gate step under way
    rollback_gates_asked: dict[str, float] = field(default_factory=dict)  # rollback gate -> last asked

    def live_weights(self, *, active: bool, failed: bool) -> Weights | None:
        """The split the route serves as far as this status knows: the last weights set while the
        deployment is active, the restored ones once it failed, else None (ask the store)."""
        if active and self.weights:
            return dict(self.weights)
        if failed and self.restore_weights:
            return dict(self.restore_weights)
        return None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.replicas is not None:
            data["replicas"] = self.replicas
        if self.driver is not None:
            data["driver"] = self.driver.to_json()
        if self.approval is not None:
            data["approval"] = self.approval.to_json()
        if self.freeze_override is not None:
            data["freeze_override"] = self.freeze_override.to_json()
        for key, split in (("weights", self.weights), ("last_safe_weights", self.last_safe_weights),
                           ("restore_weights", self.restore_weights)):
            if split is not None:
                data[key] = dict(split)
        if self.versions_seen:
            data["versions_seen"] = list(self.versions_seen)
        analysis = self.analysis
        if analysis.marker is not None:
            data["look_marker"] = analysis.marker
            data["snap"] = {v: c.to_json() for v, c in analysis.counters.items()}
        if analysis.last_look is not None:
            data["last_look"] = analysis.last_look
        if analysis.started_at is not None:
            data["analysis_started_at"] = analysis.started_at
            data["errors_in_a_row"] = analysis.errors_in_a_row
            data["unready_since"] = dict(analysis.unready_since)
        elif analysis.errors_in_a_row:
            data["errors_in_a_row"] = analysis.errors_in_a_row
        if analysis.policy_state is not None:
            data["policy_state"] = analysis.policy_state
        if analysis.last_sample is not None:
            data["last_sample"] = _copy_summary(analysis.last_sample)
        if analysis.history is not None:
            data["history"] = {"span_s": analysis.history_span_s, "counters": analysis.history.to_json(),
                               "dispersion": analysis.history_dispersion}
        if analysis.confirming is not None:
            data["confirming"] = dict(analysis.confirming)
        if self.rollback is not None:
            data["rollback"] = self.rollback.to_json()
        if self.gate is not None:
            data["gate"] = self.gate.to_json()
        if self.rollback_gates_asked:
            data["rollback_gates_asked"] = dict(self.rollback_gates_asked)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeploymentStatus:
        """The status stored as JSON by this or any earlier safeship."""
        approval = data.get("approval")
        freeze = data.get("freeze_override")
        rollback = data.get("rollback")
        snap = data.get("snap") or {}
        history = data.get("history") or {}
        return cls(
            replicas=int(data["replicas"]) if data.get("replicas") is not None else None,
            driver=DriverMark.from_json(data.get("driver")),
            approval=Approval(str(approval["by"]), float(approval["at"])) if approval else None,
            freeze_override=(FreezeOverride(str(freeze["window"]), freeze.get("reason"), freeze.get("by"))
                             if freeze else None),
            weights=_weights(data.get("weights")),
            last_safe_weights=_weights(data.get("last_safe_weights")),
            restore_weights=_weights(data.get("restore_weights")),
            versions_seen=[str(v) for v in data.get("versions_seen") or []],
            analysis=AnalysisProgress(
                marker=data.get("look_marker"),
                started_at=_number(data.get("analysis_started_at")),
                last_look=_number(data.get("last_look")),
                counters={str(v): TrafficCounters.from_json(c) for v, c in snap.items()},
                policy_state=data.get("policy_state"),
                errors_in_a_row=int(data.get("errors_in_a_row") or 0),
                last_sample=_copy_summary(data["last_sample"]) if data.get("last_sample") else None,
                unready_since={str(i): float(t) for i, t in (data.get("unready_since") or {}).items()},
                history=TrafficCounters.from_json(history["counters"]) if history.get("counters") else None,
                history_span_s=_number(history.get("span_s")),
                history_dispersion=_number(history.get("dispersion")),
                confirming=_confirming(data.get("confirming")),
            ),
            rollback=RollbackProgress.from_json(rollback) if rollback else None,
            gate=GateProgress.from_json(data["gate"]) if data.get("gate") else None,
            rollback_gates_asked={str(k): float(v) for k, v in (data.get("rollback_gates_asked") or {}).items()},
        )


def _confirming(data: Mapping[str, Any] | None) -> Confirming | None:
    if not data:
        return None
    found: Confirming = {
        "since": float(data["since"]), "reason": str(data.get("reason", "")),
        "trigger": str(data.get("trigger", "analysis")), "start": dict(data.get("start") or {}),
        "ledger": data.get("ledger"), "alarm": dict(data.get("alarm") or {}),
        "incident_since": _number(data.get("incident_since")), "settled_at": _number(data.get("settled_at")),
        "recent": dict(data.get("recent") or {}),
    }
    if data.get("incident"):
        found["incident"] = str(data["incident"])
    return found


def _weights(data: Mapping[str, Any] | None) -> Weights | None:
    return None if data is None else {str(v): int(w) for v, w in data.items()}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _copy_summary(summary: Mapping[str, Any]) -> SampleSummary:
    def one(counts: Mapping[str, Any]) -> CountSummary:
        return {"requests": counts["requests"], "failed": counts["failed"], "error_rate": counts["error_rate"],
                "p99_ms": counts["p99_ms"]}

    return {"baseline": one(summary["baseline"]), "candidate": one(summary["candidate"]), "dt": summary["dt"]}
