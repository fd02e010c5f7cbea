"""`safeship simulate`: one scenario, one policy, the real engine on the sim world and a virtual clock."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from safeship.analysis.base import Policy
from safeship.clock import VirtualClock
from safeship.config.models import (
    CustomMetricTrigger,
    DeploymentRequest,
    DeploymentStrategy,
    Environment,
    EnvironmentType,
    SafeshipConfig,
    ServiceConfig,
)
from safeship.config.scenario import Scenario
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.notify import MemorySink
from safeship.engine.outbox import Outbox
from safeship.engine.phases import Phase
from safeship.platforms.sim import SimPlatform
from safeship.routing.base import RouteKey, TrafficCounters
from safeship.routing.sim import SimRouter, SimTraffic
from safeship.simworld import SimWorld
from safeship.store import StableVersion, Store

SERVICE = "sim-service"
ENVIRONMENT = "sim"
BASELINE = "baseline"
CANDIDATE = "candidate"
REPLICAS = 2


def sim_config(scenario: Scenario, base: SafeshipConfig | None = None, replicas: int = REPLICAS,
               target: tuple[str, str] | None = None) -> SafeshipConfig:
    """The config a simulation runs with: the given (or default) settings, one service, one
    environment, and the scenario's custom-metric thresholds as the seed's CustomMetric triggers.

    `target` (service, environment) of `base`: that service's settings (replicas, criticality,
    health checks, its own rollback settings) and that environment's type, availability and
    quotas, so that strategy selection, steps, triggers and tolerances are the ones a deploy there
    would use; what reaches outside the simulation (commands, gates, pipeline, secrets, approval,
    freeze windows, routers) is left out."""
    config = (base or SafeshipConfig()).model_copy(deep=True)
    service = ServiceConfig(replicas=replicas)
    environment = Environment(name=ENVIRONMENT, type=EnvironmentType.PRODUCTION, platform="sim")
    rollback = config.intelligent_deployment.rollback
    if target is not None:
        own, where = config.services[target[0]], config.environment(target[1])
        assert where is not None  # the command checked both names
        rollback = config.rollback_for(target[0]).model_copy(deep=True)
        service = own.model_copy(update={"command": [], "webhooks": [], "pipeline": [], "secrets": [],
                                         "simulate": {}, "rollback": rollback, "ports": {}})
        environment = Environment(name=ENVIRONMENT, type=where.type, availability=where.availability,
                                  resource_quotas=where.resource_quotas, platform="sim")
    config.services = {SERVICE: service}
    config.environment_management.environments = [environment]
    triggers: list[Any] = [t for t in rollback.triggers if not isinstance(t, CustomMetricTrigger)]
    for name, metric in scenario.candidate.metrics.items():
        if metric.fail_above is not None:
            triggers.append(CustomMetricTrigger(type="custom_metric", metric=name, threshold=metric.fail_above))
    rollback.triggers = triggers
    config.store.url = "sqlite://"
    return config


@dataclass
class Simulation:
    scenario: Scenario
    clock: VirtualClock
    world: SimWorld
    router: SimRouter
    platform: SimPlatform
    store: Store
    engine: DeploymentEngine
    memory: MemorySink
    outbox: Outbox  # delivers to `memory` from the store's events, as the controller's outbox does

    @property
    def sink(self) -> MemorySink:
        """The notifications of this simulation so far (pending ones are delivered first)."""
        self.outbox.deliver_pending()
        return self.memory

    @property
    def route(self) -> RouteKey:
        return RouteKey(SERVICE, ENVIRONMENT)


async def build(
    scenario: Scenario,
    *,
    policy_for: Callable[[str], Policy],
    seed: int | None = None,
    config: SafeshipConfig | None = None,
    store: Store | None = None,
    replicas: int = REPLICAS,
    target: tuple[str, str] | None = None,
) -> Simulation:
    clock = VirtualClock(start=1_000_000.0)
    world = SimWorld(scenario, clock, candidate_version=CANDIDATE, seed=scenario.seed if seed is None else seed)
    router, platform = SimRouter(world), SimPlatform(world)
    cfg = sim_config(scenario, config, replicas, target)
    # The simulation's own store is in memory and private to it: its transitions are written when
    # anything reads the database (see Store.save_transition), not on every tick.
    store = store or Store(cfg.store.url, deferred=True)
    world_parts = World(platform, router, clock, gauges=_gauges(router), traffic_source=SimTraffic(router))
    engine = DeploymentEngine(cfg, store, world_parts, policy_for=policy_for)
    memory = MemorySink()
    simulation = Simulation(scenario, clock, world, router, platform, store, engine, memory, Outbox(store, [memory]))
    await _install_baseline(simulation)
    return simulation


def _gauges(router: SimRouter) -> Any:
    async def gauges(route: RouteKey) -> Any:
        return router.gauges(route)

    return gauges


async def _install_baseline(sim: Simulation) -> None:
    """The baseline has served for a day: its instances run, it takes all traffic, it is stable."""
    from safeship.routing.base import Backend

    backends = []
    for index in range(sim.engine.config.services[SERVICE].replicas):
        instance = sim.world.spawn(SERVICE, ENVIRONMENT, BASELINE, index)
        instance.started_at -= 86_400
        backends.append(Backend(instance.id, "127.0.0.1", instance.port))
    await sim.router.set_backends(sim.route, BASELINE, backends)
    await sim.router.set_weights(sim.route, {BASELINE: 100})
    sim.store.record_stable(StableVersion(SERVICE, ENVIRONMENT, BASELINE, None, sim.clock.now() - 86_400, None, True))


async def run_simulation(
    scenario: Scenario,
    *,
    policy: str,
    policy_for: Callable[[str], Policy],
    seed: int | None = None,
    strategy: DeploymentStrategy | None = None,
    config: SafeshipConfig | None = None,
    horizon_after_promotion_s: float = 0.0,
    store: Store | None = None,
    target: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Run one deployment of the scenario's candidate to its end, then let the virtual clock run on
    to the horizon with the routing the deployment left: what the candidate serves after a
    promotion counts in `candidate_failed_requests_horizon`, which is what its users saw.

    The horizon is the scenario's `duration_s` after the start; with `horizon_after_promotion_s`
    > 0 it is at least that long after a promotion, so that a wrongly promoted bad release is
    charged for what it serves for that long, however late it was promoted. `horizon_s` in the
    result is the horizon used, in seconds from the start. `store`: where the deployment is
    recorded (default: a deferred in-memory store of its own, see `build`). `target`: run as the
    service and environment of `config` so named (see `sim_config`); the strategy is then the one
    the config selects there unless `strategy` is given, not the scenario's."""
    with _collector_paused():
        return await _run(scenario, policy=policy, policy_for=policy_for, seed=seed, strategy=strategy,
                          config=config, horizon_after_promotion_s=horizon_after_promotion_s, store=store,
                          target=target)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while one simulation runs (as it was after).

    A simulation allocates hundreds of thousands of short-lived containers (the policy's state at
    every look, counters, events), and each of those allocations counts towards a collection
    that walks the long-lived objects of the process again: about a sixth of a simulation's
    time. Nothing a simulation keeps while it runs needs the collector (what it drops is freed by
    reference counting); whatever cycles it leaves are collected after it, as before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _run(
    scenario: Scenario,
    *,
    policy: str,
    policy_for: Callable[[str], Policy],
    seed: int | None,
    strategy: DeploymentStrategy | None,
    config: SafeshipConfig | None,
    horizon_after_promotion_s: float,
    store: Store | None,
    target: tuple[str, str] | None = None,
) -> dict[str, Any]:
    sim = await build(scenario, policy_for=policy_for, seed=seed, config=config, store=store, target=target,
                      replicas=config.services[target[0]].replicas if config is not None and target else REPLICAS)
    # Every count in the result is of the users' requests: a router that also carries synthetic
    # traffic (a load test) says which were the users' through `user_counters`.
    counts = getattr(sim.router, "user_counters", sim.router.counters)
    request = DeploymentRequest(
        service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
        deployment_strategy=strategy or (None if target is not None else scenario.strategy),
    )
    record = sim.engine.submit(request, policy=policy)
    started = record.created_at
    sim.world.start_deployment(started)  # incidents and the baseline's record count from here
    limit = started + scenario.duration_s
    end_counters: dict[str, TrafficCounters] | None = None
    horizon_counters: dict[str, TrafficCounters] | None = None
    promoted_at: float | None = None

    def horizon() -> float:
        if promoted_at is None or horizon_after_promotion_s <= 0:
            return limit
        return max(limit, promoted_at + horizon_after_promotion_s)

    async def drive(current: Any) -> tuple[Any, float | None]:
        """Step one deployment to its end (or out of time); when it was promoted, and since then
        the counters at its promotion are `end_counters`."""
        nonlocal end_counters, horizon_counters, promoted_at
        promoted_here: float | None = None
        while True:
            wait, current = await sim.engine.step(current.id, known=current)
            if current.decision == "promote" and promoted_here is None:
                end_counters = dict(await counts(sim.route))
                promoted_at = promoted_here = current.decided_at if current.decided_at is not None else sim.clock.now()
            if Phase(current.phase).is_final:
                return current, promoted_here
            if sim.clock.now() >= limit and current.decision is None:
                return current, promoted_here  # out of time without a decision: counted as no decision
            step = max(wait, 0.05)
            end = horizon()
            if horizon_counters is None and sim.clock.now() < end <= sim.clock.now() + step:
                ahead = end - sim.clock.now()
                sim.clock.advance(ahead)
                horizon_counters = dict(await counts(sim.route))
                step -= ahead
            sim.clock.advance(step)

    first, _ = await drive(record)
    current, retry_promoted_at = first, None
    retry = _retry_of(sim, first)
    if retry is not None and sim.clock.now() < limit:
        # an incident rollback that asked for the same release again: the retry runs on to its end
        current, retry_promoted_at = await drive(retry)
    if current.phase != Phase.SUCCEEDED.value or end_counters is None:
        end_counters = dict(await counts(sim.route))
    end = horizon()
    if horizon_counters is None:
        if sim.clock.now() < end:
            sim.clock.advance(end - sim.clock.now())  # a promoted candidate serves on
        horizon_counters = dict(await counts(sim.route))
    sim.store.flush()  # the database holds the whole deployment when the simulation returns
    result = _result(sim, first, end_counters, seed if seed is not None else scenario.seed, policy)
    # the retry after an incident rollback, when there was one: its decision and when it was made
    result["retry_decision"] = None if current is first else _result(sim, current, end_counters, 0, policy)["decision"]
    if retry_promoted_at is not None:
        result["retry_promoted_at_s"] = round(retry_promoted_at - started, 3)
    result["promoted_at_s"] = None if promoted_at is None else round(promoted_at - started, 3)
    result["candidate_failed_requests_horizon"] = horizon_counters.get(CANDIDATE, TrafficCounters()).failed
    result["horizon_s"] = round(end - started, 3)
    return result


def _retry_of(sim: Simulation, record: Any) -> Any:
    """The deployment that retried `record` after its incident rollback, or None."""
    if not (record.evidence or {}).get("retry_after_incident"):
        return None
    newest = sim.store.list_deployments(service=SERVICE, environment=ENVIRONMENT, limit=1)
    wanted = f"retry after the incident of {record.id}"
    return next((d for d in newest if d.id != record.id and (d.request or {}).get("requested_by") == wanted), None)


def _result(
    sim: Simulation, record: Any, counters: dict[str, TrafficCounters], seed: int, policy: str
) -> dict[str, Any]:
    candidate = counters.get(CANDIDATE, TrafficCounters())
    unrouted = sum(r.unrouted for r in sim.router.routes.values())
    decision = {"promote": "promote", "rollback": "rollback", "failed": "rollback"}.get(record.decision or "", "none")
    if record.phase == Phase.SUCCEEDED.value:
        decision = "promote"
    elif record.phase in (Phase.ROLLED_BACK.value, Phase.FAILED.value):
        decision = "rollback"
    weights = [w.get(CANDIDATE, 0) for _, _, w in sim.router.weight_log]
    decided = record.decided_at if record.decided_at is not None else sim.clock.now()
    first = sim.world.candidate_first_traffic
    return {
        "scenario": sim.scenario.name,
        "policy": policy,
        "seed": seed,
        "decision": decision,
        "expected": sim.scenario.expect,
        "correct": decision == sim.scenario.expect,
        "time_to_decision_s": round(decided - record.created_at, 3),
        "candidate_requests": candidate.requests,
        "candidate_failed_requests": candidate.failed,
        "failed_requests_total": sum(c.failed for c in counters.values()) + unrouted,
        "max_candidate_weight": max(weights, default=0),
        "reason": record.reason or "",
        "first_candidate_request_s": None if first is None else round(first - record.created_at, 3),
        "strategy": record.strategy,
        "phase": record.phase,
        # "incident" when the rollback was labelled one: the restored version was hurt as much
        "rollback_kind": (record.evidence or {}).get("rollback_kind") if decision == "rollback" else None,
    }


def simulate(scenario: Scenario, *, policy: str, policy_for: Callable[[str], Policy], seed: int | None = None,
             strategy: DeploymentStrategy | None = None, horizon_after_promotion_s: float = 0.0,
             config: SafeshipConfig | None = None, target: tuple[str, str] | None = None) -> dict[str, Any]:
    return asyncio.run(run_simulation(scenario, policy=policy, policy_for=policy_for, seed=seed, strategy=strategy,
                                      horizon_after_promotion_s=horizon_after_promotion_s, config=config,
                                      target=target))


def scenario_for_service(config: SafeshipConfig, service: str, baseline: str | None, candidate: str) -> Scenario:
    """A scenario built from `services.<name>.simulate`, for `platform: sim` environments."""
    from safeship.config.models import SimProfile
    from safeship.config.scenario import CandidateSpec, LatencySpec, TrafficSpec, VersionSpec

    settings = config.services[service]
    base = settings.simulate.get(baseline or "", SimProfile())
    cand = settings.simulate.get(candidate, SimProfile())
    return Scenario(
        name=f"{service}-{candidate}",
        traffic=TrafficSpec(rps=settings.rps),
        baseline=VersionSpec(
            error_rate=base.error_rate,
            latency_ms=LatencySpec(p50=base.latency_p50_ms, p99=base.latency_p99_ms),
        ),
        candidate=CandidateSpec(
            error_rate=cand.error_rate,
            latency_ms=LatencySpec(p50=cand.latency_p50_ms, p99=cand.latency_p99_ms),
            ready=cand.ready,
            crash_after_s=cand.crash_after_s,
            onset_s=cand.onset_s,
        ),
        expect="promote",
    )


async def sim_engine(
    config: SafeshipConfig,
    store: Store,
    *,
    service: str,
    environment: str,
    candidate: str,
    policy_for: Callable[[str], Policy],
    start: float,
) -> tuple[DeploymentEngine, VirtualClock]:
    """An engine on a fresh sim world for one `platform: sim` environment, with the store's current
    version already serving. The virtual clock starts at `start` (wall time) and runs ahead of it."""
    from safeship.routing.base import Backend

    clock = VirtualClock(start=start)
    baseline = store.current_version(service, environment)
    scenario = scenario_for_service(config, service, baseline, candidate)
    world = SimWorld(scenario, clock, candidate_version=candidate, seed=int(start) % 2**31)
    router, platform = SimRouter(world), SimPlatform(world)
    route = RouteKey(service, environment)
    if baseline is not None:
        backends = []
        for index in range(config.services[service].replicas):
            instance = world.spawn(service, environment, baseline, index)
            instance.started_at -= 3600
            backends.append(Backend(instance.id, "127.0.0.1", instance.port))
        await router.set_backends(route, baseline, backends)
        await router.set_weights(route, {baseline: 100})
    engine = DeploymentEngine(config, store,
                              World(platform, router, clock, gauges=_gauges(router), traffic_source=SimTraffic(router)),
                              policy_for=policy_for)
    return engine, clock


def inert_engine(config: SafeshipConfig, store: Store, *, policy_for: Callable[[str], Policy]) -> DeploymentEngine:
    """An engine for requests made outside a controller (cancel, approve, rollback requests,
    stable-version queries). Its own world is an empty simulation on the wall clock, so it never
    touches a real instance or router. A `platform: sim` deployment it changes is driven to a
    final phase (or to awaiting_approval) on a sim world of its own before the call returns;
    one of another platform is only recorded, for its controller to drive."""
    from safeship.clock import RealClock
    from safeship.engine.sim_driver import SimDrivingEngine

    world = SimWorld(Scenario(name="inert", expect="promote"), VirtualClock())
    return SimDrivingEngine(config, store, World(SimPlatform(world), SimRouter(world), RealClock()),
                            policy_for=policy_for)
