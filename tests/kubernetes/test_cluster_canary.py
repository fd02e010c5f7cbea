"""A canary on each cluster router (gateway-api, istio, replicas), driven by the real engine on the
API emulator with the cluster simulator: the users' requests follow what the cluster's objects
say (not what safeship asked for), and the judge sees the candidate's requests at every look, with
the weight the cluster reached.

`ClusterTraffic` plays the users: every read sends 1000 requests, split as the data plane would
split them from the objects stored in the emulator: the HTTPRoute's backendRefs (gateway-api) or
the VirtualService's destinations (istio), each to the ready pods its Service selects, or the ready
pods behind `<service>` (replicas: a Service balances over its ready endpoints)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from clustersim import put_gateway
from emulator import ApiHandle
from test_kube_strategies import Rig, config_data

from safeship.analysis.base import Decision, StepContext, TickSample, Verdict
from safeship.clock import RealClock, VirtualClock
from safeship.config.models import AnalysisConfig, DeploymentStrategy, SafeshipConfig
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.kube import objects
from safeship.platforms.kubernetes import KubernetesPlatform
from safeship.routing import router_class
from safeship.routing.base import RouteKey
from safeship.routing.kubernetes import ratio, replica_counts
from safeship.store import Store
from safeship.traffic import TrafficCounters, TrafficWindow

SERVICE = "user-service"
STEPS = [5, 10, 25, 50, 75, 100]
USERS = 1000  # requests per read


def _apportion(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """`total` requests in proportion to `shares` (largest remainder)."""
    whole = sum(shares.values())
    if not whole:
        return {}
    exact = {v: total * s / whole for v, s in shares.items()}
    counts = {v: math.floor(x) for v, x in exact.items()}
    for v in sorted(exact, key=lambda v: exact[v] - counts[v], reverse=True)[: total - sum(counts.values())]:
        counts[v] += 1
    return counts


@dataclass
class ClusterTraffic:
    """Users whose requests go where the cluster's objects send them (see the module docstring)."""

    kube_api: ApiHandle
    router: str
    totals: dict[str, TrafficCounters] = field(default_factory=dict)

    def _ready_pods(self, selector: Mapping[str, str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for pod in self.kube_api.items("v1", "Pod", labels=dict(selector)):
            version = objects.object_version(pod)
            if version is not None and objects.pod_ready(pod):
                found[version] = found.get(version, 0) + 1
        return found

    def _behind(self, service_name: str) -> dict[str, float]:
        service = self.kube_api.read("v1", "Service", service_name)
        if service is None:
            return {}
        return {v: float(n) for v, n in self._ready_pods(service["spec"]["selector"]).items()}

    def split(self) -> dict[str, int]:
        if self.router == "gateway-api":
            route = self.kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
            shares: dict[str, float] = {}
            for rule in (route or {}).get("spec", {}).get("rules", []):
                refs = rule.get("backendRefs") or []
                whole = sum(int(r.get("weight", 1)) for r in refs) or 1
                for ref in refs:
                    pods = self._behind(ref["name"])
                    for version, count in pods.items():
                        share = int(ref.get("weight", 1)) / whole * count / sum(pods.values())
                        shares[version] = shares.get(version, 0.0) + share
            return _apportion(USERS, shares)
        if self.router == "istio":
            virtual = self.kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
            shares = {}
            for route in (virtual or {}).get("spec", {}).get("http", [{}])[0].get("route", []):
                pods = self._behind(route["destination"]["host"])
                for version, count in pods.items():
                    share = float(route.get("weight", 0)) * count / sum(pods.values())
                    shares[version] = shares.get(version, 0.0) + share
            return _apportion(USERS, shares)
        return _apportion(USERS, self._behind(SERVICE))

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        for version, count in self.split().items():
            self.totals.setdefault(version, TrafficCounters()).requests += count
        return {v: c.plus(TrafficCounters()) for v, c in self.totals.items()}

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        return None

    async def close(self) -> None:
        return None


class RecordingPolicy:
    """Advances a step after its duration; records every look's weight and requests."""

    name = "recording"

    def __init__(self) -> None:
        self.looks: list[tuple[int, int, int]] = []  # (candidate_weight, candidate, baseline requests)

    def weights(self, configured: Sequence[int]) -> list[int]:
        return list(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return 1.0

    def start(self) -> dict[str, Any]:
        return {}

    def observe(self, state: dict[str, Any], sample: TickSample, ctx: StepContext) -> tuple[dict[str, Any], Decision]:
        if ctx.compare:
            self.looks.append((sample.candidate_weight, sample.candidate.requests, sample.baseline.requests))
        if ctx.time_in_step >= ctx.step_duration:
            return state, Decision(Verdict.ADVANCE if ctx.compare else Verdict.SUCCESSFUL, "step passed")
        return state, Decision(Verdict.INCONCLUSIVE)


@pytest_asyncio.fixture
async def canary_rig(kube_api: ApiHandle, cluster_sim: Any, tmp_path: Path) -> AsyncIterator[Any]:
    closing: list[Any] = []

    async def build(router: str) -> tuple[Rig, RecordingPolicy]:
        data = config_data(kube_api, router)
        data["intelligent_deployment"]["strategies"]["canary"]["traffic_percentages"] = STEPS
        config = SafeshipConfig.model_validate(data)
        if router == "gateway-api":
            put_gateway(kube_api.emulator, "public", kube_api.namespace)  # the Gateway the route attaches to
        environment = config.environment("production")
        assert environment is not None
        platform = KubernetesPlatform(config, environment)
        steering = router_class(router)(config, environment, clock=RealClock(), wait_s=30.0, poll_s=0.05)
        closing.extend([platform, steering])
        store = Store(f"sqlite:///{tmp_path / 'state.db'}")
        closing.append(store)
        policy = RecordingPolicy()
        traffic = ClusterTraffic(kube_api, router)
        clock = VirtualClock(1_000_000.0)
        engine = DeploymentEngine(config, store, World(platform, steering, clock, traffic_source=traffic),
                                  policy_for=lambda _name: policy)
        rig = Rig(kube_api, cluster_sim, config, engine, store, clock, traffic)  # type: ignore[arg-type]
        first = await rig.deploy("v1", None)
        assert first.phase == Phase.SUCCEEDED.value, first.reason
        policy.looks.clear()
        return rig, policy

    async with cluster_sim.running():
        try:
            yield build
        finally:
            for item in closing:
                close = item.close()
                if asyncio.iscoroutine(close):
                    await close


@pytest.mark.parametrize("router", ["gateway-api", "istio", "replicas"])
async def test_a_canary_reaches_each_weight_and_the_judge_sees_the_candidate(canary_rig: Any, router: str) -> None:
    rig, policy = await canary_rig(router)
    record = await rig.deploy("v2", DeploymentStrategy.CANARY)
    assert record.phase == Phase.SUCCEEDED.value, record.reason

    # What each step can reach: the weight itself through a traffic router, the nearest pod ratio
    # (2 replicas, up to one pod more) without one.
    def reachable(weight: int) -> int:
        if router != "replicas":
            return weight
        return ratio(replica_counts(2, {"v1": 100 - weight, "v2": weight}), ["v1", "v2"])["v2"]

    expected = {reachable(w) for w in STEPS[:-1]}
    judged = {weight for weight, _, _ in policy.looks}
    assert judged == expected, policy.looks  # the judge was told the weight reached at every look
    assert policy.looks and all(candidate > 0 for _, candidate, _ in policy.looks), policy.looks
    for weight, candidate, baseline in policy.looks:
        if candidate + baseline == 0:
            continue
        share = 100 * candidate / (candidate + baseline)
        assert abs(share - weight) <= 1, (weight, candidate, baseline)
    if router == "replicas":
        assert expected == {33, 50, 67}  # 5/10/25% -> 1 of 3 pods, 50% -> 1 of 2, 75% -> 2 of 3


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubernetes.yaml"


async def test_the_example_prepares_and_deploys_with_its_gateway(kube_api: ApiHandle, cluster_sim: Any,
                                                               tmp_path: Path) -> None:
    """examples/kubernetes.yaml's production environment, pointed at the stand-in cluster (its
    namespace too, where the test's users look), with the Gateway `gateway/public` it names: its
    listener admits routes from the namespaces labelled for it, as docs/kubernetes.md says."""
    import yaml

    from safeship.environments.kubernetes import KubernetesEnvironment

    data = yaml.safe_load(EXAMPLE.read_text())
    data["environment_management"]["environments"] = [
        {**e, "cluster": kube_api.context, "kubeconfig": str(kube_api.kubeconfig), "namespace": kube_api.namespace}
        for e in data["environment_management"]["environments"] if e["name"] == "production"]
    data["intelligent_deployment"]["strategies"]["canary"]["step_duration"] = "3s"
    data["intelligent_deployment"]["rollback"]["monitoring"] = {"duration": "2s", "interval": "1s"}
    data["store"] = {"url": f"sqlite:///{tmp_path / 'state.db'}"}
    config = SafeshipConfig.model_validate(data)
    environment = config.environment("production")
    assert environment is not None and environment.gateway is not None
    put_gateway(kube_api.emulator, "public", "gateway", allowed_from="Selector",
                selector={"gateway-access": "public"})
    namespace = kube_api.read("v1", "Namespace", kube_api.namespace, None)
    assert namespace is not None
    namespace["metadata"].setdefault("labels", {})["gateway-access"] = "public"
    kube_api.write(namespace)
    (tmp_path / "secrets" / "production").mkdir(parents=True)

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    platform = KubernetesPlatform(config, environment)
    steering = router_class("gateway-api")(config, environment, clock=RealClock(), wait_s=30.0, poll_s=0.05)
    try:
        checks = await KubernetesEnvironment(config, environment, root=tmp_path, store=store).prepare()
        assert [c.detail for c in checks if not c.ok] == []
        policy = RecordingPolicy()
        engine = DeploymentEngine(config, store, World(platform, steering, VirtualClock(1_000_000.0),
                                                       traffic_source=ClusterTraffic(kube_api, "gateway-api")),
                                  policy_for=lambda _name: policy)
        rig = Rig(kube_api, cluster_sim, config, engine, store, VirtualClock(0.0), None)  # type: ignore[arg-type]
        rig.clock = engine.world.clock  # type: ignore[assignment]
        async with cluster_sim.running():
            first = await rig.deploy("v1.2.0", None)
            assert first.phase == Phase.SUCCEEDED.value, first.reason
            policy.looks.clear()
            record = await rig.deploy("v1.3.0", DeploymentStrategy.CANARY)
        assert record.phase == Phase.SUCCEEDED.value, record.reason
        assert {weight for weight, _, _ in policy.looks} == {5, 10, 25, 50, 75}
        assert all(candidate > 0 for _, candidate, _ in policy.looks)
        stored = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
        assert stored is not None and stored["spec"]["hostnames"] == ["user-service.example.com"]
        assert stored["spec"]["parentRefs"][0] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                   "name": "public", "namespace": "gateway"}
    finally:
        await steering.close()
        await platform.close()
        store.close()
