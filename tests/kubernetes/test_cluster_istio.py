"""The istio router as a real mesh needs it: a VirtualService bound to the configured gateways (so
ingress traffic follows the weights), per-version Services (so a client outside the mesh never
gets a split by pod count), the namespace labelled into the mesh, and `--validate` saying when pods
would not join it.

Istio's semantics, from its API reference (istio.io/latest/docs/reference/config/networking/
virtual-service/, field `gateways`): "The names of gateways and sidecars that should apply these
routes. [...] The reserved word `mesh` is used to imply all the sidecars in the mesh. When this
field is omitted, the default gateway (`mesh`) will be used". So a VirtualService without
`gateways` is not applied by an ingress gateway at all, and that traffic goes by the Kubernetes
Service alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emulator import ApiHandle
from test_kube_environment import failed, on_cluster, root, store  # noqa: F401
from test_kube_routers import BACKEND, ROUTE, SERVICE, Make, make, ready  # noqa: F401

from safeship.kube import objects
from safeship.kube.environment import namespace
from safeship.store import Store

GATEWAY = "istio-system/public"


def ingress_split(kube_api: ApiHandle, gateway: str, host: str) -> dict[str, float]:
    """Percent of the requests an Istio ingress gateway sends to each version for `host`: by the
    VirtualService's weights when it binds that gateway and host, else by the Kubernetes Service
    named as the host's first label (its ready pods, evenly)."""

    def pods_of(service_name: str) -> dict[str, int]:
        service = kube_api.read("v1", "Service", service_name)
        found: dict[str, int] = {}
        for pod in kube_api.items("v1", "Pod", labels=service["spec"]["selector"]) if service else []:
            version = objects.object_version(pod)
            if version is not None and objects.pod_ready(pod):
                found[version] = found.get(version, 0) + 1
        return found

    virtual = kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    spec = (virtual or {}).get("spec") or {}
    shares: dict[str, float] = {}
    if gateway in (spec.get("gateways") or ["mesh"]) and host in spec.get("hosts", []):
        for route in spec["http"][0]["route"]:
            pods = pods_of(route["destination"]["host"])
            for version, count in pods.items():
                shares[version] = shares.get(version, 0.0) + route["weight"] * count / sum(pods.values())
    else:
        pods = pods_of(host.split(".")[0])
        shares = {v: 100.0 * n / sum(pods.values()) for v, n in pods.items()}
    return {v: round(s, 1) for v, s in shares.items() if s}


async def test_ingress_traffic_follows_the_weights_through_the_named_gateway(
        kube_api: ApiHandle, cluster_sim: Any, make: Make) -> None:  # noqa: F811
    router, platform = make("istio")
    environment = router.environment.model_copy(update={"istio": router.environment.istio.model_copy(
        update={"gateways": ["mesh", GATEWAY], "hosts": ["{service}.example.com"]})})
    router.environment = environment
    await ready(platform, cluster_sim, {"v1": 2, "v2": 1})
    await router.set_backends(ROUTE, "v1", BACKEND)
    await router.set_weights(ROUTE, {"v1": 100})
    await router.set_backends(ROUTE, "v2", BACKEND)
    await router.set_weights(ROUTE, {"v1": 95, "v2": 5})

    virtual = kube_api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    assert virtual is not None
    assert virtual["spec"]["gateways"] == ["mesh", GATEWAY]
    assert virtual["spec"]["hosts"] == [SERVICE, f"{SERVICE}.example.com"]
    # 2 pods of v1 and 1 of v2: by pod count the "5%" step would be 33%
    assert ingress_split(kube_api, GATEWAY, f"{SERVICE}.example.com") == {"v1": 95.0, "v2": 5.0}
    assert ingress_split(kube_api, "mesh", SERVICE) == {"v1": 95.0, "v2": 5.0}
    # a client that bypasses the mesh reaches the stable version only
    assert ingress_split(kube_api, "istio-system/other", f"{SERVICE}.example.com") == {"v1": 100.0}


def test_the_namespace_joins_the_mesh(kube_api: ApiHandle, tmp_path: Path) -> None:
    sidecar = on_cluster(kube_api, tmp_path, None, router="istio", gateway=None)  # type: ignore[arg-type]
    labels = namespace(sidecar.config, sidecar.environment)["metadata"]["labels"]
    assert labels["istio-injection"] == "enabled" and "istio.io/dataplane-mode" not in labels
    ambient = on_cluster(kube_api, tmp_path, None, router="istio", gateway=None,  # type: ignore[arg-type]
                         istio={"mode": "ambient"})
    labels = namespace(ambient.config, ambient.environment)["metadata"]["labels"]
    assert labels["istio.io/dataplane-mode"] == "ambient" and "istio-injection" not in labels
    gateway = on_cluster(kube_api, tmp_path, None)  # type: ignore[arg-type]
    labels = namespace(gateway.config, gateway.environment)["metadata"]["labels"]
    assert "istio-injection" not in labels and "istio.io/dataplane-mode" not in labels


async def test_validate_says_when_pods_would_not_join_the_mesh(kube_api: ApiHandle, root: Path,  # noqa: F811
                                                               store: Store) -> None:  # noqa: F811
    environment = on_cluster(kube_api, root, store, router="istio", gateway=None)
    await environment.prepare()
    # prepared: injection is on, but `restricted` refuses istio-init without the Istio CNI agent
    # (k8s.io/pod-security-admission/policy/check_capabilities_restricted.go: "must set
    # securityContext.capabilities.drop=[\"ALL\"]"; check_capabilities_baseline.go refuses NET_ADMIN)
    bad = failed(await environment.validate())
    assert list(bad) == ["mesh"]
    assert "refuses the istio-init container" in bad["mesh"] and "istio-cni-node" in bad["mesh"]
    kube_api.ensure_namespace("istio-system")
    kube_api.write({"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "metadata": {"name": "istio-cni-node", "namespace": "istio-system"},
                    "spec": {"selector": {"matchLabels": {"k8s-app": "istio-cni-node"}},
                             "template": {"metadata": {"labels": {"k8s-app": "istio-cni-node"}},
                                          "spec": {"containers": [{"name": "install-cni", "image": "istio/cni"}]}}}})
    checks = await environment.validate()
    assert failed(checks) == {}
    assert {c.name: c.detail for c in checks}["mesh"] == "pods join the Istio mesh (sidecar)"
    # a namespace someone took the label off
    async with kube_api.client() as kube:
        await kube.patch("v1", "Namespace", "prod", {"metadata": {"labels": {"istio-injection": None}}})
    bad = failed(await environment.validate())
    assert list(bad) == ["mesh"] and "neither istio-injection=enabled nor istio.io/rev" in bad["mesh"]
