"""The workload objects safeship applies on a cluster: valid for Kubernetes 1.30 (strict), labelled,
named by the rules in safeship.kube.objects, and carrying what the service's config says."""

from __future__ import annotations

import importlib
from typing import Any

import kubernetes_validate
import pytest

from safeship.config.models import DeploymentStrategy, Environment, SafeshipConfig
from safeship.kube import objects

BUILT_IN = {"Deployment", "Service"}


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
    assert deployment["metadata"]["name"] == "user-service-v1-3-0-build-7"
    assert deployment["metadata"]["labels"][objects.VERSION_LABEL] == "v1.3.0_build.7"
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


def test_istio_objects_name_a_subset_per_version() -> None:
    config = make_config()
    objs = objects.workload_objects(config, env(config, "staging"), "user-service", "v2", "canary", previous="v1")
    (rule,) = by_kind(objs, "DestinationRule")
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["spec"]["subsets"] == [{"name": "v1", "labels": {objects.VERSION_LABEL: "v1"}},
                                       {"name": "v2", "labels": {objects.VERSION_LABEL: "v2"}}]
    (virtual,) = by_kind(objs, "VirtualService")
    routes = virtual["spec"]["http"][0]["route"]
    assert {r["destination"]["subset"]: r["weight"] for r in routes} == {"v1": 100, "v2": 0}
    (service,) = by_kind(objs, "Service")
    assert objects.VERSION_LABEL not in service["spec"]["selector"]  # Istio picks the subset


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
    assert objects.deployment_name("user-service", "V1.2.0") == "user-service-v1-2-0"
