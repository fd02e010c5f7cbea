"""A platform, a router and a traffic source written here, registered through the registries, run a
canary and a manual rollback through the controller: nothing in the controller or the engine may
depend on which platform or router it drives."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from safeship import platforms, routing, traffic
from safeship.api.controller import Controller
from safeship.api.store_setup import open_store
from safeship.clock import VirtualClock
from safeship.config.loader import load_config
from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.config.scenario import CandidateSpec, LatencySpec, Scenario, TrafficSpec, VersionSpec
from safeship.engine.phases import Phase
from safeship.platforms.base import Platform, PlatformSetup
from safeship.platforms.sim import SimPlatform
from safeship.routing.base import RouteKey, Router, RouterAbilities, RouterSetup
from safeship.routing.sim import SimRouter
from safeship.routing.traffic import RouterTraffic
from safeship.simworld import SimWorld
from safeship.traffic import TrafficCounters, TrafficSetup, TrafficSource

SERVICE, ENVIRONMENT = "shop", "production"
ROUTE = RouteKey(SERVICE, ENVIRONMENT)

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
router_process: false
intelligent_deployment:
  strategies:
    canary:
      traffic_percentages: [5, 25, 50, 100]
      step_duration: "1m"
  rollback:
    stable_after: "10m"
    monitoring: {{duration: "1m", interval: "30s"}}
environment_management:
  environments:
    - {{name: {environment}, type: staging, platform: sim}}
services:
  {service}:
    replicas: 2
    rps: 50
"""


class World:
    """The one simulated world the test's platform and router share (set per test)."""

    world: ClassVar[SimWorld | None] = None

    @classmethod
    def current(cls) -> SimWorld:
        assert cls.world is not None, "the test sets the world before the controller is built"
        return cls.world


class ContractPlatform(SimPlatform):
    """The sim platform, presented as a platform a controller runs."""

    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = "contract-router"
    traffic: ClassVar[str] = "contract-traffic"
    setups: ClassVar[list[PlatformSetup]] = []

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        cls.setups.append(setup)
        return cls(World.current())


class ContractRouter(SimRouter):
    """The sim router; it records every weight change it is asked for."""

    abilities = RouterAbilities(hold=False, listens=False)

    def __init__(self, world: SimWorld) -> None:
        super().__init__(world)
        self.asked: list[tuple[RouteKey, dict[str, int]]] = []
        self.ensured: list[RouteKey] = []

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        return cls(World.current())

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        self.ensured.append(route)
        return await super().ensure_route(route, port=port, host=host)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        self.asked.append((route, dict(weights)))
        await super().set_weights(route, weights)


class ContractTraffic(RouterTraffic):
    """The router's counters, counting the reads."""

    reads: ClassVar[int] = 0

    @classmethod
    def create(cls, setup: TrafficSetup) -> TrafficSource:
        return cls(setup.router, clock=setup.clock)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        type(self).reads += 1
        return await super().counters(route)


@pytest.fixture
def registered() -> Iterator[None]:
    platforms.register("contract-platform", ContractPlatform)
    routing.register("contract-router", ContractRouter)
    traffic.register_traffic_source("contract-traffic", ContractTraffic)
    try:
        yield
    finally:
        platforms.PLATFORMS.pop("contract-platform", None)
        routing.ROUTERS.pop("contract-router", None)
        traffic.TRAFFIC_SOURCES.pop("contract-traffic", None)
        World.world = None


def _world(clock: VirtualClock, candidate: str) -> SimWorld:
    scenario = Scenario(
        name="contract",
        traffic=TrafficSpec(rps=50),
        baseline=VersionSpec(error_rate=0.001, latency_ms=LatencySpec(p50=20, p99=80)),
        candidate=CandidateSpec(error_rate=0.001, latency_ms=LatencySpec(p50=20, p99=80)),
        expect="promote",
    )
    return SimWorld(scenario, clock, candidate_version=candidate, seed=7)


def _controller(tmp_path: Path, clock: VirtualClock) -> Controller:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state", environment=ENVIRONMENT, service=SERVICE))
    config = load_config(path)
    environments = config.environment_management.environments
    # The config's schema knows only the platforms built in; the registry is what the controller asks.
    environments[0] = environments[0].model_copy(update={"platform": "contract-platform"})
    return Controller(config, state_dir=tmp_path / "state", store=open_store(config, path), clock=clock)


async def _drive(controller: Controller, clock: VirtualClock, deployment_id: str) -> str:
    """What the controller's loop does, on the virtual clock: sync the route, tick, wait."""
    for _ in range(2000):
        await controller.sync_route(ROUTE)
        wait = await controller.engine.advance(deployment_id)
        phase = controller.store.get_deployment(deployment_id).phase
        if math.isinf(wait) or Phase(phase).is_final:
            return phase
        clock.advance(min(max(wait, 0.5), 5.0))
    raise AssertionError(f"{deployment_id} did not finish")


def _request(version: str, strategy: DeploymentStrategy | None = None) -> DeploymentRequest:
    return DeploymentRequest(service_name=SERVICE, version=version, environment=ENVIRONMENT,
                             deployment_strategy=strategy)


def test_a_registered_platform_router_and_traffic_source_run_a_canary_and_a_rollback(
    registered: None, tmp_path: Path
) -> None:
    async def scenario() -> None:
        clock = VirtualClock(start=1_700_000_000.0)
        World.world = _world(clock, candidate="v2")
        controller = _controller(tmp_path, clock)
        # built from the registries for the environment, behind the controller's dispatchers
        assert isinstance(controller.parts.platforms[ENVIRONMENT], ContractPlatform)
        assert isinstance(controller.parts.routers[ENVIRONMENT], ContractRouter)
        assert isinstance(controller.parts.traffic[ENVIRONMENT], ContractTraffic)
        assert ContractPlatform.setups[-1].ledger is controller.store
        await controller.start()
        try:
            router = controller.parts.routers[ENVIRONMENT]
            assert isinstance(router, ContractRouter)
            assert router.ensured[:1] == [ROUTE]  # the route was made known before any deployment
            assert controller.routes == {ROUTE: None}  # a router that does not listen has no port

            first = controller.submit(_request("v1"))
            assert await _drive(controller, clock, first.id) == Phase.SUCCEEDED.value

            router.asked.clear()
            canary = controller.submit(_request("v2", DeploymentStrategy.CANARY))
            assert await _drive(controller, clock, canary.id) == Phase.SUCCEEDED.value
            # the controller's own loop may tick too: a repeated split is the same split applied again
            applied = [w.get("v2", 0) for route, w in router.asked if route == ROUTE]
            assert [weight for weight, _ in itertools.groupby(applied)] == [5, 25, 50, 100]
            assert router.asked[-1] == (ROUTE, {"v2": 100})

            metrics = await controller.version_metrics(SERVICE, ENVIRONMENT)
            assert metrics["v2"]["requests"] > 0 and ContractTraffic.reads > 0

            router.asked.clear()
            controller.rollback(canary.id, reason="contract test")
            assert await _drive(controller, clock, canary.id) == Phase.ROLLED_BACK.value
            assert router.asked[-1] == (ROUTE, {"v1": 100})

            store = controller.store
            rows = store.list_deployments(service=SERVICE, environment=ENVIRONMENT)
            assert {(r.version, r.phase) for r in rows} == {
                ("v1", Phase.SUCCEEDED.value), ("v2", Phase.ROLLED_BACK.value)}
            rollbacks = store.rollbacks(deployment_id=canary.id)
            assert len(rollbacks) == 1
            assert store.current_version(SERVICE, ENVIRONMENT) == "v1"
            live = [i for i in await controller.platform.instances(SERVICE, ENVIRONMENT) if not i.stopped]
            assert {i.version for i in live} == {"v1"}
        finally:
            await controller.stop()

    asyncio.run(scenario())


def test_a_registered_platform_is_asked_its_traits_not_compared_by_name(registered: None) -> None:
    assert platforms.runs_in_controller("contract-platform")
    assert not platforms.runs_in_controller("sim") and platforms.runs_in_controller("local")
    assert platforms.runs_in_controller("kubernetes")
    assert platforms.runs_in_controller("nomad")  # unknown: the controller is the one that refuses it
    assert platforms.runs_commands("local") and not platforms.runs_commands("contract-platform")
    assert not platforms.runs_commands("kubernetes")


def test_register_refuses_what_cannot_be_a_class(registered: None) -> None:
    from safeship.errors import InputError

    with pytest.raises(InputError, match="module:Class"):
        routing.register("broken", "not a path")
    with pytest.raises(InputError, match="needs a name"):
        platforms.register("", ContractPlatform)
    routing.register("by-path", "safeship.routing.sim:SimRouter")
    try:
        assert routing.router_class("by-path") is SimRouter
    finally:
        routing.ROUTERS.pop("by-path", None)
