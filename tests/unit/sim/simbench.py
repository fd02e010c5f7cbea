"""A sim router over a sim world with a baseline and a candidate, for the tests of this folder."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario
from safeship.routing.base import Backend, RouteKey
from safeship.routing.sim import SimRouter
from safeship.simworld import SimWorld

START = 1_000_000.0
ROUTE = RouteKey("svc", "env")
T = TypeVar("T")


def scenario(**fields: Any) -> Scenario:
    return Scenario.model_validate({"name": "t", "expect": "rollback", **fields})


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def poisson_band(mean: float, sds: float = 6.0) -> tuple[float, float]:
    """A band that a Poisson count of this mean leaves about once in a billion runs."""
    return mean - sds * math.sqrt(mean), mean + sds * math.sqrt(mean)


@dataclass
class Bench:
    scenario: Scenario
    seed: int = 1
    instances: Mapping[str, int] = field(default_factory=lambda: {"baseline": 2, "candidate": 2})

    def __post_init__(self) -> None:
        self.clock = VirtualClock(START)
        self.world = SimWorld(self.scenario, self.clock, seed=self.seed)
        self.world.start_deployment()
        self.router = SimRouter(self.world)

    async def setup(self, weights: Mapping[str, int]) -> Bench:
        for version, count in self.instances.items():
            backends = []
            for index in range(count):
                instance = self.world.spawn(ROUTE.service, ROUTE.environment, version, index)
                backends.append(Backend(instance.id, "127.0.0.1", instance.port))
            await self.router.set_backends(ROUTE, version, backends)
        await self.router.set_weights(ROUTE, weights)
        return self

    def slices(self) -> list[tuple[float, float]]:
        """Start recording the slices the router draws; the list it returns fills as it draws."""
        seen: list[tuple[float, float]] = []
        original = self.router._generate

        def recording(state: Any, plan: Any, t0: float, t1: float) -> None:
            seen.append((t0, t1))
            original(state, plan, t0, t1)

        self.router._generate = recording  # type: ignore[method-assign]
        return seen
