"""Notifications go through a small sink interface; the log sink is the default.

A notification is made from a stored event (`notification_for`), so whatever delivers them reads
the events table after the transition is saved instead of being told inside the engine's tick."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from safeship.store import DeploymentRecord, EventRecord

log = logging.getLogger("safeship.notify")


@dataclass(frozen=True)
class Notification:
    kind: str  # the phase entered: rolling_back | rolled_back | succeeded | failed | cancelled
    deployment_id: str
    service: str
    environment: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


# The phases whose entry is told to people. Entering a phase stores an event of kind "phase" whose
# data names the phase; the notification's kind is that phase.
NOTIFIED_PHASES = ("rolling_back", "rolled_back", "succeeded", "failed", "cancelled")


def notification_for(event: EventRecord, deployment: DeploymentRecord | None) -> Notification | None:
    """The notification a stored event stands for, or None for an event nobody is told about.

    The data is the deployment's evidence (what triggered its rollback or failure; set once when
    the decision is made). `deployment` None (its record cannot be found) leaves the service and
    environment empty rather than dropping the notification."""
    if event.kind != "phase":
        return None
    phase = str(event.data.get("phase"))
    if phase not in NOTIFIED_PHASES:
        return None
    return Notification(
        kind=phase,
        deployment_id=event.deployment_id,
        service=deployment.service if deployment is not None else "",
        environment=deployment.environment if deployment is not None else "",
        message=event.message,
        data=dict(deployment.evidence or {}) if deployment is not None else {},
    )


class NotificationSink(Protocol):
    """Where notifications go. A sink may have a `name` attribute (a str): the outbox keeps each
    sink's place in the events table under it, so it should stay the same across restarts."""

    def notify(self, notification: Notification) -> None: ...


class LogSink:
    name = "log"

    def notify(self, notification: Notification) -> None:
        level = logging.WARNING if "roll" in notification.kind or notification.kind == "failed" else logging.INFO
        log.log(
            level,
            "%s %s/%s %s: %s",
            notification.kind,
            notification.environment,
            notification.service,
            notification.deployment_id,
            notification.message,
        )


class MemorySink:
    """Keeps what it was told; for tests and the demo summary."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.received: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.received.append(notification)
