"""environment-manager on a cluster: prepare, validate and cleanup against the `kube_api` emulator
(real HTTP through the real client; every object the emulator stores passed `validate_object`).

What a user observes is asserted: the objects in the API server, the checks printed, the exit
code, the rows in the store."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import ApiHandle, write_kubeconfig

from safeship.cli import environment_manager
from safeship.config.models import SafeshipConfig
from safeship.environments.kubernetes import KubernetesEnvironment
from safeship.environments.manager import Check
from safeship.errors import ConflictError
from safeship.kube.objects import deployment_name, workload_objects
from safeship.store import DeploymentRecord, EventRecord, Store

SECRET = "planted-s3cret-value-5e7a"
MANAGED = {"app.kubernetes.io/managed-by": "safeship"}


def config_data(kube_api: ApiHandle, **environment: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "name": "production", "type": "production", "platform": "kubernetes",
        "cluster": kube_api.context, "kubeconfig": str(kube_api.kubeconfig), "namespace": "prod",
        "router": "gateway-api", "gateway": {"name": "public", "namespace": "gateway"},
        "ingress_namespace": "gateway",
        "resource_quotas": {"cpu": "4", "memory": "8Gi"},
        "config_maps": {"app-settings": {"FEATURE_X": "on"}},
    }
    env.update(environment)
    return {
        "environment_management": {
            "environments": [env],
            "security_policies": [
                {"name": "pod-security-policy", "type": "PodSecurityPolicy",
                 "rules": [{"apiGroups": ["policy"], "resources": ["podsecuritypolicies"], "verbs": ["use"],
                            "resourceNames": ["restricted"]}]},
                {"name": "read-leases", "type": "Role",
                 "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]},
            ],
        },
        "services": {"user-service": {
            "criticality": "high", "replicas": 2, "image": "registry.example/user-service:{version}",
            "resources": {"cpu": "250m", "memory": "128Mi"}, "secrets": ["DB_PASSWORD"],
            "volumes": [{"name": "cache", "size": "1Gi", "mount_path": "/cache",
                         "access_mode": "ReadWriteMany"}],
        }},
        "store": {"url": f"sqlite:///{kube_api.kubeconfig.parent / 'state.db'}"},
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets" / "production"
    folder.mkdir(parents=True)
    (folder / "DB_PASSWORD").write_text(SECRET + "\n")
    (folder / "DB_PASSWORD").chmod(0o600)
    return tmp_path


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield opened
    finally:
        opened.close()


def on_cluster(kube_api: ApiHandle, root: Path, store: Store, **environment: Any) -> KubernetesEnvironment:
    config = SafeshipConfig.model_validate(config_data(kube_api, **environment))
    [env] = config.environment_management.environments
    return KubernetesEnvironment(config, env, root=root, store=store)


def failed(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def names(kube_api: ApiHandle, api_version: str, kind: str, namespace: str = "prod") -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube_api.items(api_version, kind, namespace))


def history(store: Store) -> None:
    now = time.time()
    store.create_deployment(DeploymentRecord(
        id="deploy-0001", service="user-service", environment="production", version="v1.2.0", from_version=None,
        strategy="rolling", strategy_reason="test", policy="safeship", phase="succeeded", step_index=0, plan=[],
        status={}, request={}, created_at=now, updated_at=now, phase_started_at=now, step_started_at=now,
        finished_at=now), [EventRecord("deploy-0001", now, "created", "deploy user-service v1.2.0")])


async def test_prepare_creates_the_environment(kube_api: ApiHandle, root: Path, store: Store) -> None:
    checks = await on_cluster(kube_api, root, store).prepare()
    assert failed(checks) == {}
    namespace = kube_api.read("v1", "Namespace", "prod", None)
    assert namespace is not None
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["app.kubernetes.io/managed-by"] == "safeship"
    assert names(kube_api, "v1", "ResourceQuota") == ["safeship-quota"]
    quota = kube_api.read("v1", "ResourceQuota", "safeship-quota", "prod")
    assert quota is not None and quota["spec"]["hard"]["requests.cpu"] == "4000m"
    assert names(kube_api, "v1", "LimitRange") == ["safeship-limits"]
    assert names(kube_api, "networking.k8s.io/v1", "NetworkPolicy") == [
        "safeship-allow-ingress", "safeship-allow-monitoring", "safeship-allow-same-namespace",
        "safeship-default-deny-ingress"]
    assert names(kube_api, "v1", "ServiceAccount") == ["safeship-deployer"]
    role = kube_api.read("rbac.authorization.k8s.io/v1", "Role", "safeship-deployer", "prod")
    assert role is not None
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]} in role["rules"]
    assert names(kube_api, "rbac.authorization.k8s.io/v1", "RoleBinding") == ["safeship-deployer"]
    assert kube_api.read("v1", "ConfigMap", "app-settings", "prod")["data"] == {"FEATURE_X": "on"}  # type: ignore[index]
    secret = kube_api.read("v1", "Secret", "user-service", "prod")
    assert secret is not None
    assert base64.b64decode(secret["data"]["DB_PASSWORD"]).decode() == SECRET  # the value reaches the cluster
    assert names(kube_api, "v1", "PersistentVolumeClaim") == ["user-service-cache"]
    # ... and nowhere else: not in what is printed, not in the store
    assert SECRET not in json.dumps([c.to_json() for c in checks])
    state = store.environment_state("production")
    assert state is not None and state["namespace"] == "prod"
    assert ["Secret", "user-service"] in state["objects"]
    assert SECRET not in json.dumps(state)


async def test_prepare_again_changes_nothing_twice(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    assert failed(await environment.prepare()) == {}
    before = {k: v for k, v in kube_api.emulator.objects.items() if not v.deleted} if hasattr(
        kube_api.emulator, "objects") else {}
    checks = await environment.prepare()
    assert failed(checks) == {}
    assert names(kube_api, "v1", "ResourceQuota") == ["safeship-quota"]
    assert "exists (created by safeship)" in next(c.detail for c in checks if c.name == "Namespace prod")
    if before:
        after = {k for k, v in kube_api.emulator.objects.items() if not v.deleted}
        assert after == set(before)


async def test_prepare_in_a_namespace_safeship_did_not_create(kube_api: ApiHandle, root: Path, store: Store) -> None:
    kube_api.ensure_namespace("shared", {"team": "payments"})
    checks = await on_cluster(kube_api, root, store, namespace="shared").prepare()
    assert failed(checks) == {}
    labels = kube_api.read("v1", "Namespace", "shared", None)["metadata"]["labels"]  # type: ignore[index]
    assert labels["team"] == "payments"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "app.kubernetes.io/managed-by" not in labels


async def test_prepare_stops_at_a_server_error_and_says_so(kube_api: ApiHandle, root: Path, store: Store) -> None:
    kube_api.emulator.fail("POST", "networkpolicies", status=503, message="etcd is unavailable", times=1)
    checks = await on_cluster(kube_api, root, store).prepare()
    bad = failed(checks)
    assert "etcd is unavailable" in bad["NetworkPolicy safeship-default-deny-ingress"]
    assert "run --prepare again" in bad["prepare"]
    assert names(kube_api, "v1", "ConfigMap") == []  # nothing after the failure was applied
    assert store.environment_state("production") is None
    assert failed(await on_cluster(kube_api, root, store).prepare()) == {}  # and running it again finishes


async def test_validate_a_prepared_environment(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    checks = await environment.validate()
    assert failed(checks) == {}
    by_name = {c.name: c.detail for c in checks}
    assert by_name["namespace"] == "prod is Active"
    assert "room for the next deployment at its peak (user-service, blue-green: 2 more pods" in by_name["quota"]
    # asked for the deployer's ServiceAccount, answered from the Role and RoleBinding --prepare applied
    assert by_name["permissions"] == ("ServiceAccount prod/safeship-deployer may do all 15 things a deployment "
                                      "needs in prod")
    assert by_name["secrets"].startswith("1 of 1 present and private")


async def test_validate_finds_no_room_in_the_quota(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    # what the quota controller reports: 0.5 of 0.75 cores in use leaves no room for 2 more pods of 250m
    async with kube_api.client("prod") as kube:
        await kube.patch("v1", "ResourceQuota", "safeship-quota", {"spec": {"hard": {"requests.cpu": "750m"}}})
        await kube.patch_status("v1", "ResourceQuota", "safeship-quota", {"status": {
            "hard": {"requests.cpu": "750m", "requests.memory": "8Gi"},
            "used": {"requests.cpu": "500m", "requests.memory": "256Mi"}}})
    bad = failed(await environment.validate())
    assert list(bad) == ["quota"]
    assert "safeship-quota requests.cpu: 0.5 used + 0.5 needed > 0.75" in bad["quota"]


async def test_validate_names_what_the_deployer_may_not_do(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    # someone trims the deployer's Role: deleting pods and patching Services go
    role = kube_api.read("rbac.authorization.k8s.io/v1", "Role", "safeship-deployer", "prod")
    assert role is not None
    for rule in role["rules"]:
        if rule["resources"] == ["pods"]:
            rule["verbs"] = ["list"]
        if rule["resources"] == ["services"]:
            rule["verbs"] = ["get", "create"]
    kube_api.write(role)
    bad = failed(await environment.validate())
    assert bad == {"permissions": "ServiceAccount prod/safeship-deployer may not delete pods, patch services in prod; "
                                  "run environment-manager --prepare --environment production to apply its Role "
                                  "and RoleBinding"}
    # the kubeconfig's own user may do everything here: what counts is the ServiceAccount
    kube_api.remove("rbac.authorization.k8s.io/v1", "RoleBinding", "safeship-deployer", "prod")
    bad = failed(await environment.validate())
    assert bad["permissions"].startswith("ServiceAccount prod/safeship-deployer may not get deployments.apps, "
                                         "list deployments.apps, create deployments.apps, patch deployments.apps, "
                                         "list pods, delete pods, get services")


async def test_validate_reports_a_terminating_namespace_as_such(kube_api: ApiHandle, root: Path,
                                                               store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    async with kube_api.client("prod") as kube:
        await kube.delete("v1", "Namespace", "prod")
    checks = await environment.validate()
    assert failed(checks) == {}
    namespace = next(c for c in checks if c.name == "namespace")
    assert namespace.warning and namespace.detail.startswith("prod is Terminating (being deleted")
    assert [c.name for c in checks] == ["cluster", "namespace", "secrets"]  # nothing else is asked of it


async def test_validate_with_autoscaling_asks_for_the_metrics_api(kube_api: ApiHandle, root: Path,
                                                                 store: Store) -> None:
    data = config_data(kube_api)
    data["services"]["user-service"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 4}
    config = SafeshipConfig.model_validate(data)
    environment = KubernetesEnvironment(config, config.environment_management.environments[0], root=root,
                                        store=store)
    await environment.prepare()
    bad = failed(await environment.validate())
    assert bad == {"metrics": "no APIService v1beta1.metrics.k8s.io: the autoscalers would have no CPU metrics to "
                              "scale on; install metrics-server"}
    service = kube_api.write({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                              "metadata": {"name": "v1beta1.metrics.k8s.io"},
                              "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                                       "versionPriority": 100,
                                       "service": {"name": "metrics-server", "namespace": "kube-system"}}})
    service["status"] = {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints",
                                         "message": "endpoints for service/metrics-server in \"kube-system\" have "
                                                    "no addresses with port name \"https\""}]}
    kube_api.write(service, status=True)
    bad = failed(await environment.validate())
    assert list(bad) == ["metrics"] and "is not Available (endpoints for service/metrics-server" in bad["metrics"]
    service = kube_api.read("apiregistration.k8s.io/v1", "APIService", "v1beta1.metrics.k8s.io", None) or {}
    service["status"] = {"conditions": [{"type": "Available", "status": "True", "reason": "Passed",
                                         "message": "all checks passed"}]}
    kube_api.write(service, status=True)
    checks = await environment.validate()
    assert failed(checks) == {}
    details = {c.name: c.detail for c in checks}
    # the deployer's Role carries the autoscaler verbs: 15 things plus create, patch, delete
    assert details["permissions"].startswith("ServiceAccount prod/safeship-deployer may do all 18 things")


async def test_prepare_into_a_terminating_namespace_says_so_and_applies_nothing(kube_api: ApiHandle, root: Path,
                                                                               store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    async with kube_api.client("prod") as kube:
        await kube.delete("v1", "Namespace", "prod")
    requests_before = len(kube_api.emulator.requests_made)
    bad = failed(await environment.prepare())
    assert bad["Namespace prod"] == ("namespace prod is Terminating (being deleted; its finalizers hold it until it "
                                     "is empty), and nothing can be created in it: run --prepare again once it is gone")
    made = kube_api.emulator.requests_made[requests_before:]
    assert [str(r.method.value).upper() for r in made] == ["GET"]  # one look at the namespace, no writes


async def test_prepare_keeps_the_pod_security_labels_of_a_namespace_it_did_not_create(
        kube_api: ApiHandle, root: Path, store: Store) -> None:
    kube_api.ensure_namespace("shared", {"team": "payments", "pod-security.kubernetes.io/enforce": "baseline"})
    checks = await on_cluster(kube_api, root, store, namespace="shared").prepare()
    assert failed(checks) == {}
    labels = kube_api.read("v1", "Namespace", "shared", None)["metadata"]["labels"]  # type: ignore[index]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"  # its owner's level stays
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"  # a missing label is added
    detail = next(c.detail for c in checks if c.name == "Namespace shared")
    assert detail == ("exists (not created by safeship), Pod Security level baseline; its own "
                      "pod-security.kubernetes.io/enforce=baseline kept (the config asks for "
                      "pod-security.kubernetes.io/enforce=restricted)")


async def test_validate_without_the_namespace(kube_api: ApiHandle, root: Path, store: Store) -> None:
    bad = failed(await on_cluster(kube_api, root, store).validate())
    assert bad == {"namespace": "prod does not exist; run environment-manager --prepare --environment production"}


async def test_validate_an_unreachable_cluster(kube_api: ApiHandle, root: Path, store: Store, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the client connects: nothing listens there
    kubeconfig = write_kubeconfig(tmp_path / "closed.kubeconfig", f"http://127.0.0.1:{port}", "closed", "prod")
    environment = on_cluster(kube_api, root, store, kubeconfig=str(kubeconfig), cluster="closed")
    bad = failed(await environment.validate())
    assert list(bad) == ["cluster"]
    assert "cannot reach the API server" in bad["cluster"]


async def test_a_kubeconfig_that_cannot_be_read_is_a_failed_check(kube_api: ApiHandle, root: Path, store: Store,
                                                                   tmp_path: Path) -> None:
    environment = on_cluster(kube_api, root, store, kubeconfig=str(tmp_path / "missing.kubeconfig"))
    for verb in (environment.prepare, environment.validate):
        bad = failed(await verb())
        assert "cluster" in bad and "missing.kubeconfig" in bad["cluster"]
    assert store.environment_state("production") is None


async def test_cleanup_deletes_what_safeship_created_and_keeps_the_history(
        kube_api: ApiHandle, root: Path, store: Store) -> None:
    history(store)
    environment = on_cluster(kube_api, root, store, namespace="test")  # a namespace safeship did not create
    await environment.prepare()
    async with kube_api.client("test") as kube:
        for obj in workload_objects(environment.config, environment.environment, "user-service", "v1.3.0",
                                    "canary", previous=None):
            await kube.apply(obj)
        await kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "someone-elses", "namespace": "test"}, "data": {"a": "b"}})
    assert names(kube_api, "apps/v1", "Deployment", "test") == [deployment_name("user-service", "v1.3.0")]
    checks = await environment.cleanup(force=True)
    assert failed(checks) == {}
    for api_version, kind in [("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "Secret"),
                              ("gateway.networking.k8s.io/v1", "HTTPRoute"), ("v1", "ResourceQuota"),
                              ("rbac.authorization.k8s.io/v1", "Role"), ("networking.k8s.io/v1", "NetworkPolicy"),
                              ("v1", "PersistentVolumeClaim")]:
        assert kube_api.items(api_version, kind, "test", MANAGED) == [], kind
    assert names(kube_api, "v1", "ConfigMap", "test") == ["someone-elses"]
    assert kube_api.read("v1", "Namespace", "test", None) is not None  # not safeship's to delete
    assert store.environment_state("production") is None
    [kept] = store.list_deployments(environment="production")
    assert (kept.id, kept.phase) == ("deploy-0001", "succeeded")
    assert [e.kind for e in store.events("deploy-0001")] == ["created"]


async def test_cleanup_deletes_the_namespace_safeship_created(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    checks = await environment.cleanup(force=True)
    assert failed(checks) == {}
    assert next(c.detail for c in checks if c.name == "namespace") == "prod deleted (safeship created it)"
    # Terminating, held by its finalizer until the namespace controller has emptied it
    terminating = kube_api.read("v1", "Namespace", "prod", None)
    assert terminating is not None and terminating["status"]["phase"] == "Terminating"
    assert kube_api.emulator.finalize_namespace("prod")
    assert kube_api.read("v1", "Namespace", "prod", None) is None


async def test_cleanup_of_production_needs_force(kube_api: ApiHandle, root: Path, store: Store) -> None:
    environment = on_cluster(kube_api, root, store)
    await environment.prepare()
    with pytest.raises(ConflictError, match="production: cleanup needs --force"):
        await environment.cleanup(force=False)
    assert names(kube_api, "v1", "ResourceQuota") == ["safeship-quota"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """environment-manager in this process, its output captured (run in a thread: it runs its own
    event loop while the emulator serves on the test's)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = environment_manager.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


async def test_the_commands_on_a_cluster(kube_api: ApiHandle, root: Path) -> None:
    config = root / "safeship.yaml"
    data = config_data(kube_api)
    data["store"] = {"url": f"sqlite:///{root / 'cli-state.db'}"}
    config.write_text(yaml.safe_dump(data))
    for action, code_wanted in (("--prepare", 0), ("--validate", 0)):
        code, out, err = await asyncio.to_thread(run_cli, action, "--environment", "production",
                                                 "--config", str(config), "--json")
        assert code == code_wanted, err
        result = json.loads(out)
        assert result["ok"] is True
        assert SECRET not in out + err
    kube_api.emulator.fail("POST", "subjectaccessreviews", status=403, message="forbidden", times=1000)
    code, out, _ = await asyncio.to_thread(run_cli, "--validate", "--environment", "production",
                                           "--config", str(config), "--json")
    assert code == 1
    assert not json.loads(out)["ok"]
    assert "cannot ask what ServiceAccount prod/safeship-deployer may do" in out
    code, out, err = await asyncio.to_thread(run_cli, "--cleanup", "--environment", "production",
                                             "--config", str(config), "--json")
    assert code == 2 and "needs --force" in err
    code, out, err = await asyncio.to_thread(run_cli, "--cleanup", "--force", "--environment", "production",
                                             "--config", str(config), "--json")
    assert code == 0, err
    terminating = kube_api.read("v1", "Namespace", "prod", None)  # until the namespace controller empties it
    assert terminating is not None and terminating["status"]["phase"] == "Terminating"
