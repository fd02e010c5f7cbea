"""What one tick works on: the record as read, the changes it builds, and the world it drives.

STYLE §5: compute the new status on this context, then save it once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from safeship.clock import Clock
from safeship.platforms.base import Platform
from safeship.routing.base import RouteKey, Router
from safeship.store import DeploymentRecord, EventRecord, RollbackRecord, StableVersion

GaugeSource = Callable[[RouteKey], Awaitable[Mapping[str, Mapping[str, float]]]]


@dataclass
class World:
    platform: Platform
    router: Router
    clock: Clock
    gauges: GaugeSource | None = None


@dataclass(frozen=True)
class Failure:
    trigger: str  # health_check_failure | error_rate_threshold | ... | analysis | readiness_timeout
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Tick:
    before: DeploymentRecord
    now: float
    changes: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(init=False)
    events: list[EventRecord] = field(default_factory=list)
    rollback: RollbackRecord | None = None
    stable: StableVersion | None = None
    retire: tuple[str, str, str, float, bool] | None = None

    def __post_init__(self) -> None:
        # Shallow on purpose: steps replace nested values instead of changing them in place, so the
        # record as read stays intact without copying its histograms and analysis state every tick.
        self.status = dict(self.before.status)

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
        return bool(self.changes or self.events or self.status != self.before.status)

    def result(self) -> DeploymentRecord:
        return self.before.replace(**self.changes, status=self.status, updated_at=self.now)
