"""Persistence: deployments, events, rollbacks, stable versions, instance ledger, build artifacts and
pipeline runs, API tokens (hashed) and the append-only audit table."""

from safeship.store.edge import BUSY_TIMEOUT_ENV, StoreURLError
from safeship.store.store import (
    ACTIVE_PHASES,
    ArtifactRecord,
    AuditRecord,
    DeploymentRecord,
    EventRecord,
    LeaseRecord,
    PipelineRunRecord,
    Retirement,
    RollbackRecord,
    StableVersion,
    Store,
    TokenRecord,
    new_id,
    sha256_of,
)

__all__ = [
    "ACTIVE_PHASES",
    "BUSY_TIMEOUT_ENV",
    "ArtifactRecord",
    "AuditRecord",
    "DeploymentRecord",
    "EventRecord",
    "LeaseRecord",
    "PipelineRunRecord",
    "Retirement",
    "RollbackRecord",
    "StableVersion",
    "Store",
    "StoreURLError",
    "TokenRecord",
    "new_id",
    "sha256_of",
]
