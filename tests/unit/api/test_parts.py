"""Each environment gets the platform, router and traffic source it names; shared ones are built
once, per-environment ones once per environment with that environment in their setup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from safeship.api.parts import Parts, PlatformByEnvironment, RouterByEnvironment, TrafficByEnvironment, choice_for
from safeship.clock import VirtualClock
from safeship.config.models import Environment
from safeship.errors import InputError
from safeship.platforms import PLATFORMS
from safeship.platforms.base import MemoryLedger, PlatformSetup
from safeship.routing import ROUTERS
from safeship.routing.base import RouterAbilities, RouterSetup
from safeship.traffic import TRAFFIC_SOURCES, RouteKey, TrafficCounters, TrafficSetup


class FakePlatform:
    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = "fake-router"
    traffic: ClassVar[str] = "fake-traffic"
    per_environment: ClassVar[bool] = True
    built: ClassVar[list[str | None]] = []

    def __init__(self, setup: PlatformSetup) -> None:
        self.environment = setup.environment.name if setup.environment else None

    @classmethod
    def create(cls, setup: PlatformSetup) -> FakePlatform:
        cls.built.append(setup.environment.name if setup.environment else None)
        return cls(setup)

    async def instances(self, service: str, environment: str) -> list[Any]:
        return [(self.environment, service, environment)]

    async def adopt(self) -> list[Any]:
        return [self.environment]


class FakeRouter:
    abilities = RouterAbilities(hold=True, listens=False)
    built: ClassVar[int] = 0

    @classmethod
    def create(cls, setup: RouterSetup) -> FakeRouter:
        cls.built += 1
        return cls()

    async def counters(self, route: RouteKey) -> dict[str, TrafficCounters]:
        return {route.environment: TrafficCounters(requests=1)}


class FakeTraffic:
    name: ClassVar[str] = "fake-traffic"

    def __init__(self, setup: TrafficSetup) -> None:
        self.router = setup.router
        self.environment = setup.environment

    @classmethod
    def create(cls, setup: TrafficSetup) -> FakeTraffic:
        return cls(setup)

    async def counters(self, route: RouteKey) -> Any:
        return await self.router.counters(route)


@pytest.fixture
def registered() -> Iterator[None]:
    PLATFORMS["fake"], ROUTERS["fake-router"], TRAFFIC_SOURCES["fake-traffic"] = FakePlatform, FakeRouter, FakeTraffic
    FakePlatform.built, FakeRouter.built = [], 0
    try:
        yield
    finally:
        del PLATFORMS["fake"], ROUTERS["fake-router"], TRAFFIC_SOURCES["fake-traffic"]


def _parts(environments: list[Environment], tmp_path: Path) -> Parts:
    clock = VirtualClock()
    return Parts(
        environments,
        PlatformSetup(state_dir=tmp_path, ledger=MemoryLedger(), clock=clock),
        RouterSetup(state_dir=tmp_path, clock=clock, own_process=False),
        lambda router, environment: TrafficSetup(router=router, clock=clock, state_dir=tmp_path,
                                                 environment=environment),
    )


async def test_per_environment_platforms_are_built_per_environment_and_calls_reach_their_own(
        registered: None, tmp_path: Path) -> None:
    parts = _parts([Environment(name="staging", platform="fake"), Environment(name="production", platform="fake")],
                   tmp_path)
    assert FakePlatform.built == ["staging", "production"]
    assert FakeRouter.built == 1  # the router class is not per environment: one, shared
    platform = PlatformByEnvironment(parts)
    assert await platform.instances("api", "production") == [("production", "api", "production")]
    assert sorted(await platform.adopt()) == ["production", "staging"]
    traffic = TrafficByEnvironment(parts)
    assert (await traffic.counters(RouteKey("api", "staging")))["staging"].requests == 1
    router = RouterByEnvironment(parts)
    assert router.abilities_for(RouteKey("api", "staging")).hold


async def test_an_environment_names_its_own_router_over_the_platform_default(registered: None) -> None:
    assert choice_for(Environment(name="p", platform="fake")).router == "fake-router"
    assert choice_for(Environment(name="p", platform="local", router="fake-router")).router == "fake-router"
    with pytest.raises(InputError, match="unknown router 'nope'"):
        choice_for(Environment(name="p", platform="fake", router="nope"))


def test_a_router_may_name_the_traffic_source_that_measures_it_best() -> None:
    assert choice_for(Environment(name="p", platform="local")).traffic == "router"
    assert choice_for(Environment(name="p", platform="local", router="haproxy")).traffic == "haproxy"
    named = Environment(name="p", platform="local", router="haproxy", traffic_source="router")
    assert choice_for(named).traffic == "router"  # the environment's own choice wins
