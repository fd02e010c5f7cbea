"""Deployment phases, as Flagger names them, with predicates."""

from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    PREPARING = "preparing"
    PROGRESSING = "progressing"
    MONITORING = "monitoring"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.CANCELLED)

    @property
    def is_active(self) -> bool:
        return not self.is_final

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for a deployment that ended here: 0 when it succeeded, 1 otherwise."""
        return 0 if self is Phase.SUCCEEDED else 1


def status_exit_code(phase: Phase | str) -> int:
    """`deployment-engine --status`'s exit code: 0 while the deployment runs or once it succeeded,
    1 when it ended rolled_back, failed or cancelled (its release is not live)."""
    current = Phase(phase)
    return 1 if current.is_final and current is not Phase.SUCCEEDED else 0
