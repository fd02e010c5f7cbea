"""The stand-in cluster says no where a real one does: an HTTPRoute is accepted only by a Gateway
whose listeners admit it, a deleted namespace stays Terminating until the namespace controller has
emptied it, and Istio writes no observedGeneration unless its status reporting is on.

The reasons and messages are the real ones, quoted with the source they come from:

- Gateway API, sigs.k8s.io/gateway-api apis/v1/shared_types.go (RouteConditionReason):
  `RouteReasonNotAllowedByListeners = "NotAllowedByListeners"`: "used with the 'Accepted'
  condition when the route has not been accepted by a Gateway because the Gateway has no Listener
  whose allowedRoutes criteria permit the route"; `RouteReasonNoMatchingListenerHostname =
  "NoMatchingListenerHostname"`: "... because the Gateway has no compatible Listeners whose
  Hostname matches the route"; `RouteReasonNoMatchingParent = "NoMatchingParent"`: "... when there
  are no matching Parents. In the case of Gateways, this can occur when a Route ParentRef specifies
  a Port and/or SectionName that does not match any Listeners in the Gateway" (a parent Gateway
  that does not exist is answered the same way here). `allowedRoutes.namespaces.from` defaults to
  `Same` (apis/v1/gateway_types.go, RouteNamespaces: "+kubebuilder:default=Same").
- Namespaces: k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go, "unable to
  create new content in namespace %s because it is being terminated" (see test_emulator.py)."""

from __future__ import annotations

from typing import Any

import pytest
from clustersim import ClusterSim, put_gateway
from emulator import ApiHandle
from test_kube_routers import BACKEND, ROUTE, SERVICE, Make, make, ready  # noqa: F401

from safeship.errors import PermanentError
from safeship.kube import objects

HTTPROUTE = "gateway.networking.k8s.io/v1"


def route(parent: dict[str, Any], hostnames: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [parent],
                            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": HTTPROUTE, "kind": "HTTPRoute", "metadata": {"name": "web"}, "spec": spec}


def accepted(kube_api: ApiHandle) -> tuple[str, str]:
    stored = kube_api.read(HTTPROUTE, "HTTPRoute", "web")
    assert stored is not None
    [parent] = stored["status"]["parents"]
    condition = next(c for c in parent["conditions"] if c["type"] == "Accepted")
    return condition["status"], condition["reason"]


async def test_a_route_is_accepted_only_by_a_gateway_whose_listeners_admit_it(kube_api: ApiHandle,
                                                                             cluster_sim: ClusterSim) -> None:
    kube_api.write({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    kube_api.write(route({"name": "public", "namespace": "gateway"}))
    await cluster_sim.tick()
    assert accepted(kube_api) == ("False", "NoMatchingParent")  # no such Gateway

    put_gateway(kube_api.emulator, "public", "gateway")  # allowedRoutes from: Same, the default
    await cluster_sim.tick()
    assert accepted(kube_api) == ("False", "NotAllowedByListeners")  # the route is in another namespace

    kube_api.emulator.ensure_namespace("gateway")
    put_gateway(kube_api.emulator, "public", "gateway", allowed_from="Selector", selector={"shared-gateway": "yes"})
    await cluster_sim.tick()
    assert accepted(kube_api) == ("False", "NotAllowedByListeners")  # the namespace lacks the label
    namespace = kube_api.read("v1", "Namespace", kube_api.namespace, None)
    assert namespace is not None
    namespace["metadata"].setdefault("labels", {})["shared-gateway"] = "yes"
    kube_api.write(namespace)
    await cluster_sim.tick()
    assert accepted(kube_api) == ("True", "Accepted")

    put_gateway(kube_api.emulator, "public", "gateway", allowed_from="All", hostname="*.example.com")
    kube_api.write({**route({"name": "public", "namespace": "gateway"}, ["shop.example.org"]),
                    "metadata": kube_api.read(HTTPROUTE, "HTTPRoute", "web")["metadata"]})  # type: ignore[index]
    await cluster_sim.tick()
    assert accepted(kube_api) == ("False", "NoMatchingListenerHostname")

    kube_api.write({**route({"name": "public", "namespace": "gateway", "sectionName": "https"}, ["a.example.com"]),
                    "metadata": kube_api.read(HTTPROUTE, "HTTPRoute", "web")["metadata"]})  # type: ignore[index]
    await cluster_sim.tick()
    assert accepted(kube_api) == ("False", "NoMatchingParent")  # no listener named https
    kube_api.write({**route({"name": "public", "namespace": "gateway", "sectionName": "http"}, ["a.example.com"]),
                    "metadata": kube_api.read(HTTPROUTE, "HTTPRoute", "web")["metadata"]})  # type: ignore[index]
    await cluster_sim.tick()
    assert accepted(kube_api) == ("True", "Accepted")


async def test_the_router_stops_on_a_gateway_that_does_not_admit_its_route(kube_api: ApiHandle, cluster_sim: Any,
                                                                            make: Make) -> None:  # noqa: F811
    router, platform = make("gateway-api")
    # the Gateway lives elsewhere and admits only its own namespace's routes
    put_gateway(kube_api.emulator, "public", kube_api.namespace, allowed_from="Selector",
                selector={"kubernetes.io/metadata.name": "elsewhere"})
    await ready(platform, cluster_sim, {"v1": 1})
    await router.set_backends(ROUTE, "v1", BACKEND)
    async with cluster_sim.running():
        with pytest.raises(PermanentError, match="the Gateway refused HTTPRoute user-service: NotAllowedByListeners"):
            await router.set_weights(ROUTE, {"v1": 100})
    assert router.weights_reached(ROUTE) == {}


async def test_a_deleted_namespace_is_emptied_by_the_namespace_controller(kube_api: ApiHandle,
                                                                         cluster_sim: ClusterSim) -> None:
    kube_api.emulator.ensure_namespace("temp")
    kube_api.write({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "temp"},
                    "data": {"a": "b"}})
    async with kube_api.client() as kube:
        await kube.delete("v1", "Namespace", "temp")
        terminating = await kube.get("v1", "Namespace", "temp")
        assert terminating is not None and terminating["status"]["phase"] == "Terminating"
        assert await kube.get("v1", "ConfigMap", "settings", "temp") is not None
        await cluster_sim.tick()
        assert await kube.get("v1", "Namespace", "temp") is None
    assert kube_api.emulator.read("v1", "ConfigMap", "settings", "temp") is None


async def test_istio_writes_no_observed_generation_by_default(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    # Istio reports status only with PILOT_ENABLE_STATUS (off by default): the router must not wait for it.
    kube_api.write({"apiVersion": objects.ISTIO_API, "kind": "VirtualService", "metadata": {"name": "web"},
                    "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}})
    await cluster_sim.tick(3)
    stored = kube_api.read(objects.ISTIO_API, "VirtualService", "web")
    assert stored is not None and "observedGeneration" not in (stored.get("status") or {})
    cluster_sim.istio_status = True
    await cluster_sim.tick()
    stored = kube_api.read(objects.ISTIO_API, "VirtualService", "web")
    assert stored is not None and stored["status"]["observedGeneration"] == 1
