"""Persistence: deployments, events, rollbacks, stable versions, instance ledger."""

from safeship.store.edge import BUSY_TIMEOUT_ENV, StoreURLError
from safeship.store.store import (
    ACTIVE_PHASES,
    DeploymentRecord,
    EventRecord,
    Retirement,
    RollbackRecord,
    StableVersion,
    Store,
    new_id,
)

__all__ = [
    "ACTIVE_PHASES",
    "BUSY_TIMEOUT_ENV",
    "DeploymentRecord",
    "EventRecord",
    "Retirement",
    "RollbackRecord",
    "StableVersion",
    "Store",
    "StoreURLError",
    "new_id",
]
