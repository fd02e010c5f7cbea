"""What one tick works on: the record as read, the changes it builds, and the world it drives.

A tick computes the new state on its `Tick` and the engine saves it once, in one transaction, at
the end: nothing is written while the tick runs, so a tick that fails or loses a race leaves the
deployment as it was."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any

from safeship.clock import Clock
from safeship.engine.status import DeploymentStatus
from safeship.platforms.base import Platform
from safeship.routing.base import RouteKey, Router
from safeship.store import DeploymentRecord, EventRecord, Retirement, RollbackRecord, StableVersion
from safeship.traffic import TrafficSource

GaugeSource = Callable[[RouteKey], Awaitable[Mapping[str, Mapping[str, float]]]]


@dataclass
class World:
    """What the engine drives: where instances run, who steers traffic, what measures it."""

    platform: Platform
    router: Router
    clock: Clock
    gauges: GaugeSource | None = None
    traffic_source: InitVar[TrafficSource | None] = None  # None: the router's own counters
    traffic: TrafficSource = field(init=False)

    def __post_init__(self, traffic_source: TrafficSource | None) -> None:
        if traffic_source is None:
            from safeship.routing.traffic import RouterTraffic

            traffic_source = RouterTraffic(self.router, clock=self.clock)
        self.traffic = traffic_source


@dataclass(frozen=True)
class Failure:
    # health_check_failure | error_rate_threshold | ... | analysis | readiness_timeout
    # | temporary_error (too many in a row) | permanent_error (a plug-in said retrying will not help)
    trigger: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Tick:
    """One tick's work on one deployment: the record as read (`before`), the column changes
    (`changes`), the typed status, the events and the side records to write with it.

    Contract: a tick never writes anything itself. Steps change `status` and call `set` and
    `event`; the engine writes `result()` with `events`, `rollback`, `stable` and `retire` in one
    guarded transaction, and only when `dirty`. `before` is never changed."""

    before: DeploymentRecord
    now: float
    changes: dict[str, Any] = field(default_factory=dict)
    status: DeploymentStatus = field(init=False)
    events: list[EventRecord] = field(default_factory=list)
    rollback: RollbackRecord | None = None
    stable: StableVersion | None = None
    retire: Retirement | None = None
    _status_as_read: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.status = DeploymentStatus.from_json(self.before.status)
        # The status as read, in the form result() writes, so that keys dropped on loading do not
        # count as a change. A status that a tick's result() wrote is in that form already.
        written = _written_status(self.before.status)
        self._status_as_read = written if written is not None else self.status.to_json()

    @property
    def route(self) -> RouteKey:
        return RouteKey(self.before.service, self.before.environment)

    def get(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.before, name))

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    def event(self, kind: str, message: str, **data: Any) -> None:
        self.events.append(EventRecord(self.before.id, self.now, kind, message, data))

    @property
    def dirty(self) -> bool:
        return bool(self.changes or self.events or self.status.to_json() != self._status_as_read)

    def result(self) -> DeploymentRecord:
        return self._result(self.status.to_json())

    def outcome(self) -> DeploymentRecord | None:
        """`result()` when the tick is `dirty`, else None: the status is written out once for both."""
        status = self.status.to_json()
        if not (self.changes or self.events or status != self._status_as_read):
            return None
        return self._result(status)

    def _result(self, status: dict[str, Any]) -> DeploymentRecord:
        _WRITTEN.append((id(status), status))
        return self.before.replace(**self.changes, status=status, updated_at=self.now)


# The statuses the latest results carry, by identity (each held, so that its id is not reused
# while it is here). DeploymentStatus.to_json of DeploymentStatus.from_json of such a status is
# equal to it, so the next tick of the record that carries it need not write it out again to know
# its form as read. A driver that passes on the record a tick returned (a simulation) finds it
# here; any other status is written out as before.
_WRITTEN: deque[tuple[int, dict[str, Any]]] = deque(maxlen=8)


def _written_status(status: dict[str, Any]) -> dict[str, Any] | None:
    key = id(status)
    for known, kept in tuple(_WRITTEN):  # a snapshot: another thread's tick may append meanwhile
        if known == key and kept is status:
            return status
    return None
