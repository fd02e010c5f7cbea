"""A Release's status from its deployment as the engine stored it, and the merge patch that
writes it (pure functions: no API calls here)."""

from __future__ import annotations

import datetime
from typing import Any

from safeship.engine.phases import Phase
from safeship.engine.status import DeploymentStatus
from safeship.engine.views import step_of
from safeship.operator.release import Condition, ReleaseStatus
from safeship.store import DeploymentRecord

_PHASE_REASONS = {
    "pending": "Pending",
    "awaiting_approval": "AwaitingApproval",
    "preparing": "Preparing",
    "progressing": "StepRunning",
    "monitoring": "Monitoring",
    "rolling_back": "RollingBack",
    "succeeded": "Succeeded",
    "rolled_back": "RolledBack",
    "failed": "Failed",
    "cancelled": "Cancelled",
}


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _camel(text: str) -> str:
    """A condition reason from a trigger name (`error_rate_threshold` -> `ErrorRateThreshold`)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
    reason = "".join(w[:1].upper() + w[1:] for w in words)
    return reason if reason[:1].isalpha() else f"R{reason}" if reason else "Unknown"


def step_text(record: DeploymentRecord, weights: dict[str, int]) -> str:
    """"5/12 analyze 25%": the step running (or the last one) of the plan, and the candidate's share."""
    steps = len(record.plan)
    if not steps:
        return ""
    index = min(max(record.step_index, 0), steps - 1)
    kind = str(record.plan[index].get("kind") or "")
    share = f" {weights[record.version]}%" if record.version in weights else ""
    return f"{step_of(record.step_index, steps)} {kind}{share}"


def set_condition(conditions: list[Condition], kind: str, status: str, reason: str, message: str,
                  generation: int, *, at: str | None = None) -> list[Condition]:
    """`conditions` with condition `kind` set; its lastTransitionTime changes only when its status does."""
    found = next((c for c in conditions if c.type == kind), None)
    when = at or now_text()
    if found is not None and found.status == status:
        when = found.lastTransitionTime
    updated = Condition.model_validate({"type": kind, "status": status, "reason": _camel(reason) if reason else "None",
                                        "message": message[:32768], "lastTransitionTime": when,
                                        "observedGeneration": generation})
    rest = [c for c in conditions if c.type != kind]
    order = ["Progressing", "Healthy", "Paused", "RolledBack"]
    return sorted([*rest, updated], key=lambda c: order.index(c.type))


def nothing_earlier(record: DeploymentRecord) -> bool:
    """Whether `record` was rolled back or cancelled with no earlier version to return to (a first
    deployment): its pods were stopped and no version serves."""
    if record.phase not in (Phase.ROLLED_BACK.value, Phase.CANCELLED.value):
        return False
    rollback = DeploymentStatus.from_json(record.status).rollback
    return rollback is not None and rollback.to_version is None


def ended_message(record: DeploymentRecord, why: str) -> str:
    """The sentence a Release shows for its deployment that ended: `why` (its last decision),
    said plainly when a rollback or a cancel had no earlier version to return to."""
    if not nothing_earlier(record):
        return why
    undone = "rolled back" if record.phase == Phase.ROLLED_BACK.value else "cancelled"
    return (f"{record.version} {undone} with no earlier version of {record.service} to return to (it was the "
            f"first deployment): its pods are stopped and no version serves; {why}")


def from_deployment(before: ReleaseStatus, record: DeploymentRecord, *, stable: str | None, message: str,
                    generation: int) -> ReleaseStatus:
    """The status a Release shows for its deployment `record`."""
    status = before.model_copy(deep=True)
    phase = Phase(record.phase)
    weights = {str(k): int(v) for k, v in (DeploymentStatus.from_json(record.status).weights or {}).items()}
    status.phase = record.phase
    status.deploymentId = record.id
    status.stepIndex = max(record.step_index, 0)
    status.steps = len(record.plan)
    status.step = step_text(record, weights)
    status.weights = weights
    status.strategy = record.strategy
    status.strategyReason = record.strategy_reason
    status.stableVersion = stable or ""
    status.candidate = record.version if phase.is_active else ""
    status.candidateWeight = int(weights.get(record.version, 0)) if phase.is_active else 0
    status.message = message
    status.observedGeneration = generation
    reason = _PHASE_REASONS.get(record.phase, "Unknown")
    conditions = list(status.conditions)
    if phase.is_active:
        conditions = set_condition(conditions, "Progressing", "True", reason,
                                   f"{record.version}: {status.step or record.phase}", generation)
        conditions = set_condition(conditions, "Healthy", "Unknown", "Progressing",
                                   f"{record.version} is being rolled out", generation)
        conditions = set_condition(conditions, "RolledBack",
                                   "True" if phase is Phase.ROLLING_BACK else "False",
                                   _camel(record.decision or "rolling_back") if phase is Phase.ROLLING_BACK
                                   else "NotRolledBack",
                                   message if phase is Phase.ROLLING_BACK else "", generation)
    else:
        conditions = set_condition(conditions, "Progressing", "False", reason,
                                   f"{record.version} {record.phase}: {message}", generation)
        healthy = phase is Phase.SUCCEEDED
        conditions = set_condition(conditions, "Healthy", "True" if healthy else "False", reason,
                                   f"{stable or 'no version'} serves" + ("" if healthy else f"; {message}"),
                                   generation)
        rolled_back = phase is Phase.ROLLED_BACK
        trigger = str((record.evidence or {}).get("trigger") or record.decision or "rolled_back")
        if rolled_back and nothing_earlier(record):
            trigger = f"{trigger}_nothing_earlier"  # e.g. ManualNothingEarlier: the service was stopped
        conditions = set_condition(conditions, "RolledBack", "True" if rolled_back else "False",
                                   _camel(trigger) if rolled_back else "NotRolledBack",
                                   message if rolled_back else "", generation)
    paused = phase is Phase.AWAITING_APPROVAL
    conditions = set_condition(conditions, "Paused", "True" if paused else "False",
                               "AwaitingApproval" if paused else "NotPaused",
                               "approve with `kubectl annotate release <name> safeship.dev/approve=<anything>`"
                               if paused else "", generation)
    status.conditions = conditions
    return status


def comparable(status: ReleaseStatus) -> dict[str, Any]:
    """What decides whether a status must be written: everything but who writes it."""
    data = status.model_dump(mode="json")
    data.pop("leaderEpoch", None)
    data.pop("leader", None)
    return data


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, removed keys as
    null, lists whole; None when nothing changes."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
            continue
        inner = merge_patch(old[key], value)
        if inner is not None or (value is None and old[key] is not None):
            patch[key] = inner
    return patch or None
