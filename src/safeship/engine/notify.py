"""Notifications: what people are told about a deployment, made from its stored events.

A notification is made from a stored event (`notification_for`) and the events of the same
deployment written before it, so whatever delivers them reads the events table after the
transition is saved instead of being told inside the engine's tick, and the same event always
makes the same notification: after a restart it is sent again with the same content and the same
idempotency key (`<deployment id>:<event id>`).

Every sink gets the one `Notification` shape; `Notification.body()` is the JSON object webhooks,
commands and the Apprise text are made from (secrets masked by the process-wide redactor)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from safeship.config.notifications import EVENT_KINDS
from safeship.environments.secrets import redactor
from safeship.store import DeploymentRecord, EventRecord

log = logging.getLogger("safeship.notify")

# The event kinds people are told about (`notifications[].events` filters on these names):
#   started            the deployment was created (the `created` event)
#   step_advanced      traffic moved further to the candidate (a `weights` event that raises its share)
#   awaiting_approval  the deployment waits for a person's approval
#   promoted           the candidate became the stable version
#   rollback_started   the deployment entered rolling_back (a rollback or a cancel)
#   rolled_back        the rollback finished: from the candidate to the version before it
#   failed, succeeded, cancelled   the deployment ended so
NOTIFIED_EVENTS = EVENT_KINDS

# Entering one of these phases (an event of kind "phase") is told as the event named here.
_PHASE_EVENTS = {
    "awaiting_approval": "awaiting_approval",
    "rolling_back": "rollback_started",
    "rolled_back": "rolled_back",
    "failed": "failed",
    "succeeded": "succeeded",
    "cancelled": "cancelled",
}
_ROLLBACK_EVENTS = ("rollback_started", "rolled_back", "cancelled")
# The event kinds whose body carries the deployment's reason and evidence (the decision).
_DECIDED_EVENTS = ("rollback_started", "rolled_back", "failed", "cancelled")


@dataclass(frozen=True)
class Notification:
    """One thing a person is told. `kind` is one of NOTIFIED_EVENTS.

    `from_version` and `to_version` say which way traffic moves: from the version serving before
    to the candidate (`version`) while it is deployed, and from the candidate back to the version
    it returns to on `rollback_started`, `rolled_back` and `cancelled`. `phase` and `weights` are
    the deployment's as of the event. `evidence` is what decided the rollback or failure (empty
    before a decision)."""

    kind: str
    deployment_id: str
    service: str
    environment: str
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    event_id: int = 0
    at: float = 0.0
    version: str = ""
    from_version: str | None = None
    to_version: str | None = None
    phase: str = ""
    weights: Mapping[str, int] = field(default_factory=dict)
    reason: str | None = None
    strategy: str = ""

    @property
    def key(self) -> str:
        """The idempotency key: the same for every delivery of this event, also after a restart."""
        return f"{self.deployment_id}:{self.event_id}"

    @property
    def title(self) -> str:
        """One line for chat and mail subjects."""
        return redactor().redact_text(
            f"safeship: {self.service or '?'} {self.version} in {self.environment or '?'}: "
            f"{self.kind.replace('_', ' ')}")

    def body(self) -> dict[str, Any]:
        """The JSON object every sink sends, with every secret value masked."""
        data: dict[str, Any] = {
            "event": self.kind,
            "idempotency_key": self.key,
            "event_id": self.event_id,
            "at": datetime.fromtimestamp(self.at, tz=UTC).isoformat() if self.at else None,
            "deployment_id": self.deployment_id,
            "service": self.service,
            "environment": self.environment,
            "version": self.version,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "strategy": self.strategy,
            "phase": self.phase,
            "weights": dict(self.weights),
            "message": self.message,
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }
        masked: dict[str, Any] = redactor().redact(data)
        return masked

    def text(self) -> str:
        """The body as a few lines of plain text (Apprise messages, log lines)."""
        body = self.body()
        lines = [str(body["message"])]
        before, after = body["from_version"], body["to_version"]
        if before and after:
            moving = f"{before} -> {after}"
        elif after:
            moving = f"{after}, the first deployment"
        else:
            moving = f"{before}, no version left serving" if before else "no version"
        lines.append(f"deployment {body['deployment_id']} ({body['strategy'] or '?'}): {moving}, "
                     f"phase {body['phase'] or '?'}")
        if body["weights"]:
            lines.append("traffic " + ", ".join(f"{v}={w}%" for v, w in body["weights"].items()))
        if body["reason"]:
            lines.append(f"reason: {body['reason']}")
        if body["evidence"]:
            lines.append("evidence: " + ", ".join(f"{k}={v}" for k, v in body["evidence"].items()))
        return "\n".join(lines)


def notification_for(
    event: EventRecord,
    deployment: DeploymentRecord | None,
    earlier: Sequence[EventRecord] = (),
) -> Notification | None:
    """The notification a stored event stands for, or None for an event nobody is told about.

    `earlier` are the same deployment's events written before this one, in order: they give the
    phase and weights as of the event, and tell a weights change that moves traffic further to the
    candidate (`step_advanced`) from one that moves it back. `deployment` None (its record cannot
    be found) leaves the service, environment and versions empty rather than dropping it."""
    kind = _kind_of(event, deployment, earlier)
    if kind is None:
        return None
    phase, weights = _as_of(event, deployment, earlier)
    reason: str | None = None
    evidence: dict[str, Any] = {}
    from_version = deployment.from_version if deployment is not None else None
    to_version = deployment.version if deployment is not None else None
    if deployment is not None and kind in _DECIDED_EVENTS:
        reason, evidence = deployment.reason, dict(deployment.evidence or {})
    if deployment is not None and kind in _ROLLBACK_EVENTS:
        rollback = deployment.status.get("rollback") or {}
        from_version, to_version = deployment.version, rollback.get("to_version", deployment.from_version)
    return Notification(
        kind=kind,
        deployment_id=event.deployment_id,
        service=deployment.service if deployment is not None else "",
        environment=deployment.environment if deployment is not None else "",
        message=event.message,
        evidence=evidence,
        event_id=event.id or 0,
        at=event.at,
        version=deployment.version if deployment is not None else "",
        from_version=from_version,
        to_version=to_version,
        phase=phase,
        weights=weights,
        reason=reason,
        strategy=deployment.strategy if deployment is not None else "",
    )


def _kind_of(event: EventRecord, deployment: DeploymentRecord | None, earlier: Sequence[EventRecord]) -> str | None:
    if event.kind == "created":
        return "started"
    if event.kind == "promoted":
        return "promoted"
    if event.kind == "phase":
        return _PHASE_EVENTS.get(str(event.data.get("phase")))
    if event.kind == "weights" and deployment is not None:
        phase, before = _before(deployment, earlier)
        if phase != "progressing" or (earlier and earlier[-1].kind == "confirm_cleared"):
            return None  # a rollback, the monitoring window, or the end of a side-by-side check
        after = _weights(event, {})
        return "step_advanced" if after.get(deployment.version, 0) > before.get(deployment.version, 0) else None
    return None


def _as_of(event: EventRecord, deployment: DeploymentRecord | None,
           earlier: Iterable[EventRecord]) -> tuple[str, dict[str, int]]:
    """The phase and the weights as of `event`: the phase it enters or the weights it sets, else
    the last ones stored before it (`_before`)."""
    phase, weights = _before(deployment, earlier)
    if event.kind == "phase":
        phase = str(event.data.get("phase", phase))
    elif event.kind == "weights":
        weights = _weights(event, weights)
    return phase, weights


def _before(deployment: DeploymentRecord | None, earlier: Iterable[EventRecord]) -> tuple[str, dict[str, int]]:
    """The phase and weights the events before one left: pending and the previous version's 100%
    until a phase or weights event says otherwise."""
    phase = "pending"
    weights: dict[str, int] = {}
    if deployment is not None and deployment.from_version:
        weights = {deployment.from_version: 100}
    for before in earlier:
        if before.kind == "phase":
            phase = str(before.data.get("phase", phase))
        elif before.kind == "weights":
            weights = _weights(before, weights)
    return phase, weights


def _weights(event: EventRecord, otherwise: dict[str, int]) -> dict[str, int]:
    """The split a weights event set ({} when no version takes traffic), or `otherwise` when the
    event does not say."""
    split = event.data.get("weights")
    if not isinstance(split, Mapping):
        return otherwise
    return {str(v): int(w) for v, w in split.items() if isinstance(w, int | float)}


class NotificationSink(Protocol):
    """Where notifications go. A sink may also have these attributes, which the outbox reads:

    - `name` (str): the outbox keeps the sink's place in the events table under it, so it should
      stay the same across restarts;
    - `events` (a collection of NOTIFIED_EVENTS names, or None for all): what it is told;
    - `timeout` (seconds, or None): the longest one `notify` may take; the outbox calls a sink
      with a timeout in a thread of its own and stops waiting for it then;
    - `retries` (int) and `backoff` (seconds): how often a failed notification is tried again,
      and the first wait between tries (doubling each time)."""

    def notify(self, notification: Notification) -> None: ...


class LogSink:
    """Notifications as log lines on the `safeship.notify` logger (stderr with --verbose)."""

    def __init__(self, name: str = "log", events: Iterable[str] | None = None) -> None:
        self.name = name
        self.events = frozenset(events) if events is not None else None

    def notify(self, notification: Notification) -> None:
        failing = notification.kind in ("rollback_started", "rolled_back", "failed", "cancelled")
        log.log(
            logging.WARNING if failing else logging.INFO,
            "%s %s/%s %s: %s",
            notification.kind,
            notification.environment,
            notification.service,
            notification.deployment_id,
            notification.message,
        )


class MemorySink:
    """Keeps what it was told; for tests and the demo summary."""

    def __init__(self, name: str = "memory", events: Iterable[str] | None = None) -> None:
        self.name = name
        self.events = frozenset(events) if events is not None else None
        self.received: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.received.append(notification)
