"""A bad release rolled back from PromQL results alone.

The real `DeploymentEngine` and safeship's own policy run a canary on the real clock. Instances and
weights live in the sim platform and router (no process, no port); what the analysis measures
comes only from the Prometheus traffic source, reading Istio-style series that the test exporter
serves and a real Prometheus scrapes. Each round, the test serves a fixed number of requests split
by the weights the router holds (both versions equally fast, the candidate failing half of its
own), waits until Prometheus has scraped them, and ticks the engine once. The test is bounded by
rounds (counts), never by a duration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from promkit import (
    PromStack,
    needs_prometheus,
    prom_stack_fixture,  # noqa: F401  (the prom_stack fixture)
    serve_istio,
)

from safeship.clock import RealClock
from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.engine.policies import policy_for
from safeship.platforms.sim import SimPlatform
from safeship.routing.base import Backend
from safeship.routing.sim import SimRouter
from safeship.simworld import SimWorld
from safeship.store import StableVersion, Store
from safeship.traffic import RouteKey, TrafficSetup, traffic_source_class

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]

SERVICE, ENV, NAMESPACE = "frontend", "production", "web"
STABLE, BAD = "v1.0.0", "v1.1.0"
PER_ROUND = 400  # requests served per round, split by the router's weights
STABLE_FAILS_PER_ROUND = 2  # 0.5% of the stable version's requests fail
MAX_ROUNDS = 60


def config(url: str) -> SafeshipConfig:
    return SafeshipConfig.model_validate({
        "intelligent_deployment": {
            "strategies": {"canary": {"traffic_percentages": [10, 50, 100], "step_duration": "60s",
                                      "min_step_duration": "1s"}},
            "analysis": {"interval": "1s"},
        },
        "environment_management": {"environments": [{
            "name": ENV, "type": "production", "platform": "sim", "namespace": NAMESPACE,
            "traffic_source": "prometheus", "prometheus": {"url": url, "queries": "istio", "timeout": "5s"},
        }]},
        "services": {SERVICE: {"replicas": 2}},
        "store": {"url": "sqlite://"},
    })


def serve_round(stack: PromStack, weights: dict[str, int]) -> dict[str, tuple[int, int]]:
    """One round of traffic, split by `weights`: (requests, failed) per version."""
    served: dict[str, tuple[int, int]] = {}
    total = sum(weights.values())
    for version, weight in weights.items():
        requests = PER_ROUND * weight // total if total else 0
        failed = requests // 2 if version == BAD else min(requests, STABLE_FAILS_PER_ROUND)
        serve_istio(stack.exporter, service=SERVICE, namespace=NAMESPACE, version=version,
                    requests=requests, errors=failed, latency_ms=20.0)
        served[version] = (requests, failed)
    return served


@needs_prometheus
async def test_bad_release_rolled_back_from_promql_alone(prom_stack: PromStack, tmp_path: Path) -> None:
    cfg = config(prom_stack.url)
    environment = cfg.environment(ENV)
    assert environment is not None
    clock = RealClock()
    world = SimWorld(Scenario(name="promql", expect="rollback"), clock, candidate_version=BAD)  # type: ignore[arg-type]
    world.ready_delay_s = 0.0
    router, platform = SimRouter(world), SimPlatform(world)
    route = RouteKey(SERVICE, ENV)
    source = traffic_source_class(environment.traffic_source).create(
        TrafficSetup(router=router, clock=clock, state_dir=tmp_path, config=cfg, environment=environment))
    store = Store(f"sqlite:///{tmp_path}/state.db")
    engine = DeploymentEngine(cfg, store, World(platform, router, clock, traffic_source=source),
                              policy_for=policy_for)

    # The stable version serves all traffic, and Prometheus has its record from before the deployment.
    backends = []
    for index in range(2):
        instance = world.spawn(SERVICE, ENV, STABLE, index)
        backends.append(Backend(instance.id, "127.0.0.1", instance.port))
    await router.set_backends(route, STABLE, backends)
    await router.set_weights(route, {STABLE: 100})
    store.record_stable(StableVersion(SERVICE, ENV, STABLE, None, clock.now() - 86_400, None, True))
    serve_istio(prom_stack.exporter, service=SERVICE, namespace=NAMESPACE, version=STABLE, requests=0)
    serve_istio(prom_stack.exporter, service=SERVICE, namespace=NAMESPACE, version=BAD, requests=0)
    for _ in range(3):
        serve_round(prom_stack, {STABLE: 100})
        prom_stack.caught_up()

    record = engine.submit(DeploymentRequest(service_name=SERVICE, version=BAD, environment=ENV,
                                             deployment_strategy=DeploymentStrategy.CANARY))
    served: dict[str, list[int]] = {STABLE: [0, 0], BAD: [0, 0]}
    for _ in range(MAX_ROUNDS):
        _, record = await engine.step(record.id)
        if Phase(record.phase).is_final or record.phase == Phase.ROLLING_BACK.value:
            break
        weights = dict(router.routes[route].weights)
        for version, (requests, failed) in serve_round(prom_stack, weights).items():
            served[version][0] += requests
            served[version][1] += failed
        prom_stack.caught_up()
    for _ in range(MAX_ROUNDS):  # the rollback's own steps
        if Phase(record.phase).is_final:
            break
        _, record = await engine.step(record.id)

    assert record.phase == Phase.ROLLED_BACK.value, (record.phase, record.reason)
    assert record.decision == "rollback"
    assert "error rate" in (record.reason or ""), record.reason
    evidence: dict[str, Any] = dict(record.evidence or {})
    assert evidence.get("test") == "errors" or evidence.get("trigger") == "error_rate_threshold", evidence
    candidate = evidence["candidate"]
    # The judge's counts are the exporter's, read back through PromQL: never more than it served,
    # and failing at the candidate's rate.
    assert 0 < candidate["events"] <= served[BAD][1] and candidate["requests"] <= served[BAD][0]
    assert candidate["rate"] == pytest.approx(0.5, abs=0.1)
    # The bad release never got past its first canary weight, and the stable version has all traffic back.
    assert max(w.get(BAD, 0) for _, _, w in router.weight_log) == 10
    assert router.routes[route].weights == {STABLE: 100}
    events = [e.kind for e in store.events(record.id)]
    assert "history" in events  # the stable version's record before the deployment came from PromQL too
    assert not any(e.kind == "analysis_error" for e in store.events(record.id))
