"""The default traffic source: the router's own counters (`RouterTraffic`)."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from typing import ClassVar

from safeship.clock import Clock, RealClock
from safeship.routing.base import RouteKey, Router, TrafficCounters
from safeship.traffic import TrafficSetup, TrafficWindow

RING = 720  # snapshots kept per route: an hour at one read every 5 s
MIN_SPACING_S = 1.0  # reads closer than this to the last kept snapshot replace it


def _copy(counters: Mapping[str, TrafficCounters]) -> dict[str, TrafficCounters]:
    return {version: c.plus(TrafficCounters()) for version, c in counters.items()}


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
        self._ring = ring
        self._kept: dict[RouteKey, deque[tuple[float, dict[str, TrafficCounters]]]] = {}

    @classmethod
    def create(cls, setup: TrafficSetup) -> RouterTraffic:
        return cls(setup.router, clock=setup.clock)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        counters = await self.router.counters(route)
        self._keep(route, self.clock.now(), counters)
        return counters

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        kept = self._kept.get(route)
        if not kept or span <= 0:
            return None
        times = [t for t, _ in kept]
        start_i = bisect.bisect_right(times, at - span) - 1
        end_i = bisect.bisect_right(times, at) - 1
        if start_i < 0 or end_i <= start_i:
            return None
        (t0, first), (t1, last) = kept[start_i], kept[end_i]
        window: dict[str, TrafficCounters] = {}
        for version, counters in last.items():
            delta = counters.minus(first.get(version, TrafficCounters()))
            if delta.requests < 0 or any(b < 0 for b in delta.latency_buckets):
                return None  # the router restarted in between: that window measured nothing
            window[version] = delta
        return TrafficWindow(start=t0, end=t1, counters=window)

    async def close(self) -> None:
        return None  # the router belongs to whoever built it

    def _keep(self, route: RouteKey, now: float, counters: Mapping[str, TrafficCounters]) -> None:
        kept = self._kept.setdefault(route, deque(maxlen=self._ring))
        if kept and now - kept[-1][0] < MIN_SPACING_S:
            return  # too close to the last kept read (or a clock that went back): the ring stays ordered
        kept.append((now, _copy(counters)))
