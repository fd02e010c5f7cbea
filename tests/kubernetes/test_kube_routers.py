"""The cluster routers against the API emulator and the cluster simulator: the weights and selectors
as applied in the API server, waits that end only when the cluster shows the weights, and the
weight the replicas router actually reaches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from clustersim import put_gateway
from emulator import ApiHandle

from safeship.clock import RealClock
from safeship.config.models import SafeshipConfig
from safeship.errors import InputError, PermanentError, TemporaryError
from safeship.kube import objects
from safeship.platforms.base import InstanceSpec
from safeship.platforms.kubernetes import KubernetesPlatform
from safeship.routing import router_class
from safeship.routing.base import AbilityNotSupported, Backend, RouteKey, RouterSetup
from safeship.routing.kubernetes import ClusterRouter, GatewayApiRouter, IstioRouter, ReplicasRouter, replica_counts

SERVICE = "user-service"
ROUTE = RouteKey(SERVICE, "production")
BACKEND = [Backend("production/user-service/p", "10.0.0.1", 8080)]
TICKS = 60


def make_config(kube_api: ApiHandle, router: str, replicas: int = 2) -> SafeshipConfig:
    extra: dict[str, Any] = {"traffic_router": router}
    if router == "gateway-api":
        extra["gateway"] = {"name": "public", "namespace": kube_api.namespace}
    env = {"name": "production", "platform": "kubernetes", "cluster": kube_api.context,
           "kubeconfig": str(kube_api.kubeconfig), "namespace": kube_api.namespace, **extra}
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [env]},
        "services": {SERVICE: {"image": "registry.example/user-service:{version}", "replicas": replicas}},
    })


Make = Callable[..., Any]


@pytest_asyncio.fixture
async def make(kube_api: ApiHandle) -> AsyncIterator[Make]:
    """Builds a router (and the platform beside it) for the emulator; closes them all at the end."""
    made: list[Any] = []

    def build(router: str, *, replicas: int = 2, wait_s: float = 20.0) -> tuple[Any, KubernetesPlatform]:
        config = make_config(kube_api, router, replicas)
        if router == "gateway-api":
            put_gateway(kube_api.emulator, "public", kube_api.namespace)  # the Gateway the route attaches to
        environment = config.environment("production")
        assert environment is not None
        cls = router_class(router)
        built = cls(config, environment, clock=RealClock(), wait_s=wait_s, poll_s=0.05)
        platform = KubernetesPlatform(config, environment)
        made.extend([built, platform])
        return built, platform

    try:
        yield build
    finally:
        for item in made:
            await item.close()


def selected_version(kube_api: ApiHandle, name: str) -> str | None:
    service = kube_api.read("v1", "Service", name)
    assert service is not None, name
    return service["spec"]["selector"].get(objects.VERSION_LABEL)


def route_weights(kube_api: ApiHandle) -> dict[str, int]:
    route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert route is not None
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


async def scale(platform: KubernetesPlatform, version: str, replicas: int) -> None:
    await platform.scale(SERVICE, "production", version, replicas,
                         lambda i: InstanceSpec(SERVICE, "production", version, i), drain=0.0)


async def ready(platform: KubernetesPlatform, sim: Any, counts: dict[str, int]) -> None:
    """Scale the versions and tick the simulator until their pods are ready."""
    for version, count in counts.items():
        await scale(platform, version, count)
    for _ in range(TICKS):
        await sim.tick()
        found = await platform.instances(SERVICE, "production")
        if all(sum(1 for i in found if i.version == v and i.ready) == n for v, n in counts.items()):
            return
    raise AssertionError(f"pods not ready: {counts}")


def put_ready_pod(kube_api: ApiHandle, version: str) -> None:
    """A ready pod of `version`, as a kubelet would report it (no simulator needed)."""
    kube_api.put({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{version}-pod", "labels": objects.labels(SERVICE, version, "production"),
                     "annotations": {objects.VERSION_ANNOTATION: version}},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    })


def test_registered_with_honest_abilities() -> None:
    for name, cls in (("gateway-api", GatewayApiRouter), ("istio", IstioRouter), ("replicas", ReplicasRouter)):
        assert router_class(name) is cls
        assert cls.abilities.hold is False and cls.abilities.listens is False
        assert cls.per_environment is True  # built once per environment by the controller


def test_create_needs_the_environment(tmp_path: Any) -> None:
    with pytest.raises(InputError, match="one environment"):
        ReplicasRouter.create(RouterSetup(state_dir=tmp_path, clock=RealClock()))


async def test_no_hold_no_counters_and_bad_weights_refused(make: Make) -> None:
    router, _ = make("replicas")
    with pytest.raises(AbilityNotSupported):
        await router.hold(ROUTE, 5.0)
    assert await router.counters(ROUTE) == {}
    assert await router.ensure_route(ROUTE, port=0) is None
    with pytest.raises(InputError, match="sum to 100"):
        await router.set_weights(ROUTE, {"v1": 60, "v2": 60})
    with pytest.raises(InputError, match="staging"):
        await router.set_weights(RouteKey(SERVICE, "staging"), {"v1": 100})


# ---------------------------------------------------------------- gateway-api


async def test_gateway_api_canary_weights_in_the_httproute(kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:
    router, platform = make("gateway-api")
    await ready(platform, cluster_sim, {"v1": 2, "v2": 1})
    async with cluster_sim.running():
        await router.set_backends(ROUTE, "v1", BACKEND)
        await router.set_weights(ROUTE, {"v1": 100})
        assert selected_version(kube_api, "user-service") == "v1"
        assert route_weights(kube_api) == {"user-service": 100, "user-service-canary": 0}

        await router.set_backends(ROUTE, "v2", BACKEND)
        assert selected_version(kube_api, "user-service-canary") == "v2"
        assert selected_version(kube_api, "user-service-preview") == "v2"
        for percent in (5, 25, 50):
            await router.set_weights(ROUTE, {"v1": 100 - percent, "v2": percent})
            assert route_weights(kube_api) == {"user-service": 100 - percent, "user-service-canary": percent}
            assert selected_version(kube_api, "user-service") == "v1"
        route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
        assert route is not None
        assert route["spec"]["parentRefs"][0]["name"] == "public"
        accepted = [c for p in route["status"]["parents"] for c in p["conditions"] if c["type"] == "Accepted"]
        assert accepted and all(c["observedGeneration"] >= route["metadata"]["generation"] for c in accepted)

        # promotion: the stable Service now selects v2 and takes all traffic
        await router.set_weights(ROUTE, {"v2": 100, "v1": 0})
        assert selected_version(kube_api, "user-service") == "v2"
        assert route_weights(kube_api) == {"user-service": 100, "user-service-canary": 0}
        assert router.weights_reached(ROUTE) == {"v2": 100, "v1": 0}

        # the next canary: v3 goes to the canary Service beside the stable v2
        await router.set_backends(ROUTE, "v3", BACKEND)
        await router.set_weights(ROUTE, {"v2": 90, "v3": 10})
        assert (selected_version(kube_api, "user-service"), selected_version(kube_api, "user-service-canary")) == (
            "v2", "v3")
        assert route_weights(kube_api) == {"user-service": 90, "user-service-canary": 10}
    with pytest.raises(PermanentError, match="two Services"):
        await router.set_weights(ROUTE, {"v1": 20, "v2": 40, "v3": 40})


async def test_gateway_api_blue_green_switch_and_switch_back(kube_api: ApiHandle, cluster_sim: Any,
                                                             make: Make) -> None:
    router, _ = make("gateway-api", wait_s=3.0)
    put_ready_pod(kube_api, "blue")
    async with cluster_sim.running():
        await router.set_backends(ROUTE, "blue", BACKEND)
        await router.set_weights(ROUTE, {"blue": 100})
        await router.set_backends(ROUTE, "green", BACKEND)
        assert selected_version(kube_api, "user-service-preview") == "green"
        with pytest.raises(TemporaryError, match="green: 0 of 1 ready"):  # only onto ready pods
            await router.set_weights(ROUTE, {"green": 100, "blue": 0})
        assert selected_version(kube_api, "user-service") == "blue"
        put_ready_pod(kube_api, "green")
        await router.set_weights(ROUTE, {"green": 100, "blue": 0})  # the switch: the stable Service moves
        assert selected_version(kube_api, "user-service") == "green"
        assert route_weights(kube_api) == {"user-service": 100, "user-service-canary": 0}
        await router.set_backends(ROUTE, "blue", BACKEND)  # the old colour, still warm
        await router.set_backends(ROUTE, "green", BACKEND)
        assert selected_version(kube_api, "user-service-preview") == "green"
        await router.set_weights(ROUTE, {"blue": 100, "green": 0})  # the switch back
        assert selected_version(kube_api, "user-service") == "blue"
        assert route_weights(kube_api) == {"user-service": 100, "user-service-canary": 0}


async def test_gateway_api_waits_for_the_route_to_be_accepted(kube_api: ApiHandle, make: Make) -> None:
    router, _ = make("gateway-api", wait_s=0.5)
    put_ready_pod(kube_api, "v1")
    await router.set_backends(ROUTE, "v1", BACKEND)
    with pytest.raises(TemporaryError, match=r"HTTPRoute .* not shown"):  # no gateway controller reports on it
        await router.set_weights(ROUTE, {"v1": 100})
    route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert route is not None
    generation = route["metadata"]["generation"]
    route["status"] = {"parents": [{
        "parentRef": {"name": "public"}, "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                        "message": "no listener admits this route", "observedGeneration": generation,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}
    kube_api.put(route)
    with pytest.raises(PermanentError, match="NotAllowedByListeners"):
        await router.set_weights(ROUTE, {"v1": 100})


# ---------------------------------------------------------------- istio


async def test_istio_weights_in_the_virtualservice(kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:
    router, platform = make("istio")
    await ready(platform, cluster_sim, {"v1": 2, "v2": 1})
    await router.set_backends(ROUTE, "v1", BACKEND)
    await router.set_weights(ROUTE, {"v1": 100})
    await router.set_backends(ROUTE, "v2", BACKEND)
    await router.set_weights(ROUTE, {"v1": 90, "v2": 10})
    virtual = kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    assert virtual is not None
    assert {r["destination"]["host"]: r["weight"] for r in virtual["spec"]["http"][0]["route"]} == {
        "user-service": 90, "user-service-canary": 10}
    # each Service selects one version: a client outside the mesh reaches the stable version only
    assert selected_version(kube_api, "user-service") == "v1"
    assert selected_version(kube_api, "user-service-canary") == "v2"
    assert router.weights_reached(ROUTE) == {"v1": 90, "v2": 10}
    await router.remove_route(ROUTE)
    assert kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE) is None


async def test_istio_waits_for_the_observed_generation(kube_api: ApiHandle, make: Make) -> None:
    router, _ = make("istio", wait_s=0.5)
    put_ready_pod(kube_api, "v1")
    put_ready_pod(kube_api, "v2")
    await router.set_weights(ROUTE, {"v1": 100})
    virtual = kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    assert virtual is not None
    virtual["status"] = {"observedGeneration": virtual["metadata"]["generation"]}
    kube_api.put(virtual)
    with pytest.raises(TemporaryError, match="observedGeneration"):  # a new spec nobody has seen yet
        await router.set_weights(ROUTE, {"v1": 50, "v2": 50})
    stored = kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    assert stored is not None
    stored["status"] = {"observedGeneration": stored["metadata"]["generation"]}
    kube_api.put(stored)
    await router.set_weights(ROUTE, {"v1": 50, "v2": 50})


# ---------------------------------------------------------------- replicas


def test_replica_counts_follow_the_weights() -> None:
    assert replica_counts(4, {"v1": 75, "v2": 25}) == {"v1": 3, "v2": 1}
    assert replica_counts(2, {"v1": 95, "v2": 5}) == {"v1": 2, "v2": 1}  # every weighted version keeps a pod
    assert replica_counts(4, {"v1": 100, "v2": 0}) == {"v1": 4}


async def test_blue_green_switch_and_switch_back(kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:
    router, platform = make("replicas")
    await ready(platform, cluster_sim, {"blue": 2})
    await router.set_backends(ROUTE, "blue", BACKEND)
    await router.set_weights(ROUTE, {"blue": 100})
    assert selected_version(kube_api, "user-service") == "blue"
    await ready(platform, cluster_sim, {"green": 2})
    await router.set_backends(ROUTE, "green", BACKEND)
    assert selected_version(kube_api, "user-service-preview") == "green"  # the new colour, before the switch
    assert selected_version(kube_api, "user-service") == "blue"
    await router.set_weights(ROUTE, {"green": 100, "blue": 0})
    assert selected_version(kube_api, "user-service") == "green"
    assert router.weights_reached(ROUTE) == {"green": 100, "blue": 0}
    # blue stays warm: the switch back is a selector change onto its ready pods
    blue = kube_api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "blue"))
    assert blue is not None and blue["spec"]["replicas"] == 2
    await router.set_weights(ROUTE, {"blue": 100, "green": 0})
    assert selected_version(kube_api, "user-service") == "blue"


async def test_replicas_reach_the_ratio_and_say_so(kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:
    router, platform = make("replicas", replicas=4)
    await ready(platform, cluster_sim, {"v1": 4, "v2": 1})
    await router.set_backends(ROUTE, "v1", BACKEND)

    def replicas() -> dict[str, int]:
        return {v: kube_api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, v))["spec"]["replicas"]
                for v in ("v1", "v2")}  # type: ignore[index]

    async with cluster_sim.running():
        await router.set_weights(ROUTE, {"v1": 75, "v2": 25})
        assert router.weights_reached(ROUTE) == {"v1": 75, "v2": 25}  # v1 scaled down to 3 of 4 pods
        assert replicas() == {"v1": 3, "v2": 1}
        await router.set_weights(ROUTE, {"v1": 50, "v2": 50})  # v2 scaled up first, then v1 down
        assert router.weights_reached(ROUTE) == {"v1": 50, "v2": 50}
        assert replicas() == {"v1": 2, "v2": 2}
        await router.set_weights(ROUTE, {"v1": 90, "v2": 10})  # nearest with 4 or 5 pods: 1 of 5
        assert router.weights_reached(ROUTE) == {"v1": 80, "v2": 20}
        assert replicas() == {"v1": 4, "v2": 1}
    assert selected_version(kube_api, "user-service") is None  # every version's pods: traffic follows them


async def test_replicas_wait_runs_out_as_a_temporary_error(kube_api: ApiHandle, make: Make) -> None:
    router, platform = make("replicas", wait_s=0.3)
    await scale(platform, "v1", 2)
    await scale(platform, "v2", 1)
    with pytest.raises(TemporaryError, match="v1: 0 of 1 ready"):  # no kubelet makes pods ready here
        await router.set_weights(ROUTE, {"v1": 50, "v2": 50})
    with pytest.raises(PermanentError, match="no Deployment"):
        await router.set_weights(ROUTE, {"v1": 50, "v9": 50})


def test_every_cluster_router_shares_the_protocol() -> None:
    for cls in (GatewayApiRouter, IstioRouter, ReplicasRouter):
        assert issubclass(cls, ClusterRouter)
