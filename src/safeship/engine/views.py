"""How a deployment looks to people and tools: the one JSON shape the commands and the API share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safeship.engine.status import DeploymentStatus
from safeship.store import DeploymentRecord, EventRecord


def step_of(step_index: int, steps: int) -> str:
    """The step people read, the same in the commands and the dashboard: "3/5" is the third of five
    steps (counted from 1), the one running or, once all are done, the last; "0/0" for no plan."""
    if steps <= 0:
        return "0/0"
    return f"{min(max(step_index, 0) + 1, steps)}/{steps}"


def deployment_view(
    record: DeploymentRecord, *, events: Sequence[EventRecord] | None = None, full: bool = False
) -> dict[str, Any]:
    status = DeploymentStatus.from_json(record.status)
    data: dict[str, Any] = {
        "id": record.id,
        "service": record.service,
        "environment": record.environment,
        "version": record.version,
        "from_version": record.from_version,
        "strategy": record.strategy,
        "strategy_reason": record.strategy_reason,
        "policy": record.policy,
        "phase": record.phase,
        "step": record.step_index,
        "steps": len(record.plan),
        "weights": dict(status.weights or {}),
        "decision": record.decision,
        "reason": record.reason,
        "evidence": record.evidence,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "decided_at": record.decided_at,
        "finished_at": record.finished_at,
        "last_sample": status.analysis.last_sample,
        "approval": status.approval.to_json() if status.approval else None,
        "freeze_override": status.freeze_override.to_json() if status.freeze_override else None,
        # the webhook gate the deployment waits on: which, since when, what it last answered
        "gate": status.gate.view() if status.gate is not None else None,
    }
    if full:
        data["plan"] = record.plan
        data["request"] = record.request
        data["rollback"] = status.rollback.to_json() if status.rollback else None
    if events is not None:
        data["events"] = [{"at": e.at, "kind": e.kind, "message": e.message} for e in events]
    return data
