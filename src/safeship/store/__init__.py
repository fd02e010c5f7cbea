"""Persistence: deployments, events, rollbacks, stable versions, instance ledger, build artifacts and
pipeline runs."""

from safeship.store.edge import BUSY_TIMEOUT_ENV, StoreURLError
from safeship.store.store import (
    ACTIVE_PHASES,
    ArtifactRecord,
    DeploymentRecord,
    EventRecord,
    PipelineRunRecord,
    Retirement,
    RollbackRecord,
    StableVersion,
    Store,
    new_id,
    sha256_of,
)

__all__ = [
    "ACTIVE_PHASES",
    "BUSY_TIMEOUT_ENV",
    "ArtifactRecord",
    "DeploymentRecord",
    "EventRecord",
    "PipelineRunRecord",
    "Retirement",
    "RollbackRecord",
    "StableVersion",
    "Store",
    "StoreURLError",
    "new_id",
    "sha256_of",
]
