"""How a deployment looks to people and tools: the one JSON shape the commands and the API share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safeship.store import DeploymentRecord, EventRecord


def deployment_view(
    record: DeploymentRecord, *, events: Sequence[EventRecord] | None = None, full: bool = False
) -> dict[str, Any]:
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
        "weights": record.status.get("weights", {}),
        "decision": record.decision,
        "reason": record.reason,
        "evidence": record.evidence,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "decided_at": record.decided_at,
        "finished_at": record.finished_at,
        "last_sample": record.status.get("last_sample"),
        "approval": record.status.get("approval"),
        "freeze_override": record.status.get("freeze_override"),
    }
    if full:
        data["plan"] = record.plan
        data["request"] = record.request
        data["rollback"] = record.status.get("rollback")
    if events is not None:
        data["events"] = [{"at": e.at, "kind": e.kind, "message": e.message} for e in events]
    return data
