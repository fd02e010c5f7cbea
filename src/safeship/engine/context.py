"""What one tick works on: the record as read, the changes it builds, and the world it drives.

A tick computes the new state on its `Tick` and the engine saves it once, in one transaction, at
the end: nothing is written while the tick runs, so a tick that fails or loses a race leaves the
deployment as it was."""

from __future__ import annotations

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
        # count as a change.
        self._status_as_read = self.status.to_json()

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
        return self.before.replace(**self.changes, status=self.status.to_json(), updated_at=self.now)
