"""A simulated router on a virtual clock. Traffic for the time that passed is generated lazily,
with the weights that were in force, whenever anyone asks the router anything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from safeship.errors import InputError
from safeship.routing.base import (
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
)
from safeship.simworld import SimWorld
from safeship.traffic import TrafficSetup, TrafficWindow

SLICE_S = 5.0  # traffic is generated in slices no longer than this


@dataclass
class _Route:
    weights: dict[str, int] = field(default_factory=dict)
    backends: dict[str, list[Backend]] = field(default_factory=dict)
    counters: dict[str, TrafficCounters] = field(default_factory=dict)
    hold_until: float | None = None
    held: int = 0  # requests queued during a hold, served when it is released
    unrouted: int = 0  # requests that found no backend at all (failed)
    last_t: float = 0.0


class SimRouter:
    """A `Router` over a `SimWorld`: it holds, counts and splits traffic, but listens on no port
    (`ensure_route` ignores `port` and returns None)."""

    abilities: RouterAbilities = RouterAbilities(hold=True, listens=False)

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        raise InputError("the sim router routes a simulated world, which the command that deploys "
                         "builds on a virtual clock; no controller runs it")

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.routes: dict[RouteKey, _Route] = {}
        self.weight_log: list[tuple[float, RouteKey, dict[str, int]]] = []  # what tests assert on

    def _route(self, key: RouteKey) -> _Route:
        route = self.routes.get(key)
        if route is None:
            route = self.routes[key] = _Route(last_t=self.world.clock.now())
        return route

    # ------------------------------------------------------------ Router protocol

    async def open(self) -> None:
        return None

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        self._catch_up(route)
        return None

    async def remove_route(self, route: RouteKey) -> None:
        self.routes.pop(route, None)

    async def routes_snapshot(self) -> RoutesSnapshot:
        snapshot = RoutesSnapshot()
        for key in list(self.routes):
            snapshot.counters[key] = dict(await self.counters(key))
            snapshot.unrouted[key] = self.routes[key].unrouted
        return snapshot

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        state = self._catch_up(route)
        state.backends[version] = list(backends)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        state = self._catch_up(route)
        state.weights = {v: int(w) for v, w in weights.items() if w > 0}
        self.weight_log.append((self.world.clock.now(), route, dict(state.weights)))
        if state.hold_until is not None and any(state.backends.get(v) for v in state.weights):
            state.hold_until = None
            self._release_held(state)

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        state = self._catch_up(route)
        state.hold_until = self.world.clock.now() + max_wait

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        state = self._catch_up(route)
        return {v: c.plus(TrafficCounters()) for v, c in state.counters.items()}

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------ traffic

    def _alive_backends(self, state: _Route, version: str, at: float) -> tuple[int, int]:
        """(backends listed, of which alive at time `at`) for a version. Traffic is generated in
        slices when it is read, so each slice asks about its own time, not the time of the read."""
        listed = state.backends.get(version, [])
        alive = 0
        for backend in listed:
            sim = self.world.instances.get(backend.instance_id)
            if sim is not None and self.world.life(sim, at)[0]:
                alive += 1
        return len(listed), alive

    def _catch_up(self, key: RouteKey) -> _Route:
        state = self._route(key)
        now = self.world.clock.now()
        while state.last_t < now:
            t1 = min(now, state.last_t + SLICE_S)
            self._generate(state, state.last_t, t1)
            state.last_t = t1
        return state

    def _generate(self, state: _Route, t0: float, t1: float) -> None:
        arrivals = self.world.arrivals(t0, t1)
        if arrivals == 0:
            return
        if state.hold_until is not None:
            if t1 <= state.hold_until:
                state.held += arrivals
                return
            state.unrouted += state.held + arrivals  # the hold expired: these got 503
            state.held = 0
            state.hold_until = None
            return
        serving = {v: w for v, w in state.weights.items() if state.backends.get(v)}
        if not serving:
            state.unrouted += arrivals
            return
        self._split(state, serving, arrivals, (t0 + t1) / 2)

    def _split(self, state: _Route, weights: Mapping[str, int], arrivals: int, t: float) -> None:
        versions = list(weights)
        total = sum(weights.values())
        shares = self.world.rng.multinomial(arrivals, [weights[v] / total for v in versions])
        for version, requests in zip(versions, shares, strict=True):
            if requests:
                self._serve(state, version, int(requests), t, versions)

    def _serve(self, state: _Route, version: str, requests: int, t: float, versions: list[str]) -> None:
        listed, alive = self._alive_backends(state, version, t)
        counters = state.counters.setdefault(version, TrafficCounters())
        dead_share = requests - round(requests * alive / listed) if listed else requests
        if dead_share:
            # Connections to a dead instance fail before any byte; the builtin router retries them once
            # on another version. They still count as failures of the version that dropped them.
            counters.requests += dead_share
            counters.connect_failures += dead_share
            others = [v for v in versions if v != version and self._alive_backends(state, v, t)[1]]
            if others:
                self._record(state, others[0], dead_share, t)
            else:
                state.unrouted += dead_share
        self._record(state, version, requests - dead_share, t)

    def _record(self, state: _Route, version: str, requests: int, t: float) -> None:
        if requests <= 0:
            return
        errors, buckets, latency_sum = self.world.serve(version, requests, t)
        counters = state.counters.setdefault(version, TrafficCounters())
        counters.requests += requests
        counters.errors += errors
        counters.latency_sum_ms += latency_sum
        counters.latency_buckets = [a + b for a, b in zip(counters.latency_buckets, buckets, strict=True)]

    def _release_held(self, state: _Route) -> None:
        if state.held:
            serving = {v: w for v, w in state.weights.items() if state.backends.get(v)}
            self._split(state, serving, state.held, self.world.clock.now())
            state.held = 0

    def gauges(self, route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        state = self._route(route)
        return {v: self.world.gauges(v) for v in state.backends if state.backends[v]}


class SimTraffic:
    """A `TrafficSource` over a `SimRouter`: live counts from the router, and the record of each
    stable version before the deployment from the simulated world, drawn from the same model as
    its live traffic (the world knows how long it served before the deployment, `history_s`)."""

    name = "sim"

    def __init__(self, router: SimRouter) -> None:
        self.router = router

    @classmethod
    def create(cls, setup: TrafficSetup) -> SimTraffic:
        if not isinstance(setup.router, SimRouter):
            raise InputError("the sim traffic source reads the sim router only")
        return cls(setup.router)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return await self.router.counters(route)

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        world = self.router.world
        versions = {i.version for i in world.instances.values()
                    if i.service == route.service and i.environment == route.environment}
        found = {v: w for v in sorted(versions - {world.candidate_version})
                 if (w := world.history_window(v, span, at)) is not None}
        if not found:
            return None
        start = max(w[0] for w in found.values())
        end = min(w[1] for w in found.values())
        return TrafficWindow(start, end, {v: w[2] for v, w in found.items()})

    async def close(self) -> None:
        return None
