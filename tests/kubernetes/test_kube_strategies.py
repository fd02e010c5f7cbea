"""The real engine drives all four strategies on the API emulator, with the cluster simulator moving
pods and status, the Kubernetes platform and a cluster router; and rolls back a rollout that fails.

Traffic comes from a small in-test source whose counters the test chooses (the Prometheus source
has its own tests against a real Prometheus). The engine runs on a virtual clock; the cluster
simulator ticks in the background, and the loop gives it a moment between engine ticks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from clustersim import put_gateway
from emulator import ApiHandle

from safeship.analysis.base import Decision, StepContext, TickSample, Verdict
from safeship.clock import RealClock, VirtualClock
from safeship.config.models import AnalysisConfig, DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.kube import objects
from safeship.platforms.base import InstanceState
from safeship.platforms.kubernetes import KubernetesPlatform
from safeship.routing import router_class
from safeship.routing.base import RouteKey
from safeship.store import DeploymentRecord, Store
from safeship.traffic import TrafficCounters, TrafficSetup, TrafficSource, TrafficWindow

SERVICE = "user-service"
ENVIRONMENT = "production"
MAX_TICKS = 600
FAIL_ANNOTATION = "safeship.test/fail"


class StepPolicy:
    """Advances a step after its duration; fails when the candidate fails over 5% of 20+ requests."""

    name = "test"

    def weights(self, configured: Sequence[int]) -> list[int]:
        return list(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return 1.0

    def start(self) -> dict[str, Any]:
        return {}

    def observe(self, state: dict[str, Any], sample: TickSample, ctx: StepContext) -> tuple[dict[str, Any], Decision]:
        c = sample.candidate
        if c.requests >= 20 and c.failed / c.requests > 0.05:
            return state, Decision(Verdict.FAILED, f"error rate {c.failed / c.requests:.0%}",
                                   {"trigger": "error_rate_threshold"})
        if ctx.time_in_step >= ctx.step_duration:
            return state, Decision(Verdict.ADVANCE if ctx.compare else Verdict.SUCCESSFUL, "step passed")
        return state, Decision(Verdict.INCONCLUSIVE)


@dataclass
class ChosenTraffic:
    """Counters the test chooses: every read adds 100 requests to each version it names, of which
    `failing[version]` fail."""

    versions: set[str] = field(default_factory=lambda: {"v1", "v2"})
    failing: dict[str, int] = field(default_factory=dict)
    totals: dict[str, TrafficCounters] = field(default_factory=dict)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        for version in self.versions:
            total = self.totals.setdefault(version, TrafficCounters())
            total.requests += 100
            total.errors += self.failing.get(version, 0)
        return {v: c.plus(TrafficCounters()) for v, c in self.totals.items()}

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        return None

    async def close(self) -> None:
        return None


class RegisteredTraffic(ChosenTraffic):
    """The same, as a registered traffic source the controller builds (one shared instance)."""

    name: ClassVar[str] = "kube-test-traffic"
    built: ClassVar[ChosenTraffic | None] = None

    @classmethod
    def create(cls, setup: TrafficSetup) -> TrafficSource:
        cls.built = cls()
        return cls.built


def make_config(kube_api: ApiHandle, router: str) -> SafeshipConfig:
    return SafeshipConfig.model_validate(config_data(kube_api, router))


def config_data(kube_api: ApiHandle, router: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"traffic_router": router, "type": "production"}
    if router == "gateway-api":
        extra["gateway"] = {"name": "public", "namespace": kube_api.namespace}
    env = {"name": ENVIRONMENT, "platform": "kubernetes", "cluster": kube_api.context,
           "kubeconfig": str(kube_api.kubeconfig), "namespace": kube_api.namespace, **extra}
    return {
        "intelligent_deployment": {
            "strategies": {
                "canary": {"traffic_percentages": [50, 100], "step_duration": "3s", "min_step_duration": "0s"},
                "blue_green": {"post_switch_analysis": "2s", "scale_down_delay": "1s",
                               "traffic_switch_timeout": "30s", "health_check_timeout": "60s"},
                "rolling": {"step_analysis": "2s", "max_surge": 1, "max_unavailable": 0},
                "recreate": {"analysis": "2s", "max_wait": "5s"},
            },
            "rollback": {"monitoring": {"duration": "2s", "interval": "1s"},
                         "triggers": [{"type": "health_check_failure", "timeout": "60s"},
                                      {"type": "error_rate_threshold", "threshold": 0.05, "duration": "10s"}]},
        },
        "environment_management": {"environments": [env]},
        "services": {SERVICE: {"image": "registry.example/user-service:{version}", "replicas": 2}},
        "store": {"url": "sqlite:///unused.db"},
    }


@dataclass
class Rig:
    kube_api: ApiHandle
    sim: Any
    config: SafeshipConfig
    engine: DeploymentEngine
    store: Store
    clock: VirtualClock
    traffic: ChosenTraffic
    fail_template: dict[str, str] = field(default_factory=dict)  # version -> failure the simulator plays
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    watch: Callable[[], None] | None = None  # called after every engine tick

    def deployment(self, version: str) -> dict[str, Any] | None:
        return self.kube_api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, version))

    def replicas(self, version: str) -> int | None:
        found = self.deployment(version)
        return None if found is None else int(found["spec"]["replicas"])

    def selected(self, name: str = SERVICE) -> str | None:
        found = self.kube_api.read("v1", "Service", name)
        return None if found is None else found["spec"]["selector"].get(objects.VERSION_LABEL)

    def route_weights(self) -> dict[str, int] | None:
        route = self.kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
        if route is None:
            return None
        return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}

    def _mark_failing(self) -> None:
        for version, failure in self.fail_template.items():
            found = self.deployment(version)
            if found is None:
                continue
            annotations = found["spec"]["template"]["metadata"].setdefault("annotations", {})
            if annotations.get(FAIL_ANNOTATION) != failure:
                annotations[FAIL_ANNOTATION] = failure
                self.kube_api.put(found)

    async def deploy(self, version: str, strategy: DeploymentStrategy | None) -> DeploymentRecord:
        record = self.engine.submit(DeploymentRequest(service_name=SERVICE, version=version, environment=ENVIRONMENT,
                                                      deployment_strategy=strategy), policy=StepPolicy.name)
        for _ in range(MAX_TICKS):
            wait = await self.engine.advance(record.id)
            self._mark_failing()
            if self.watch is not None:
                self.watch()
            current = self.store.get_deployment(record.id)
            assert current is not None
            self.snapshots.append({"phase": current.phase, "v1": self.replicas("v1"), "v2": self.replicas("v2"),
                                   "selected": self.selected(), "route": self.route_weights()})
            if Phase(current.phase).is_final:
                return current
            await asyncio.sleep(0.05)  # the cluster simulator's moment
            self.clock.advance(max(min(wait, 5.0), 0.5))
        raise AssertionError(f"the deployment never ended: {self.snapshots[-3:]}")


@pytest_asyncio.fixture
async def rig_for(kube_api: ApiHandle, cluster_sim: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """Builds the engine on the emulator for a router; v1 is deployed first and serves."""
    closing: list[Any] = []

    async def build(router: str) -> Rig:
        config = make_config(kube_api, router)
        if router == "gateway-api":
            put_gateway(kube_api.emulator, "public", kube_api.namespace)  # the Gateway the route attaches to
        environment = config.environment(ENVIRONMENT)
        assert environment is not None
        platform = KubernetesPlatform(config, environment)
        steering = router_class(router)(config, environment, clock=RealClock(), wait_s=30.0, poll_s=0.05)
        closing.extend([platform, steering])
        clock = VirtualClock(1_000_000.0)
        traffic = ChosenTraffic()
        store = Store(f"sqlite:///{tmp_path / 'state.db'}")
        closing.append(store)
        engine = DeploymentEngine(config, store, World(platform, steering, clock, traffic_source=traffic),
                                  policy_for=lambda _name: StepPolicy())
        rig = Rig(kube_api, cluster_sim, config, engine, store, clock, traffic)
        first = await rig.deploy("v1", None)
        assert first.phase == Phase.SUCCEEDED.value, first.reason
        rig.snapshots.clear()
        return rig

    async with cluster_sim.running():
        try:
            yield build
        finally:
            for item in closing:
                close = item.close()
                if asyncio.iscoroutine(close):
                    await close


async def test_canary_moves_the_httproute_weights_and_promotes(rig_for: Any) -> None:
    rig: Rig = await rig_for("gateway-api")
    record = await rig.deploy("v2", DeploymentStrategy.CANARY)
    assert record.phase == Phase.SUCCEEDED.value, record.reason
    seen = [s["route"] for s in rig.snapshots if s["route"] is not None]
    assert {"user-service": 50, "user-service-canary": 50} in seen
    assert rig.selected() == "v2" and rig.route_weights() == {"user-service": 100, "user-service-canary": 0}
    assert (rig.replicas("v1"), rig.replicas("v2")) == (0, 2)


async def test_canary_moves_the_virtualservice_weights_and_promotes(rig_for: Any) -> None:
    rig: Rig = await rig_for("istio")
    seen: list[dict[str, int]] = []

    def weights() -> dict[str, int] | None:
        virtual = rig.kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
        if virtual is None:
            return None
        return {rig.selected(r["destination"]["host"]) or "": r["weight"] for r in virtual["spec"]["http"][0]["route"]
                if r["weight"]}

    rig.watch = lambda: seen.append(weights() or {})
    record = await rig.deploy("v2", DeploymentStrategy.CANARY)
    assert record.phase == Phase.SUCCEEDED.value, record.reason
    assert {"v1": 50, "v2": 50} in seen
    assert weights() == {"v2": 100}
    assert (rig.replicas("v1"), rig.replicas("v2")) == (0, 2)


async def test_blue_green_switches_the_active_service_and_scales_the_old_colour_down(rig_for: Any) -> None:
    rig: Rig = await rig_for("replicas")
    assert rig.selected() == "v1"
    record = await rig.deploy("v2", DeploymentStrategy.BLUE_GREEN)
    assert record.phase == Phase.SUCCEEDED.value, record.reason
    switched = next(i for i, s in enumerate(rig.snapshots) if s["selected"] == "v2")
    assert rig.snapshots[switched]["v1"] == 2  # the old colour is still warm at the switch
    assert rig.selected() == "v2" and (rig.replicas("v1"), rig.replicas("v2")) == (0, 2)


async def test_blue_green_switches_back_when_the_new_colour_fails(rig_for: Any) -> None:
    rig: Rig = await rig_for("replicas")
    rig.traffic.failing["v2"] = 50
    record = await rig.deploy("v2", DeploymentStrategy.BLUE_GREEN)
    assert record.phase == Phase.ROLLED_BACK.value, record.reason
    assert any(s["selected"] == "v2" for s in rig.snapshots)  # it did switch...
    assert rig.selected() == "v1"  # ...and back
    assert (rig.replicas("v1"), rig.replicas("v2")) == (2, 0)


async def test_rolling_replaces_the_pods_version_by_version(rig_for: Any) -> None:
    rig: Rig = await rig_for("replicas")
    record = await rig.deploy("v2", DeploymentStrategy.ROLLING)
    assert record.phase == Phase.SUCCEEDED.value, record.reason
    # never fewer than 2 pods wanted in all (max_unavailable 0), never more than 3 (max_surge 1)
    totals = [(s["v1"] or 0) + (s["v2"] or 0) for s in rig.snapshots]
    assert min(totals) >= 2 and max(totals) <= 3
    assert (rig.replicas("v1"), rig.replicas("v2")) == (0, 2) and rig.selected() == "v2"


async def test_recreate_stops_the_old_version_before_starting_the_new(rig_for: Any) -> None:
    rig: Rig = await rig_for("replicas")
    record = await rig.deploy("v2", DeploymentStrategy.RECREATE)
    assert record.phase == Phase.SUCCEEDED.value, record.reason
    first_v2 = next(s for s in rig.snapshots if (s["v2"] or 0) > 0)
    assert first_v2["v1"] == 0
    events = [e.kind for e in rig.store.events(record.id)]
    assert "hold_unsupported" in events  # a cluster router cannot hold the gap, and says so
    assert (rig.replicas("v1"), rig.replicas("v2")) == (0, 2)


@pytest.mark.parametrize("failure", ["crashloop", "imagepull", "oom", "unready"])
async def test_a_failing_rollout_is_rolled_back(rig_for: Any, failure: str) -> None:
    rig: Rig = await rig_for("gateway-api")
    rig.fail_template["v2"] = failure
    record = await rig.deploy("v2", DeploymentStrategy.CANARY)
    assert record.phase == Phase.ROLLED_BACK.value, record.reason
    triggers = " ".join(str(e.message) for e in rig.store.events(record.id) if e.kind == "trigger")
    # pods that never become ready: the Deployment's progress deadline (the health_check_failure
    # timeout) passes first, or the trigger's own timeout
    evidence = {"crashloop": ["CrashLoopBackOff"], "imagepull": ["ImagePullBackOff"], "oom": ["OOMKilled"],
                "unready": ["ProgressDeadlineExceeded", "not ready for"]}[failure]
    assert "health_check_failure" in triggers and any(e in triggers for e in evidence), triggers
    assert rig.selected() == "v1" and rig.route_weights() == {"user-service": 100, "user-service-canary": 0}
    assert (rig.replicas("v1"), rig.replicas("v2")) == (2, 0)


async def test_the_controller_runs_a_canary_and_a_rollback_on_the_cluster(
        kube_api: ApiHandle, cluster_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller builds the platform and the router for the environment from the registries
    (per environment), and its engine deploys and rolls back on the cluster; a later controller
    adopts the pods."""
    import yaml

    from safeship import traffic
    from safeship.analysis.policies import POLICIES
    from safeship.api.controller import Controller
    from safeship.api.store_setup import open_store
    from safeship.config.loader import load_config

    data = config_data(kube_api, "replicas")
    data["environment_management"]["environments"][0]["traffic_source"] = RegisteredTraffic.name
    data["store"] = {"url": f"sqlite:///{tmp_path / 'state' / 'state.db'}"}
    data["state_dir"] = str(tmp_path / "state")
    data["router_process"] = False
    path = tmp_path / "safeship.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setitem(traffic.TRAFFIC_SOURCES, RegisteredTraffic.name, RegisteredTraffic)
    monkeypatch.setitem(POLICIES, StepPolicy.name, StepPolicy)
    clock = VirtualClock(1_700_000_000.0)
    config = load_config(path)
    controller = Controller(config, state_dir=tmp_path / "state", store=open_store(config, path), clock=clock)
    route = RouteKey(SERVICE, ENVIRONMENT)

    async def drive(deployment_id: str) -> str:
        for _ in range(MAX_TICKS):
            await controller.sync_route(route)
            wait = await controller.engine.advance(deployment_id)
            phase = controller.store.get_deployment(deployment_id).phase
            if Phase(phase).is_final:
                return phase
            await asyncio.sleep(0.05)
            clock.advance(max(min(wait, 5.0), 0.5))
        raise AssertionError(f"{deployment_id} did not finish")

    def selected() -> str | None:
        found = kube_api.read("v1", "Service", SERVICE)
        return None if found is None else found["spec"]["selector"].get(objects.VERSION_LABEL)

    def replicas(version: str) -> int:
        found = kube_api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, version))
        return -1 if found is None else int(found["spec"]["replicas"])

    async with cluster_sim.running():
        try:
            # What start() does before its loops, which would tick deployments on the virtual clock
            # beside this test's own driver: open the router, adopt, sync the route.
            await controller.router.open()
            assert await controller.platform.adopt() == []
            await controller.sync_route(route)
            first = controller.submit(DeploymentRequest(service_name=SERVICE, version="v1",
                                                        environment=ENVIRONMENT), policy=StepPolicy.name)
            assert await drive(first.id) == Phase.SUCCEEDED.value
            assert selected() == "v1" and replicas("v1") == 2
            canary = controller.submit(DeploymentRequest(service_name=SERVICE, version="v2",
                                                         environment=ENVIRONMENT,
                                                         deployment_strategy=DeploymentStrategy.CANARY),
                                       policy=StepPolicy.name)
            assert await drive(canary.id) == Phase.SUCCEEDED.value
            assert selected() == "v2" and (replicas("v1"), replicas("v2")) == (0, 2)
            controller.rollback(canary.id, reason="kubernetes controller test")
            assert await drive(canary.id) == Phase.ROLLED_BACK.value
            assert selected() == "v1" and (replicas("v1"), replicas("v2")) == (2, 0)
            assert controller.store.current_version(SERVICE, ENVIRONMENT) == "v1"
            errors = [e.message for d in (first, canary) for e in controller.store.events(d.id)
                      if e.kind in ("temporary_error", "controller_error")]
            assert errors == []
            for _ in range(MAX_TICKS):  # the cluster removes v2's pods
                live = await controller.platform.instances(SERVICE, ENVIRONMENT)
                if {i.version for i in live if not i.stopped} == {"v1"}:
                    break
                await asyncio.sleep(0.05)
        finally:
            await controller.stop()
    # pods outlive the controller: a new one adopts them
    again = Controller(config, state_dir=tmp_path / "state", store=open_store(config, path), clock=clock)
    try:
        adopted = await again.platform.adopt()
        assert [(i.version, i.state) for i in adopted] == [("v1", InstanceState.READY)] * 2
    finally:
        await again.platform.close()
        await again.router.close()
        await again.traffic.close()
        again.store.close()
