"""The gateway-api router's HTTPRoute as a shared Gateway needs it: hostnames and matches from the
config (two services on one Gateway claim different requests, or the config is refused), only
safeship's own rule changed on a weight change (rules and filters added by hand stay), and a wait
that ends only when the Gateway reports both Accepted and ResolvedRefs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import ApiHandle
from test_kube_routers import BACKEND, ROUTE, SERVICE, Make, make, put_ready_pod, ready  # noqa: F401

from safeship.config.loader import load_config
from safeship.config.models import SafeshipConfig
from safeship.errors import ConfigError, TemporaryError
from safeship.kube import objects


def gateway_config(gateway: dict[str, Any], services: tuple[str, ...] = ("shop", "search")) -> SafeshipConfig:
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [{
            "name": "production", "platform": "kubernetes", "namespace": "prod", "router": "gateway-api",
            "gateway": {"name": "public", "namespace": "gateway", **gateway}}]},
        "services": {name: {"image": f"registry.example/{name}:{{version}}"} for name in services},
    })


def test_hostnames_and_matches_come_from_the_config_per_service() -> None:
    config = gateway_config({"hostnames": ["{service}.example.com"],
                             "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                          "headers": [{"name": "x-tenant", "value": "a"}]}]})
    environment = config.environment("production")
    assert environment is not None
    shop = objects.http_route(config, environment, "shop", stable_weight=90, canary_weight=10)
    search = objects.http_route(config, environment, "search", stable_weight=100, canary_weight=0)
    assert shop["spec"]["hostnames"] == ["shop.example.com"] and search["spec"]["hostnames"] == ["search.example.com"]
    assert shop["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"},
                                                    "headers": [{"name": "x-tenant", "value": "a"}]}]
    by_path = gateway_config({"matches": [{"path": {"type": "PathPrefix", "value": "/{service}"}}]})
    environment = by_path.environment("production")
    assert environment is not None
    route = objects.http_route(by_path, environment, "search", stable_weight=100, canary_weight=0)
    assert "hostnames" not in route["spec"]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/search"}}]


def write(tmp_path: Path, gateway: dict[str, Any], services: tuple[str, ...]) -> Path:
    data = {
        "environment_management": {"environments": [{
            "name": "production", "platform": "kubernetes", "namespace": "prod", "router": "gateway-api",
            "kubeconfig": str(tmp_path / "none"), "gateway": {"name": "public", "namespace": "gateway", **gateway}}]},
        "services": {name: {"image": f"registry.example/{name}:{{version}}"} for name in services},
        "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
    }
    path = tmp_path / "safeship.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_services_claiming_the_same_requests_on_one_gateway_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"hostnames": ["www.example.com"]}, ("shop", "search")))
    assert caught.value.field == "environment_management.environments[0].gateway"
    assert "search and shop would both claim hostnames www.example.com" in caught.value.detail
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"matches": [{"pathPrefix": "/"}]}, ("shop",)))
    assert caught.value.field == "environment_management.environments[0].gateway.matches[0]"
    assert "'pathPrefix'" in caught.value.detail
    # one service, or each naming its own: fine
    assert load_config(write(tmp_path, {}, ("shop",))).services
    assert load_config(write(tmp_path, {"hostnames": ["{service}.example.com"]}, ("shop", "search"))).services


# A filter added by hand to safeship's rule.
HEADER = {"type": "RequestHeaderModifier",
          "requestHeaderModifier": {"add": [{"name": "x-served-by", "value": "safeship"}]}}


@contextlib.asynccontextmanager
async def _v2_beside_v1(make: Make, cluster_sim: Any) -> AsyncIterator[Any]:  # noqa: F811
    """A gateway-api router with v1 routed at 100% and v2's backends set, the cluster running."""
    router, platform = make("gateway-api")
    await ready(platform, cluster_sim, {"v1": 2, "v2": 1})
    await router.set_backends(ROUTE, "v1", BACKEND)
    async with cluster_sim.running():
        await router.set_weights(ROUTE, {"v1": 100})
        await router.set_backends(ROUTE, "v2", BACKEND)
        yield router


async def test_a_weight_change_leaves_rules_and_filters_added_by_hand(kube_api: ApiHandle, cluster_sim: Any,
                                                                      make: Make) -> None:  # noqa: F811
    async with _v2_beside_v1(make, cluster_sim) as router:
        # By hand: a header on safeship's rule, and a rule of its own for /admin to another Service.
        kube_api.write({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "admin"},
                        "spec": {"selector": {"app": "admin"}, "ports": [{"port": 80}]}})
        route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
        assert route is not None
        admin = {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"group": "", "kind": "Service", "name": "admin", "port": 80, "weight": 1}]}
        route["spec"]["rules"][0]["filters"] = [HEADER]
        route["spec"]["rules"].insert(0, admin)
        kube_api.write(route)

        await router.set_weights(ROUTE, {"v1": 90, "v2": 10})

    stored = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert stored is not None
    rules = stored["spec"]["rules"]
    assert len(rules) == 2 and rules[0]["backendRefs"][0]["name"] == "admin"
    assert rules[0]["matches"] == admin["matches"]
    assert rules[1]["filters"] == [HEADER]
    assert {r["name"]: r["weight"] for r in rules[1]["backendRefs"]} == {"user-service": 90, "user-service-canary": 10}
    assert router.weights_reached(ROUTE) == {"v1": 90, "v2": 10}


async def test_a_route_changed_between_its_read_and_its_patch_is_read_and_merged_again(
        kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:  # noqa: F811
    """A real API server answers a patch carrying a stale resourceVersion with 409 (a gateway
    controller writing the route's status, or someone by hand): the router reads the route again
    and merges its rule again, so the weights land and the other writer's change stays."""
    async with _v2_beside_v1(make, cluster_sim) as router:
        held = kube_api.emulator.hold("PATCH", "httproutes")
        moving = asyncio.create_task(router.set_weights(ROUTE, {"v1": 90, "v2": 10}))
        try:
            for _ in range(1000):  # until the router's patch, read before the edit below, is held
                if held.waiting:
                    break
                await asyncio.sleep(0.01)
            assert held.waiting >= 1
            route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
            assert route is not None
            route["spec"]["rules"][0]["filters"] = [HEADER]
            kube_api.write(route)  # the route changes after the router read it
        finally:
            held.release()
        await moving

    stored = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert stored is not None
    [rule] = stored["spec"]["rules"]
    assert rule["filters"] == [HEADER]
    assert {r["name"]: r["weight"] for r in rule["backendRefs"]} == {"user-service": 90, "user-service-canary": 10}


async def test_the_wait_needs_resolved_refs_too(kube_api: ApiHandle, make: Make) -> None:  # noqa: F811
    router, _ = make("gateway-api", wait_s=0.5)
    put_ready_pod(kube_api, "v1")
    await router.set_backends(ROUTE, "v1", BACKEND)
    with pytest.raises(TemporaryError):  # no gateway controller has reported yet
        await router.set_weights(ROUTE, {"v1": 100})
    route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert route is not None
    generation = route["metadata"]["generation"]

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}

    # Accepted by the Gateway, but a backend it cannot resolve yet: traffic to it would get 500s.
    # (Gateway API's own reason: sigs.k8s.io/gateway-api/apis/v1/shared_types.go, RouteReasonBackendNotFound)
    route["status"] = {"parents": [{
        "parentRef": {"name": "public"}, "controllerName": "example.com/gateway",
        "conditions": [condition("Accepted", "True", "Accepted", "Route is accepted"),
                       condition("ResolvedRefs", "False", "BackendNotFound",
                                 "backend Services not found: user-service-canary")]}]}
    kube_api.put(route)
    with pytest.raises(TemporaryError, match="ResolvedRefs=False \\(BackendNotFound"):
        await router.set_weights(ROUTE, {"v1": 100})
    assert router.weights_reached(ROUTE) == {}
    route = kube_api.read(objects.HTTPROUTE_API, "HTTPRoute", SERVICE)
    assert route is not None
    route["status"]["parents"][0]["conditions"][1] = condition("ResolvedRefs", "True", "ResolvedRefs",
                                                               "All references resolved")
    kube_api.put(route)
    await router.set_weights(ROUTE, {"v1": 100})
    assert router.weights_reached(ROUTE) == {"v1": 100}
