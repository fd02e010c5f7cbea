"""A world two controller processes can share honestly, for the two-controllers test.

Neither built-in platform can be driven by two controllers at once: `sim` runs in the foreground
of a command, never in a controller, and `local` supervises the processes it started itself (a
second controller refuses to touch an instance it does not supervise, and each controller's
router would listen on the route's port). Here the world is the store: an instance is a row of the
instance ledger both controllers read and write (the way two operators share one Kubernetes API),
ready as soon as it is recorded. Each controller has its own router, which keeps the weights and
backends it was given and counts healthy synthetic traffic for them: requests at `RPS` per second
of wall time, split by the weights, none failed, 20 ms each. The traffic source is the built-in
`router` one, reading those counters.

`register()` adds them as platform `shared-sim` and router `shared-router`; the server process
of the test imports this module and registers them before it starts (twoctl_server.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from safeship import histogram, platforms, routing
from safeship.platforms.base import Instance, InstanceSpec, InstanceState, Platform, PlatformSetup
from safeship.platforms.scaling import ScalesOneByOne
from safeship.routing.base import Backend, RouteKey, Router, RouterAbilities, RouterSetup, RoutesSnapshot
from safeship.traffic import TrafficCounters

PLATFORM = "shared-sim"
ROUTER = "shared-router"
RPS = 200.0
LATENCY_MS = 20.0


class LedgerPlatform(ScalesOneByOne):
    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = ROUTER
    traffic: ClassVar[str] = "router"

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        platform: Platform = cls(setup.ledger)  # type: ignore[assignment]
        return platform

    async def start(self, spec: InstanceSpec) -> Instance:
        record = {"id": f"{spec.environment}/{spec.service}/{spec.version}-{spec.index}", "service": spec.service,
                  "environment": spec.environment, "version": spec.version, "index": spec.index,
                  "platform": PLATFORM, "started_at": time.time()}
        self.ledger.save_instance(record)
        return self._instance(record)

    @staticmethod
    def _instance(record: Mapping[str, Any]) -> Instance:
        return Instance(id=str(record["id"]), service=str(record["service"]),
                        environment=str(record["environment"]), version=str(record["version"]),
                        index=int(record["index"]), state=InstanceState.READY,
                        started_at=float(record["started_at"]))

    async def stop(self, instance: Instance, *, drain: float) -> None:
        self.ledger.delete_instance(instance.id)

    async def instances(self, service: str, environment: str) -> list[Instance]:
        return [self._instance(r) for r in self.ledger.load_instances(service, environment)]

    async def adopt(self) -> list[Instance]:
        return []

    async def close(self) -> None:
        return None


class CountingRouter:
    """Weights and backends in memory; counters grow with wall time as healthy traffic would."""

    abilities = RouterAbilities(hold=False, listens=False)

    def __init__(self) -> None:
        self.weights: dict[RouteKey, dict[str, int]] = {}
        self.backends: dict[RouteKey, dict[str, int]] = {}
        self.totals: dict[RouteKey, dict[str, TrafficCounters]] = {}
        self.counted_to: dict[RouteKey, float] = {}

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        router: Router = cls()  # type: ignore[assignment]
        return router

    async def open(self) -> None:
        return None

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        self.counted_to.setdefault(route, time.time())
        return None

    async def remove_route(self, route: RouteKey) -> None:
        for table in (self.weights, self.backends, self.totals, self.counted_to):
            table.pop(route, None)  # type: ignore[attr-defined]

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        self._count(route)
        self.backends.setdefault(route, {})[version] = len(backends)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        self._count(route)
        self.weights[route] = dict(weights)

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        raise NotImplementedError  # abilities.hold is False: never asked

    def _count(self, route: RouteKey) -> None:
        now = time.time()
        since = self.counted_to.get(route, now)
        self.counted_to[route] = now
        totals = self.totals.setdefault(route, {})
        for version, percent in self.weights.get(route, {}).items():
            if percent <= 0 or not self.backends.get(route, {}).get(version):
                continue
            requests = int(RPS * (now - since) * percent / 100)
            counters = totals.setdefault(version, TrafficCounters())
            counters.requests += requests
            counters.latency_sum_ms += LATENCY_MS * requests
            counters.latency_buckets[histogram.bucket_of(LATENCY_MS)] += requests

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        self._count(route)
        return {version: c.plus(TrafficCounters()) for version, c in self.totals.get(route, {}).items()}

    async def routes_snapshot(self) -> RoutesSnapshot:
        for route in list(self.counted_to):
            self._count(route)
        return RoutesSnapshot(counters={r: dict(c) for r, c in self.totals.items()})

    async def close(self) -> None:
        return None


def register() -> None:
    platforms.register(PLATFORM, LedgerPlatform)
    routing.register(ROUTER, CountingRouter)
