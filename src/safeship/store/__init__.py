"""Persistence: deployments, events, rollbacks, stable versions, instance ledger."""

from safeship.store.store import (
    ACTIVE_PHASES,
    DeploymentRecord,
    EventRecord,
    RollbackRecord,
    StableVersion,
    Store,
    new_id,
)

__all__ = [
    "ACTIVE_PHASES",
    "DeploymentRecord",
    "EventRecord",
    "RollbackRecord",
    "StableVersion",
    "Store",
    "new_id",
]
