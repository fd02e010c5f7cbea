"""A HorizontalPodAutoscaler per version (`services.<name>.autoscaling`): targeting that version's
Deployment, applied while the version has pods, deleted when it is scaled to 0, granted to the
deployer's Role, and refused where an autoscaler would change a split made of pod counts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from emulator import ApiHandle
from test_kube_config import refused, write

from safeship.clock import RealClock
from safeship.config.loader import load_config
from safeship.config.models import SafeshipConfig
from safeship.kube import objects
from safeship.kube.environment import deployer_rules
from safeship.platforms import platform_class
from safeship.platforms.base import InstanceSpec, MemoryLedger, PlatformSetup
from safeship.platforms.kubernetes import KubernetesPlatform

SERVICE = "user-service"
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
SCALING = {"min_replicas": 2, "max_replicas": 6, "target_cpu": 70}


def make_config(kube_api: ApiHandle, autoscaling: dict[str, Any] | None = SCALING) -> SafeshipConfig:
    env = {"name": "production", "platform": "kubernetes", "cluster": kube_api.context, "router": "gateway-api",
           "gateway": {"name": "public"}, "kubeconfig": str(kube_api.kubeconfig), "namespace": kube_api.namespace}
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [env]},
        "services": {SERVICE: {"image": "registry.example/user-service:{version}", "replicas": 2,
                               "container_port": 8080, "autoscaling": autoscaling}},
    })


@pytest_asyncio.fixture
async def platform(kube_api: ApiHandle, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    config = make_config(kube_api)
    environment = config.environment("production")
    assert environment is not None
    made = platform_class("kubernetes").create(PlatformSetup(
        state_dir=tmp_path, ledger=MemoryLedger(), clock=RealClock(), config=config, environment=environment))
    assert isinstance(made, KubernetesPlatform)
    try:
        yield made
    finally:
        await made.close()


async def scale(platform: KubernetesPlatform, version: str, replicas: int) -> None:
    await platform.scale(SERVICE, "production", version, replicas,
                         lambda i: InstanceSpec(service=SERVICE, environment="production", version=version, index=i),
                         drain=0.0)


def autoscalers(kube_api: ApiHandle) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kube_api.items(*HPA)}


async def test_each_version_gets_its_own_autoscaler_while_it_has_pods(kube_api: ApiHandle,
                                                                      platform: KubernetesPlatform) -> None:
    old, new = objects.deployment_name(SERVICE, "v1.0.0"), objects.deployment_name(SERVICE, "v1.1.0")
    await scale(platform, "v1.0.0", 2)
    made = autoscalers(kube_api)
    assert list(made) == [old]
    spec = made[old]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": old}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    assert made[old]["metadata"]["annotations"][objects.VERSION_ANNOTATION] == "v1.0.0"
    await scale(platform, "v1.1.0", 2)
    assert sorted(autoscalers(kube_api)) == sorted([old, new])
    # the old version leaves: its autoscaler goes with it, its Deployment stays (at 0) for a rollback
    await scale(platform, "v1.0.0", 0)
    assert list(autoscalers(kube_api)) == [new]
    kept = kube_api.read("apps/v1", "Deployment", old)
    assert kept is not None and kept["spec"]["replicas"] == 0
    # a rollback scales it up again, and its autoscaler comes back
    await scale(platform, "v1.0.0", 2)
    assert sorted(autoscalers(kube_api)) == sorted([old, new])


async def test_without_autoscaling_no_autoscaler_is_made_or_granted(kube_api: ApiHandle) -> None:
    config = make_config(kube_api, autoscaling=None)
    environment = config.environment("production")
    assert environment is not None
    assert objects.autoscaler(config, environment, SERVICE, "v1.0.0") is None
    assert not any("horizontalpodautoscalers" in r["resources"] for r in deployer_rules(environment, config))
    scaled = make_config(kube_api)
    assert {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
            "verbs": ["create", "patch", "delete"]} in deployer_rules(environment, scaled)
    rendered = objects.workload_objects(scaled, environment, SERVICE, "v1.0.0", strategy="canary")
    assert [o["kind"] for o in rendered if o["kind"] == "HorizontalPodAutoscaler"] == ["HorizontalPodAutoscaler"]


def test_autoscaling_is_refused_with_the_replicas_router(tmp_path: Path) -> None:
    error = refused(write(tmp_path, autoscaling=SCALING))  # router: replicas by default
    assert error.field == "services.user-service.autoscaling"
    assert "router 'replicas'" in error.detail and "would change" in error.detail
    gateway = {"router": "gateway-api", "gateway": {"name": "public"}}
    assert load_config(write(tmp_path, environment=gateway, autoscaling=SCALING)).services[
        "user-service"].autoscaling is not None


@pytest.mark.parametrize(("service", "field", "words"), [
    ({"autoscaling": {"min_replicas": 4, "max_replicas": 3}}, "services.user-service.autoscaling.min_replicas",
     "must not be more than max_replicas (3), got 4"),
    ({"replicas": 8, "autoscaling": {"min_replicas": 2, "max_replicas": 6}}, "services.user-service.replicas",
     "between min_replicas (2) and max_replicas (6); choose a count in that range, got 8"),
])
def test_autoscaling_bounds_are_checked(tmp_path: Path, service: dict[str, Any], field: str, words: str) -> None:
    gateway = {"router": "gateway-api", "gateway": {"name": "public"}}
    error = refused(write(tmp_path, environment=gateway, **service))
    assert error.field == field and words in error.detail
