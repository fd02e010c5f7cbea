"""The stand-in API server admits pods and answers access reviews as a real one does.

The messages are the real ones, quoted with the upstream source they come from:

- Pod Security, k8s.io/pod-security-admission/admission/admission.go (`violates PodSecurity %q:
  %s`, the failed checks' `reason (detail)` joined by ", ") inside apierrors.NewForbidden
  (k8s.io/apimachinery/pkg/api/errors/errors.go: `%s %q is forbidden: %v`); the checks'
  words from k8s.io/pod-security-admission/policy/check_allowPrivilegeEscalation.go
  ("allowPrivilegeEscalation != false", `container %q must set
  securityContext.allowPrivilegeEscalation=false`), check_capabilities_restricted.go ("unrestricted
  capabilities", `must set securityContext.capabilities.drop=["ALL"]`), check_runAsNonRoot.go
  ("runAsNonRoot != true", `pod or container %q must set securityContext.runAsNonRoot=true`),
  check_seccompProfile_restricted.go ("seccompProfile", `pod or container %q must set
  securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"`) and check_privileged.go
  ("privileged", `container %q must not set securityContext.privileged=true`). A real API server
  answers, for the first pod below in a `restricted` namespace:

      pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation
      != false (container "app" must set securityContext.allowPrivilegeEscalation=false),
      unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"]),
      runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true),
      seccompProfile (pod or container "app" must set securityContext.seccompProfile.type to
      "RuntimeDefault" or "Localhost")

- ResourceQuota, k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go: `exceeded
  quota: %s, requested: %s, used: %s, limited: %s` (only the exceeded resources, prettyPrint's
  sorted `name=quantity` joined by ","), and `failed quota: %s: must specify %s`.
- Access reviews, k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac/rbac.go (`RBAC: allowed by %s`)
  with pkg/registry/rbac/validation/rule.go's describer (`RoleBinding %q of %s %q to %s`, the
  binding as `<name>/<namespace>`, a ServiceAccount subject as `ServiceAccount "<name>/<namespace>"`);
  a request no rule allows gets no opinion: `allowed: false`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clustersim import ClusterSim
from emulator import ApiHandle
from test_kube_platform import SERVICE, make_config, scale

from safeship.clock import RealClock
from safeship.errors import PermanentError
from safeship.kube import objects
from safeship.platforms import platform_class
from safeship.platforms.base import InstanceState, MemoryLedger, PlatformSetup

RBAC = "rbac.authorization.k8s.io/v1"
DEPLOYER = "system:serviceaccount:test:safeship-deployer"


def bare_pod(name: str, *, cpu: str = "100m", memory: str = "64Mi", **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                                     "resources": {"requests": {"cpu": cpu, "memory": memory}}, **container}]}}


def restricted_pod(name: str, **resources: str) -> dict[str, Any]:
    pod = bare_pod(name, **resources, securityContext={"allowPrivilegeEscalation": False,
                                                       "capabilities": {"drop": ["ALL"]}})
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    return pod


def label(kube_api: ApiHandle, level: str) -> None:
    kube_api.emulator.patch_object("v1", "Namespace", kube_api.namespace,
                                   {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}})


async def create(kube_api: ApiHandle, obj: dict[str, Any]) -> None:
    async with kube_api.client() as kube:
        await kube.create(obj)


async def test_restricted_pod_security_refuses_a_bare_pod_with_the_api_servers_message(kube_api: ApiHandle) -> None:
    label(kube_api, "restricted")
    with pytest.raises(PermanentError) as refused:
        await create(kube_api, bare_pod("bare"))
    assert (
        'pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
        '(container "app" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(container "app" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or '
        'container "app" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "app" '
        'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
    ) in str(refused.value)
    assert kube_api.items("v1", "Pod") == []
    root = restricted_pod("root")
    root["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(PermanentError, match=r"runAsUser=0 \(pod must not set runAsUser=0\)"):
        await create(kube_api, root)
    await create(kube_api, restricted_pod("fine"))  # what restricted asks for is admitted
    assert [p["metadata"]["name"] for p in kube_api.items("v1", "Pod")] == ["fine"]


async def test_baseline_refuses_privileged_and_admits_the_rest(kube_api: ApiHandle) -> None:
    label(kube_api, "baseline")
    with pytest.raises(PermanentError) as refused:
        await create(kube_api, bare_pod("priv", securityContext={"privileged": True}))
    assert ('pods "priv" is forbidden: violates PodSecurity "baseline:latest": privileged (container "app" must '
            "not set securityContext.privileged=true)") in str(refused.value)
    await create(kube_api, bare_pod("plain"))  # baseline does not ask for runAsNonRoot or seccomp
    label(kube_api, "privileged")
    await create(kube_api, bare_pod("priv", securityContext={"privileged": True}))


async def test_safeships_own_pods_pass_restricted(kube_api: ApiHandle, tmp_path: Path) -> None:
    label(kube_api, "restricted")
    config = make_config(kube_api)
    environment = config.environment("production")
    assert environment is not None
    deployment = objects.deployment(config, environment, SERVICE, "v1.0.0", replicas=1)
    template = deployment["spec"]["template"]
    await create(kube_api, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "as-rendered",
                            "labels": template["metadata"]["labels"]}, "spec": template["spec"]})


async def test_quota_refuses_what_exceeds_it_with_the_api_servers_message(kube_api: ApiHandle) -> None:
    kube_api.write({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"},
                    "spec": {"hard": {"pods": "3", "requests.cpu": "1", "requests.memory": "1Gi"}}})
    await create(kube_api, bare_pod("a", cpu="600m", memory="256Mi"))
    with pytest.raises(PermanentError) as refused:
        await create(kube_api, bare_pod("b", cpu="500m", memory="256Mi"))
    assert ('pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: '
            "requests.cpu=600m, limited: requests.cpu=1") in str(refused.value)
    await create(kube_api, bare_pod("b", cpu="400m", memory="768Mi"))  # exactly at the limits: admitted
    await create(kube_api, bare_pod("c", cpu="0", memory="0"))  # the third pod fits by count
    with pytest.raises(PermanentError) as refused:
        await create(kube_api, bare_pod("d", cpu="0", memory="0"))
    assert ('pods "d" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=3, limited: pods=3'
            in str(refused.value))
    assert sorted(p["metadata"]["name"] for p in kube_api.items("v1", "Pod")) == ["a", "b", "c"]


async def test_quota_asks_every_pod_to_name_its_requests(kube_api: ApiHandle) -> None:
    kube_api.write({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"},
                    "spec": {"hard": {"requests.cpu": "1", "requests.memory": "1Gi"}}})
    unnamed = bare_pod("unnamed")
    del unnamed["spec"]["containers"][0]["resources"]
    with pytest.raises(PermanentError) as refused:
        await create(kube_api, unnamed)
    assert ('pods "unnamed" is forbidden: failed quota: compute: must specify requests.cpu,requests.memory'
            in str(refused.value))


@pytest.mark.cluster_sim(tick_seconds=60.0)  # a minute of cluster time per tick: the deadline comes soon
async def test_a_pod_over_quota_is_reported_and_fails_the_version_at_its_deadline(
        kube_api: ApiHandle, cluster_sim: ClusterSim, tmp_path: Path) -> None:
    # the replica set controller cannot create the pod (replica_set.go manageReplicas), says so in
    # ReplicaFailure/FailedCreate, and the Deployment carries it (deployment/progress.go). Kubernetes
    # keeps retrying, since a quota may free up; the progress deadline is the verdict, and the
    # platform's failure then names the refusal.
    kube_api.write({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"},
                    "spec": {"hard": {"pods": "1"}}})
    config = make_config(kube_api)
    environment = config.environment("production")
    assert environment is not None
    platform = platform_class("kubernetes").create(PlatformSetup(
        state_dir=tmp_path, ledger=MemoryLedger(), clock=RealClock(), config=config, environment=environment))
    name = objects.deployment_name(SERVICE, "v1.0.0")
    try:
        await scale(platform, "v1.0.0", 2)  # type: ignore[arg-type]
        await cluster_sim.tick(3)
        deployment = kube_api.read("apps/v1", "Deployment", name)
        assert deployment is not None
        conditions = {c["type"]: c for c in deployment["status"]["conditions"]}
        assert conditions["ReplicaFailure"]["reason"] == "FailedCreate"
        assert "exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1" in \
            conditions["ReplicaFailure"]["message"]
        assert len(kube_api.items("v1", "Pod")) == 1
        assert not objects.rollout(deployment).failed and objects.rollout(deployment).refusal.startswith(
            'FailedCreate: pods "user-service-')
        instances = await platform.instances(SERVICE, "production")
        assert [i.state for i in instances] == [InstanceState.READY]  # still waiting: not failed yet
        deadline = int(deployment["spec"]["progressDeadlineSeconds"])
        await cluster_sim.tick(deadline // 60 + 3)
        instances = await platform.instances(SERVICE, "production")
        failed = [i for i in instances if i.state is InstanceState.FAILED]
        assert len(failed) == 1 and (failed[0].last_failure or "").startswith(
            "ProgressDeadlineExceeded; FailedCreate: pods ")
        assert "exceeded quota: compute" in (failed[0].last_failure or "")
        # room again: the pod is created, the condition goes
        kube_api.emulator.patch_object("v1", "ResourceQuota", "compute", {"spec": {"hard": {"pods": "5"}}},
                                       kube_api.namespace)
        await cluster_sim.tick(4)
        deployment = kube_api.read("apps/v1", "Deployment", name)
        assert deployment is not None
        assert "ReplicaFailure" not in {c["type"] for c in deployment["status"]["conditions"]}
        assert len(kube_api.items("v1", "Pod")) == 2
    finally:
        await platform.close()


def test_a_template_pod_security_refuses_fails_the_version_at_once() -> None:
    # what the simulator writes (and the deployment controller): no retry admits this template
    message = ('pods "web-6f7c9-abcde" is forbidden: violates PodSecurity "restricted:latest": privileged '
               '(container "app" must not set securityContext.privileged=true)')
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 2},
                  "status": {"observedGeneration": 1, "conditions": [
                      {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message,
                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    progress = objects.rollout(deployment)
    assert progress.failed and progress.reason == objects.FAILED_CREATE
    assert progress.message == f"FailedCreate: {message}"
    over_quota = {**deployment, "status": {**deployment["status"], "conditions": [
        {**deployment["status"]["conditions"][0], "message": 'pods "x" is forbidden: exceeded quota: q, '
                                                              "requested: pods=1, used: pods=1, limited: pods=1"}]}}
    assert not objects.rollout(over_quota).failed  # a quota may free up: the deadline decides


async def test_subject_access_reviews_follow_the_roles_that_exist(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        # no Role, no binding: a real API server has no opinion, so the answer is no
        assert not await kube.can_i("list", "pods", namespace="test", user=DEPLOYER)
        await kube.create({"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "reader", "namespace": "test"},
                           "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                                     {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"],
                                      "resourceNames": ["web"]}]})
        assert not await kube.can_i("list", "pods", namespace="test", user=DEPLOYER)  # a Role bound to no one
        await kube.create({"apiVersion": RBAC, "kind": "RoleBinding",
                           "metadata": {"name": "deployer-reads", "namespace": "test"},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                           "subjects": [{"kind": "ServiceAccount", "name": "safeship-deployer",
                                         "namespace": "test"}]})
        assert await kube.can_i("list", "pods", namespace="test", user=DEPLOYER)
        assert not await kube.can_i("delete", "pods", namespace="test", user=DEPLOYER)  # another verb
        assert not await kube.can_i("list", "pods", namespace="default", user=DEPLOYER)  # another namespace
        assert not await kube.can_i("list", "pods", namespace="test",
                                    user="system:serviceaccount:test:someone-else")
        assert not await kube.can_i("get", "deployments", group="apps", namespace="test", user=DEPLOYER)  # no name
    allowed, reason = kube_api.emulator.rbac_decision(DEPLOYER, [], "list", "pods", "", "test")
    assert allowed and reason == ('RBAC: allowed by RoleBinding "deployer-reads/test" of Role "reader" to '
                                  'ServiceAccount "safeship-deployer/test"')
    assert kube_api.emulator.rbac_decision(DEPLOYER, [], "get", "deployments", "apps", "test", "web")[0]
    # a ClusterRole bound cluster-wide to every ServiceAccount (through its group) reaches any namespace
    kube_api.write({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "view-services"},
                    "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]})
    kube_api.write({"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "all-sa-view"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "view-services"},
                    "subjects": [{"kind": "Group", "name": "system:serviceaccounts",
                                  "apiGroup": "rbac.authorization.k8s.io"}]})
    async with kube_api.client() as kube:
        assert await kube.can_i("get", "services", namespace="default", user=DEPLOYER)
        assert not await kube.can_i("get", "services", namespace="default", user="jane")  # not a ServiceAccount
