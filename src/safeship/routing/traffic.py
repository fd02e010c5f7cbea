"""The default traffic source: the router's own counters (`RouterTraffic`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from safeship.clock import Clock, RealClock
from safeship.routing.base import RouteKey, Router, TrafficCounters
from safeship.traffic import SnapshotRing, TrafficSetup, TrafficWindow

RING = 720  # snapshots kept per route: an hour at one read every 5 s
MIN_SPACING_S = 1.0  # reads closer than this to the last kept snapshot replace it


class RouterTraffic:
    """A `TrafficSource` over a router's cumulative counters.

    `counters(route)` is exactly `router.counters(route)`: the deployment's analysis differences
    two reads, as it always has. For `before(route, at, span)` it keeps, per route, a ring of the
    last `RING` reads, timestamped on `clock` (a read less than `MIN_SPACING_S` after the last
    kept one is not kept). It answers with the difference between the latest kept read at or before `at - span`
    and the latest kept read at or before `at`, with those reads' real times as the window; it
    answers None when it kept no read that early (it only knows what it was asked before), or when
    the counters went back in between (the router restarted, so that window measured nothing).
    """

    name: ClassVar[str] = "router"

    def __init__(self, router: Router, *, clock: Clock | None = None, ring: int = RING) -> None:
        self.router = router
        self.clock: Clock = clock if clock is not None else RealClock()
        self._ring = SnapshotRing(ring, min_spacing=MIN_SPACING_S)

    @classmethod
    def create(cls, setup: TrafficSetup) -> RouterTraffic:
        return cls(setup.router, clock=setup.clock)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        counters = await self.router.counters(route)
        self._ring.keep(route, self.clock.now(), counters)
        return counters

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        return self._ring.window(route, at, span)

    async def close(self) -> None:
        return None  # the router belongs to whoever built it
