"""Notifications go through a small sink interface; the log sink is the default."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("safeship.notify")


@dataclass(frozen=True)
class Notification:
    kind: str  # rollback_started | rolled_back | rollback_failed | succeeded | failed | cancelled
    deployment_id: str
    service: str
    environment: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


class NotificationSink(Protocol):
    def notify(self, notification: Notification) -> None: ...


class LogSink:
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

    def __init__(self) -> None:
        self.received: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.received.append(notification)
