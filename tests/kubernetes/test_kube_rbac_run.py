"""The deployment engine runs as the ServiceAccount `safeship-deployer` with nothing but the Role
`--prepare` gives it: every request it makes in a canary (with a PodDisruptionBudget and an
autoscaler per version) is authorized by RBAC in the stand-in cluster, and the Role grants nothing
the code never asks for beyond the few calls a canary does not make (listed below, each with the
code that makes it).

Refusals use the API server's words, k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/
errors.go (forbiddenMessage): `User %q cannot %s resource %q in API group %q in the namespace %q`,
inside apierrors.NewForbidden's `%s %q is forbidden: %v`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from clustersim import put_gateway
from emulator import ApiHandle, write_kubeconfig
from test_cluster_canary import STEPS, ClusterTraffic, RecordingPolicy
from test_kube_strategies import Rig, config_data

from safeship.clock import RealClock, VirtualClock
from safeship.config.models import DeploymentStrategy, SafeshipConfig
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.errors import PermanentError
from safeship.kube.client import KubeClient
from safeship.kube.environment import deployer_rules, role, role_binding, service_account
from safeship.platforms.kubernetes import KubernetesPlatform
from safeship.routing import router_class
from safeship.store import Store

TOKEN = "deployer-token"
# Granted, and made by the code, but not in a canary that succeeds:
NOT_IN_A_CANARY = {
    ("delete", "pods", ""),  # KubernetesPlatform.stop: stopping one instance
    ("patch", "poddisruptionbudgets", "policy"),  # apply of a budget that already exists
    ("delete", "httproutes", "gateway.networking.k8s.io"),  # KubernetesRouter.remove_route
    ("delete", "virtualservices", "networking.istio.io"),  # the same, router istio
    ("delete", "destinationrules", "networking.istio.io"),  # the same: what earlier versions made
}


def deployer(kube_api: ApiHandle, tmp_path: Path, router: str) -> SafeshipConfig:
    """The config with the deployer's kubeconfig, and the Role, RoleBinding and ServiceAccount
    `--prepare` applies, written by the cluster's admin."""
    kubeconfig = write_kubeconfig(tmp_path / "deployer.kubeconfig", kube_api.url, kube_api.context,
                                  kube_api.namespace, token=TOKEN)
    kube_api.emulator.tokens[TOKEN] = f"system:serviceaccount:{kube_api.namespace}:safeship-deployer"
    data = config_data(kube_api, router)
    data["intelligent_deployment"]["strategies"]["canary"]["traffic_percentages"] = STEPS
    data["environment_management"]["environments"][0]["kubeconfig"] = str(kubeconfig)
    data["services"]["user-service"]["pod"] = {"min_available": 1}
    data["services"]["user-service"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 4}
    config = SafeshipConfig.model_validate(data)
    environment = config.environment("production")
    assert environment is not None
    for obj in (service_account(environment), role(config, environment), role_binding(environment)):
        kube_api.write(obj)
    return config


@pytest.mark.parametrize("router", ["gateway-api", "istio"])
async def test_a_canary_runs_with_only_the_deployers_role(kube_api: ApiHandle, cluster_sim: Any, tmp_path: Path,
                                                          router: str) -> None:
    config = deployer(kube_api, tmp_path, router)
    environment = config.environment("production")
    assert environment is not None
    if router == "gateway-api":
        put_gateway(kube_api.emulator, "public", kube_api.namespace)
    platform = KubernetesPlatform(config, environment)
    steering = router_class(router)(config, environment, clock=RealClock(), wait_s=30.0, poll_s=0.05)
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        policy = RecordingPolicy()
        engine = DeploymentEngine(config, store, World(platform, steering, VirtualClock(1_000_000.0),
                                                       traffic_source=ClusterTraffic(kube_api, router)),
                                  policy_for=lambda _name: policy)
        rig = Rig(kube_api, cluster_sim, config, engine, store, engine.world.clock, None)  # type: ignore[arg-type]
        async with cluster_sim.running():
            first = await rig.deploy("v1", None)
            assert first.phase == Phase.SUCCEEDED.value, first.reason
            record = await rig.deploy("v2", DeploymentStrategy.CANARY)
        assert record.phase == Phase.SUCCEEDED.value, record.reason
    finally:
        await steering.close()
        await platform.close()
        store.close()
        await asyncio.sleep(0)
    made = kube_api.emulator.authorized
    assert made and all(user.endswith(":safeship-deployer") for user, *_ in made)
    assert [m for m in made if not m[4]] == []  # nothing it asked for was refused
    used = {(verb, resource, group) for _, verb, resource, group, _ in made}
    granted = {(verb, resource, group) for rule in deployer_rules(environment, config)
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert used <= granted
    assert granted - used <= NOT_IN_A_CANARY, sorted(granted - used)  # nothing granted that no code asks for
    # the autoscaler came and went with each version: v1's is gone (scaled to 0), v2's is there
    assert [o["metadata"]["annotations"]["safeship.io/version"]
            for o in kube_api.items("autoscaling/v2", "HorizontalPodAutoscaler")] == ["v2"]


async def test_what_the_role_does_not_grant_is_refused_with_the_api_servers_message(kube_api: ApiHandle,
                                                                                  tmp_path: Path) -> None:
    deployer(kube_api, tmp_path, "gateway-api")
    async with KubeClient.from_kubeconfig(str(tmp_path / "deployer.kubeconfig"), context=kube_api.context,
                                          namespace=kube_api.namespace) as kube:
        assert await kube.list("apps/v1", "Deployment") == []  # granted
        with pytest.raises(PermanentError) as refused:
            await kube.get("v1", "Secret", "user-service-secrets")
        assert ('secrets "user-service-secrets" is forbidden: User "system:serviceaccount:test:safeship-deployer" '
                'cannot get resource "secrets" in API group "" in the namespace "test"') in str(refused.value)
        with pytest.raises(PermanentError) as refused:
            await kube.list("apps/v1", "Deployment", namespace="default")  # another namespace
        assert ('deployments.apps is forbidden: User "system:serviceaccount:test:safeship-deployer" cannot list '
                'resource "deployments" in API group "apps" in the namespace "default"') in str(refused.value)
