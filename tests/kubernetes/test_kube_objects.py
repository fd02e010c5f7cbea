"""The workload objects safeship applies on a cluster: valid for Kubernetes 1.30 (strict), labelled,
named by the rules in safeship.kube.objects, and carrying what the service's config says."""

from __future__ import annotations

import importlib
from typing import Any

import kubernetes_validate
import pytest

from safeship.config.models import DeploymentStrategy, Environment, SafeshipConfig
from safeship.kube import objects

BUILT_IN = {"Deployment", "Service", "PodDisruptionBudget"}


def make_config(**service: Any) -> SafeshipConfig:
    settings: dict[str, Any] = {
        "image": "registry.example/user-service:{version}",
        "container_port": 8080,
        "replicas": 4,
        "resources": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": 1, "memory": "512Mi"},
        "env": {"LOG_LEVEL": "info"},
        "secrets": ["DB_PASSWORD"],
        "volumes": [{"name": "data", "size": "1Gi", "mount_path": "/data"}],
        "health_checks": {
            "liveness": {"type": "tcp", "interval": "10s", "timeout": "2s", "failure_threshold": 5},
            "readiness": {"type": "http", "path": "/ready", "interval": "5s", "timeout": "1s",
                          "success_threshold": 2, "initial_delay": "3s"},
        },
    }
    settings.update(service)
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [
            {"name": "production", "platform": "kubernetes", "namespace": "prod", "traffic_router": "gateway-api",
             "gateway": {"name": "public", "namespace": "gateways", "section_name": "https"},
             "variables": {"REGION": "eu"}},
            {"name": "staging", "platform": "kubernetes", "traffic_router": "istio"},
            {"name": "development", "platform": "kubernetes", "run_as_user": "1000"},
        ]},
        "services": {"user-service": settings},
    })


def env(config: SafeshipConfig, name: str) -> Environment:
    found = config.environment(name)
    assert found is not None
    return found


def check_valid(obj: dict[str, Any]) -> None:
    if obj["kind"] in BUILT_IN:
        kubernetes_validate.validate(obj, "1.30", strict=True)
    try:  # the published CRD schemas and the API server's own checks, where the test suite has them
        schemas = importlib.import_module("kube_schemas")
    except ImportError:
        return
    assert schemas.validate_object(obj) == []


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("strategy", list(DeploymentStrategy))
@pytest.mark.parametrize("environment", ["production", "staging", "development"])
@pytest.mark.parametrize("previous", [None, "v1.2.0"])
def test_every_object_is_valid_and_labelled(strategy: DeploymentStrategy, environment: str,
                                            previous: str | None) -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, environment), "user-service", "v1.3.0+build.7", strategy,
                                    previous=previous)
    assert objs
    for obj in objs:
        check_valid(obj)
        meta = obj["metadata"]
        assert meta["labels"][objects.NAME_LABEL] == "user-service"
        assert meta["labels"][objects.MANAGED_BY_LABEL] == "safeship"
        assert meta["namespace"] == env(config, environment).kube_namespace
    (deployment,) = by_kind(objs, "Deployment")
    assert deployment["metadata"]["name"] == objects.deployment_name("user-service", "v1.3.0+build.7")
    assert deployment["metadata"]["name"].startswith("user-service-v1-3-0-build-7-")
    assert deployment["metadata"]["labels"][objects.VERSION_LABEL] == objects.version_label("v1.3.0+build.7")
    assert deployment["metadata"]["labels"][objects.VERSION_LABEL].startswith("v1.3.0_build.7-")
    assert deployment["metadata"]["annotations"][objects.VERSION_ANNOTATION] == "v1.3.0+build.7"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    # apply order: the Services the router objects name exist before them
    kinds = [o["kind"] for o in objs]
    assert kinds.index("Deployment") > max(i for i, k in enumerate(kinds) if k == "Service")


def test_pod_template_follows_the_service_config() -> None:
    config = make_config()
    (deployment,) = by_kind(objects.workload_objects(config, env(config, "production"), "user-service", "v2",
                                                     "rolling"), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 4
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
    assert spec["progressDeadlineSeconds"] == 120  # the seed's health_check_failure timeout
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/user-service:v2"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "1000m", "memory": "512Mi"}}
    assert container["readinessProbe"] == {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5,
                                           "timeoutSeconds": 1, "failureThreshold": 3, "successThreshold": 2,
                                           "initialDelaySeconds": 3}
    assert container["livenessProbe"] == {"tcpSocket": {"port": 8080}, "periodSeconds": 10, "timeoutSeconds": 2,
                                          "failureThreshold": 5, "successThreshold": 1, "initialDelaySeconds": 0}
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}
    assert env_vars["REGION"]["value"] == "eu"
    assert env_vars["SAFESHIP_VERSION"]["value"] == "v2"
    # a secret is a reference into the service's Secret, never a value
    assert env_vars["DB_PASSWORD"] == {"name": "DB_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": objects.secret_name("user-service"), "key": "DB_PASSWORD"}}}
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert spec["template"]["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "user-service-data"}}]


def test_recreate_uses_the_native_recreate_and_exec_probes_run_their_command() -> None:
    config = make_config(health_checks={"liveness": {"type": "exec", "command": ["cat", "/tmp/alive"]}},
                         limits=None)
    (deployment,) = by_kind(objects.workload_objects(config, env(config, "development"), "user-service", "v2",
                                                     DeploymentStrategy.RECREATE), "Deployment")
    check_valid(deployment)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsUser": 1000, "runAsNonRoot": True,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["livenessProbe"]["exec"] == {"command": ["cat", "/tmp/alive"]}
    assert container["resources"]["limits"] == container["resources"]["requests"]  # no limits: the requests


def test_gateway_api_objects_split_between_stable_and_canary() -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, "production"), "user-service", "v2", "canary",
                                    previous="v1")
    services = {o["metadata"]["name"]: o for o in by_kind(objs, "Service")}
    assert services["user-service"]["spec"]["selector"][objects.VERSION_LABEL] == "v1"
    assert services["user-service-canary"]["spec"]["selector"][objects.VERSION_LABEL] == "v2"
    (route,) = by_kind(objs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "public", "namespace": "gateways", "sectionName": "https"}]
    refs = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
    assert refs == {"user-service": 100, "user-service-canary": 0}
    (deployment,) = by_kind(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # a canary starts with its first step's share of 4


def test_istio_objects_weigh_a_service_per_version() -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, "staging"), "user-service", "v2", "canary", previous="v1")
    assert not by_kind(objs, "DestinationRule")
    (virtual,) = by_kind(objs, "VirtualService")
    assert virtual["apiVersion"] == "networking.istio.io/v1"
    routes = virtual["spec"]["http"][0]["route"]
    assert {r["destination"]["host"]: r["weight"] for r in routes} == {"user-service": 100, "user-service-canary": 0}
    assert virtual["spec"]["hosts"] == ["user-service"] and "gateways" not in virtual["spec"]  # the mesh only
    selected = {s["metadata"]["name"]: s["spec"]["selector"].get(objects.VERSION_LABEL)
                for s in by_kind(objs, "Service")}
    assert selected == {"user-service": "v1", "user-service-canary": "v2"}


def test_blue_green_has_an_active_and_a_preview_service() -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, "development"), "user-service", "v2", "blue-green",
                                    previous="v1")
    services = {o["metadata"]["name"]: o["spec"]["selector"].get(objects.VERSION_LABEL)
                for o in by_kind(objs, "Service")}
    assert services == {"user-service": "v1", "user-service-preview": "v2"}


def test_names_and_label_values_stay_within_kubernetes_limits() -> None:
    long_version = "1.4.0-rc.1+" + "b" * 110
    label = objects.version_label(long_version)
    assert len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()
    assert objects.version_label(long_version + "x") != label
    name = objects.deployment_name("a" * 60, long_version)
    assert len(name) <= 63 and name == name.lower() and not name.endswith("-")
    assert objects.deployment_name("user-service", "V1.2.0").startswith("user-service-v1-2-0-")


@pytest.mark.parametrize(("first", "second"), [
    ("v1.3.0", "v1-3-0"),  # sanitising makes both v1-3-0
    ("V1.2.0", "v1.2.0"),  # lowercasing
    ("1.4.0+b", "1.4.0_b"),  # a label value has no '+'
    ("1" * 100 + "a", "1" * 100 + "b"),  # cut to length
    ("v1-3-0", "v1-3-0-" + "0b27bac7"),  # a version that looks like another's hashed form
])
def test_names_derived_from_versions_never_collide(first: str, second: str) -> None:
    """Two versions get two Deployments, labels and Istio subsets, never one: each name that had to
    differ from its version carries a hash of the exact version."""
    assert objects.deployment_name("user-service", first) != objects.deployment_name("user-service", second)
    assert objects.version_label(first) != objects.version_label(second)
    assert objects.subset_name(first) != objects.subset_name(second)
    config = make_config()
    first_deployment, second_deployment = (
        next(o for o in objects.workload_objects(config, env(config, "staging"), "user-service", v, "canary")
             if o["kind"] == "Deployment") for v in (first, second))
    assert first_deployment["spec"]["selector"] != second_deployment["spec"]["selector"]
    check_valid(first_deployment)
    check_valid(second_deployment)


def test_deployment_names_never_collide_across_services() -> None:
    # 'api' at v2-1 and 'api-v2' at 1 both read api-v2-1
    assert objects.deployment_name("api", "v2-1") != objects.deployment_name("api-v2", "1")
    assert objects.deployment_name("api", "v2-1").startswith("api-v2-1-")


def test_a_version_that_is_already_a_name_keeps_it_readable() -> None:
    assert objects.version_label("v1.3.0") == "v1.3.0"  # what Prometheus queries see
    assert objects.subset_name("v2") == "v2"
    assert objects.deployment_name("user-service", "v1.3.0").startswith("user-service-v1-3-0-")


POD_SETTINGS: dict[str, Any] = {
    "service_account": "user-service-runtime",
    "image_pull_secrets": ["registry-creds"],
    "annotations": {"prometheus.io/scrape": "true"},
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {objects.NAME_LABEL: "user-service"}}}}]}},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
    "topology_spread_constraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                     "whenUnsatisfiable": "ScheduleAnyway"}],
    "run_as_user": 10001,
    "pre_stop_sleep": "4s",
    "min_available": "50%",
}


def test_pod_settings_reach_the_pod_and_stay_valid() -> None:
    from kube_schemas import pod_security_problems

    config = make_config(pod=POD_SETTINGS, grace_period="30s")
    objs = objects.workload_objects(config, env(config, "production"), "user-service", "v1.3.0", "canary")
    for obj in objs:
        check_valid(obj)
    (deployment,) = by_kind(objs, "Deployment")
    template = deployment["spec"]["template"]
    spec = template["spec"]
    assert spec["serviceAccountName"] == "user-service-runtime"
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert spec["affinity"] == POD_SETTINGS["affinity"]
    assert spec["tolerations"] == POD_SETTINGS["tolerations"]
    # a spread constraint without a selector spreads this version's pods
    assert spec["topologySpreadConstraints"] == [{**POD_SETTINGS["topology_spread_constraints"][0], "labelSelector": {
        "matchLabels": objects.selector("user-service", "v1.3.0")}}]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true",
                                                   objects.VERSION_ANNOTATION: "v1.3.0"}
    # drain: the container serves on for 4 s after the pod is marked terminating, within its 30 s
    assert spec["terminationGracePeriodSeconds"] == 30
    (container,) = spec["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 4}}}
    # a numeric UID, so that runAsNonRoot holds on an image whose USER is a name
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    assert pod_security_problems(deployment, "restricted") == []
    # one PodDisruptionBudget per version, over that version's pods
    (budget,) = by_kind(objs, "PodDisruptionBudget")
    assert budget["metadata"]["name"] == deployment["metadata"]["name"]
    assert budget["spec"] == {"minAvailable": "50%",
                              "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}


def test_without_pod_settings_the_pod_has_a_default_pre_stop_sleep_and_no_budget() -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, "staging"), "user-service", "v2", "rolling")
    assert by_kind(objs, "PodDisruptionBudget") == []
    (deployment,) = by_kind(objs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert spec["terminationGracePeriodSeconds"] == 10
    assert "serviceAccountName" not in spec and "runAsUser" not in spec["securityContext"]
    no_sleep = make_config(pod={"pre_stop_sleep": 0})
    (deployment,) = by_kind(objects.workload_objects(no_sleep, env(no_sleep, "staging"), "user-service", "v2",
                                                     "rolling"), "Deployment")
    assert "lifecycle" not in deployment["spec"]["template"]["spec"]["containers"][0]
