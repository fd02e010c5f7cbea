"""A simulated router on a virtual clock. Traffic for the time that passed is generated lazily,
with the weights that were in force, whenever anyone asks the router anything.

Traffic is drawn in slices. Weights, backends and test traffic change only between catch-ups, and
the world says when behaviour steps inside one (`SimWorld.next_step`), so a slice ends at every
such step and is otherwise as long as MAX_SLICE_S: a promoted candidate serving alone for an hour
costs a few dozen slices. Slices stay SLICE_S short while the candidate ramps or has not had its
first request, and a swinging traffic pattern keeps them to a twentieth of its period. The counts
do not depend on the slicing: arrivals are Poisson of the rate's integral over the slice, and the
failure chain's draws are exact for any number of requests.

Besides its users' traffic, a version may get synthetic test traffic (`set_test_traffic`), as
from a load tester aimed at it directly: `counters` (what metrics see) include it,
`user_counters` (what users experienced) do not."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from safeship import histogram
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
from safeship.simworld import SimInstance, SimWorld
from safeship.traffic import TrafficSetup, TrafficWindow

SLICE_S = 5.0  # traffic is generated in slices this short while the candidate's behaviour moves
MAX_SLICE_S = 60.0  # and in slices no longer than this while nothing changes


@dataclass
class _Tally:
    """Cumulative counts of one version, with the histogram as an array that slices add to in place."""

    requests: int = 0
    errors: int = 0
    connect_failures: int = 0
    latency_sum_ms: float = 0.0
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(histogram.N_BUCKETS, dtype=np.int64))

    def counters(self, other: _Tally | None = None) -> TrafficCounters:
        """These counts (plus `other`'s) as the routers' counters."""
        if other is None:
            return TrafficCounters(self.requests, self.errors, self.connect_failures, self.latency_sum_ms,
                                   self.buckets.tolist())
        return TrafficCounters(
            self.requests + other.requests, self.errors + other.errors,
            self.connect_failures + other.connect_failures, self.latency_sum_ms + other.latency_sum_ms,
            (self.buckets + other.buckets).tolist(),
        )


@dataclass
class _Route:
    weights: dict[str, int] = field(default_factory=dict)
    backends: dict[str, list[Backend]] = field(default_factory=dict)
    counters: dict[str, _Tally] = field(default_factory=dict)  # users' traffic
    test_counters: dict[str, _Tally] = field(default_factory=dict)  # synthetic test traffic
    test_rps: dict[str, float] = field(default_factory=dict)
    hold_until: float | None = None
    held: int = 0  # requests queued during a hold, served when it is released
    unrouted: int = 0  # requests that found no backend at all (failed)
    last_t: float = 0.0
    plan: _Plan | None = None  # kept until weights, backends, test traffic or the world's instances change
    plan_generation: tuple[int, int] = (0, 0)


@dataclass
class _Plan:
    """What stays fixed while the router catches up: weights, backends and test traffic change only
    when someone calls it, and it catches up before every change."""

    serving: dict[str, int]  # weights of the versions that have backends
    probs: list[float]
    weight_percent: float  # the candidate's routed share of the users' traffic, in percent
    members: dict[str, list[SimInstance | None]]  # each version's listed backends (None: gone)
    watched: list[SimInstance]  # the instances whose deaths and restarts matter
    candidate: bool  # whether the candidate gets any traffic


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
        state.plan = None

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        state = self._catch_up(route)
        state.weights = {v: int(w) for v, w in weights.items() if w > 0}
        state.plan = None
        self.weight_log.append((self.world.clock.now(), route, dict(state.weights)))
        if state.hold_until is not None and any(state.backends.get(v) for v in state.weights):
            state.hold_until = None
            self._release_held(state)

    async def set_test_traffic(self, route: RouteKey, version: str, rps: float) -> None:
        """From now on send `rps` requests a second of synthetic traffic to `version`'s backends,
        whatever the users' weights are (0 stops it). They are not taken from the users' requests.
        While the version has no live backend they are not counted: that is the load tester's
        failure, not a user's."""
        if not (math.isfinite(rps) and rps >= 0):
            raise InputError(f"test traffic must be a finite rate of at least 0 requests/s, got {rps}")
        state = self._catch_up(route)
        if rps > 0:
            state.test_rps[version] = float(rps)
        else:
            state.test_rps.pop(version, None)
        state.plan = None

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        state = self._catch_up(route)
        state.hold_until = self.world.clock.now() + max_wait

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        """Users' and test traffic together, per version: what a metrics system sees."""
        state = self._catch_up(route)
        versions = list(state.counters) + [v for v in state.test_counters if v not in state.counters]
        return {v: self._sum(state, v) for v in versions}

    async def user_counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        """Users' traffic only, per version: what users experienced."""
        state = self._catch_up(route)
        return {v: c.counters() for v, c in state.counters.items()}

    async def close(self) -> None:
        return None

    @staticmethod
    def _sum(state: _Route, version: str) -> TrafficCounters:
        user, test = state.counters.get(version), state.test_counters.get(version)
        if user is None:
            return test.counters() if test is not None else TrafficCounters()
        return user.counters(test)

    # ------------------------------------------------------------ traffic

    def _plan(self, state: _Route) -> _Plan:
        world = self.world
        if state.plan is not None and state.plan_generation == world.generation:
            return state.plan
        serving = {v: w for v, w in state.weights.items() if state.backends.get(v)}
        total = sum(serving.values())
        versions = set(serving) | set(state.test_rps)
        members = {v: [world.instances.get(b.instance_id) for b in state.backends.get(v, [])] for v in versions}
        state.plan, state.plan_generation = _Plan(
            serving=serving,
            probs=[w / total for w in serving.values()],
            weight_percent=_weight_percent(serving, world.candidate_version),
            members=members,
            watched=[i for listed in members.values() for i in listed if i is not None],
            candidate=world.candidate_version in versions,
        ), world.generation
        return state.plan

    def _catch_up(self, key: RouteKey) -> _Route:
        state = self._route(key)
        now = self.world.clock.now()
        if state.last_t >= now:
            return state
        plan = self._plan(state)
        longest = min(MAX_SLICE_S, max(SLICE_S, self.world.scenario.traffic.steady_slice_s()))
        while state.last_t < now:
            t0 = state.last_t
            t1 = min(now, t0 + longest, self.world.next_step(t0, plan.watched, plan.candidate))
            if plan.candidate and self.world.changing(t0):
                t1 = min(t1, t0 + SLICE_S)
            if state.hold_until is not None and t0 < state.hold_until:
                t1 = min(t1, state.hold_until)
            self._generate(state, plan, t0, t1)
            state.last_t = t1
        return state

    def _alive(self, plan: _Plan, t: float) -> dict[str, list[SimInstance]]:
        """Each version's backends alive at t. Traffic is generated in slices when it is read, so
        each slice asks about its own time, not the time of the read."""
        return {v: [i for i in listed if i is not None and self.world.alive(i, t)]
                for v, listed in plan.members.items()}

    def _generate(self, state: _Route, plan: _Plan, t0: float, t1: float) -> None:
        t = (t0 + t1) / 2
        alive = self._alive(plan, t)
        arrivals = self.world.arrivals(t0, t1)
        if arrivals == 0:
            pass
        elif state.hold_until is not None:
            if t1 <= state.hold_until:
                state.held += arrivals
            else:
                state.unrouted += state.held + arrivals  # the hold expired: these got 503
                state.held = 0
                state.hold_until = None
        elif not plan.serving:
            state.unrouted += arrivals
        else:
            self._split(state, plan, alive, arrivals, t)
        for version, rps in state.test_rps.items():
            if alive[version]:
                self._test(state, plan, alive, version, int(self.world.rng.poisson(rps * (t1 - t0))), t)

    def _split(self, state: _Route, plan: _Plan, alive: Mapping[str, list[SimInstance]], arrivals: int,
               t: float) -> None:
        # One version takes everything; a multinomial over one category would draw nothing anyway.
        shares = [arrivals] if len(plan.probs) == 1 else self.world.rng.multinomial(arrivals, plan.probs).tolist()
        for version, requests in zip(plan.serving, shares, strict=True):
            if requests:
                self._serve(state, plan, alive, version, requests, t)

    def _serve(self, state: _Route, plan: _Plan, alive: Mapping[str, list[SimInstance]], version: str,
               requests: int, t: float) -> None:
        listed, up = len(plan.members[version]), len(alive[version])
        tally = state.counters.setdefault(version, _Tally())
        dead_share = requests - round(requests * up / listed) if listed else requests
        if dead_share:
            # Connections to a dead instance fail before any byte; the builtin router retries them once
            # on another version. They still count as failures of the version that dropped them.
            tally.requests += dead_share
            tally.connect_failures += dead_share
            others = [v for v in plan.serving if v != version and alive[v]]
            if others:
                self._record(state.counters, plan, alive[others[0]], others[0], dead_share, t)
            else:
                state.unrouted += dead_share
        self._record(state.counters, plan, alive[version], version, requests - dead_share, t)

    def _test(self, state: _Route, plan: _Plan, alive: Mapping[str, list[SimInstance]], version: str,
              requests: int, t: float) -> None:
        """Test traffic spreads over the version's listed backends like users' traffic; the share
        sent to a dead one fails to connect, and the load tester does not retry it elsewhere."""
        if requests <= 0:
            return
        tally = state.test_counters.setdefault(version, _Tally())
        dead_share = requests - round(requests * len(alive[version]) / len(plan.members[version]))
        tally.requests += dead_share
        tally.connect_failures += dead_share
        self._record(state.test_counters, plan, alive[version], version, requests - dead_share, t)

    def _record(self, tallies: dict[str, _Tally], plan: _Plan, up: Sequence[SimInstance], version: str,
                requests: int, t: float) -> None:
        """Serve `requests` on `version`'s live instances `up`, each with its own behaviour: when
        only some of them carry the candidate's regression, the requests are split among them
        in proportion (a binomial draw, which is the multinomial by instance summed by behaviour)."""
        if requests <= 0 or not up:
            return
        bad = self.world.scenario.candidate.bad_instances
        if version != self.world.candidate_version or bad is None:
            self._draw(tallies, plan, version, requests, t, None)
            return
        regressed = [i for i in up if i.index < bad]
        healthy = len(up) - len(regressed)
        if not healthy or not regressed:
            self._draw(tallies, plan, version, requests, t, up[0].index)
            return
        sick = int(self.world.rng.binomial(requests, len(regressed) / len(up)))
        self._draw(tallies, plan, version, sick, t, regressed[0].index)
        self._draw(tallies, plan, version, requests - sick, t, next(i.index for i in up if i.index >= bad))

    def _draw(self, tallies: dict[str, _Tally], plan: _Plan, version: str, requests: int, t: float,
              instance: int | None) -> None:
        if requests <= 0:
            return
        errors, buckets, latency_sum = self.world.serve_array(
            version, requests, t, weight_percent=plan.weight_percent, instance=instance
        )
        tally = tallies.setdefault(version, _Tally())
        tally.requests += requests
        tally.errors += errors
        tally.latency_sum_ms += latency_sum
        tally.buckets += buckets

    def _release_held(self, state: _Route) -> None:
        if state.held:
            plan = self._plan(state)
            if plan.serving:
                now = self.world.clock.now()
                self._split(state, plan, self._alive(plan, now), state.held, now)
            state.held = 0

    def gauges(self, route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        """Each version's custom metrics, averaged over its live instances."""
        state = self._route(route)
        weight_percent = _weight_percent({v: w for v, w in state.weights.items() if state.backends.get(v)},
                                         self.world.candidate_version)
        now = self.world.clock.now()
        readings: dict[str, Mapping[str, float]] = {}
        for version, listed in state.backends.items():
            if not listed:
                continue
            known = [self.world.instances.get(b.instance_id) for b in listed]
            present = [i for i in known if i is not None]
            up = [i.index for i in present if self.world.alive(i, now)] or [i.index for i in present]
            readings[version] = self.world.gauges(version, weight_percent=weight_percent, instances=up or None)
        return readings


def _weight_percent(serving: Mapping[str, int], candidate: str) -> float:
    """The candidate's routed share, in percent of the weight of the versions that have backends."""
    total = sum(serving.values())
    return 100.0 * serving.get(candidate, 0) / total if total else 0.0


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
        dispersion = {v: d for v in found if (d := world.history_dispersion(v, span, at)) is not None}
        return TrafficWindow(start, end, {v: w[2] for v, w in found.items()}, dispersion)

    async def close(self) -> None:
        return None
