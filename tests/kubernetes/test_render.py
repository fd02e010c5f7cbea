"""`--render` prints what would be applied on a cluster, as multi-document YAML, and contacts none.

The config is examples/kubernetes.yaml (three environments: production on gateway-api, staging on
istio, development with the replicas router), copied next to a store of its own, with a kubeconfig
that names a file that does not exist: a command that tried to reach a cluster would fail."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schemas import pod_security_problems, validate_object

from safeship.cli import deployment_engine, environment_manager
from safeship.config.loader import load_config
from safeship.store import StableVersion, Store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubernetes.yaml"
STRATEGIES = ["canary", "blue_green", "rolling", "recreate"]
ENVIRONMENTS = ["production", "staging", "development"]
SECRET = "planted-s3cret-value-91d2"


def call(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """examples/kubernetes.yaml with a secret, a volume, pod settings, a config map and a load balancer added,
    and a kubeconfig that does not exist; the secret's file holds SECRET."""
    data = yaml.safe_load(EXAMPLE.read_text())
    for environment in data["environment_management"]["environments"]:
        environment["kubeconfig"] = str(tmp_path / "no-such-kubeconfig")
        environment["config_maps"] = {"app-settings": {"FEATURE_X": "on", "limits.json": '{"rps": 10}'}}
        environment["load_balancer"] = environment["name"] == "production"
    service = data["services"]["user-service"]
    service["secrets"] = ["DB_PASSWORD", "API_TOKEN"]
    service["pod"] = {"run_as_user": 10001, "min_available": 1, "image_pull_secrets": ["registry-creds"],
                      "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}
    service["volumes"] = [{"name": "cache", "size": "2Gi", "mount_path": "/var/cache/app",
                           "access_mode": "ReadWriteMany"}]
    path = tmp_path / "safeship.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    for environment in ENVIRONMENTS:
        folder = tmp_path / "secrets" / environment
        folder.mkdir(parents=True)
        for name in service["secrets"]:
            (folder / name).write_text(SECRET + "\n")
            (folder / name).chmod(0o600)
    return path


def render_deploy(config: Path, capsys: pytest.CaptureFixture[str], environment: str,
                  *extra: str) -> tuple[int, list[dict[str, Any]], str, str]:
    code, out, err = call(deployment_engine.main, [
        "--deploy", "--service", "user-service", "--version", "v1.3.0", "--environment", environment,
        "--render", "--config", str(config), *extra], capsys)
    objects = [o for o in yaml.safe_load_all(out) if o] if code == 0 else []
    return code, objects, out, err


def render_prepare(config: Path, capsys: pytest.CaptureFixture[str], environment: str,
                   *extra: str) -> tuple[int, list[dict[str, Any]], str, str]:
    code, out, err = call(environment_manager.main, [
        "--prepare", "--environment", environment, "--render", "--config", str(config), *extra], capsys)
    objects = [o for o in yaml.safe_load_all(out) if o] if code == 0 else []
    return code, objects, out, err


def assert_valid(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        assert validate_object(obj) == [], (obj["kind"], obj["metadata"]["name"], validate_object(obj))
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "safeship"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_the_example_loads() -> None:
    config = load_config(str(EXAMPLE))
    routers = {e.name: (e.platform, e.router) for e in config.environment_management.environments}
    assert routers == {"development": ("kubernetes", "replicas"), "staging": ("kubernetes", "istio"),
                       "production": ("kubernetes", "gateway-api")}
    assert all(e.traffic_source == "prometheus" and e.prometheus is not None
               for e in config.environment_management.environments)
    assert config.services["user-service"].image.endswith(":{version}")


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deploy_render_for_every_strategy(config_path: Path, capsys: pytest.CaptureFixture[str],
                                          strategy: str, environment: str) -> None:
    code, objects, out, err = render_deploy(config_path, capsys, environment, "--strategy", strategy)
    assert code == 0, err
    assert out.startswith("# user-service v1.3.0 -> ")
    assert_valid(objects)
    [deployment] = by_kind(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == {"production": "prod", "staging": "staging",
                                                   "development": "dev"}[environment]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/user-service:v1.3.0"
    assert deployment["spec"]["strategy"]["type"] == ("Recreate" if strategy == "recreate" else "RollingUpdate")
    # the secrets reach the pods by reference, never by value
    assert SECRET not in out
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"API_TOKEN": "user-service", "DB_PASSWORD": "user-service"}
    # the pod: block, and a PodDisruptionBudget beside the version's Deployment
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert pod_spec["imagePullSecrets"] == [{"name": "registry-creds"}] and pod_spec["tolerations"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    [budget] = by_kind(objects, "PodDisruptionBudget")
    assert budget["metadata"]["name"] == deployment["metadata"]["name"]
    assert budget["spec"]["minAvailable"] == 1
    names = {o["metadata"]["name"] for o in by_kind(objects, "Service")}
    assert ("user-service-preview" in names) == (strategy == "blue_green")
    if environment == "production":
        [route] = by_kind(objects, "HTTPRoute")
        weights = [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]]
        assert weights == [100, 0]  # all traffic stays where it is until the deploy moves it
        assert route["spec"]["parentRefs"][0]["name"] == "public"
    elif environment == "staging":
        assert [o["kind"] for o in objects[-1:]] == ["VirtualService"] and not by_kind(objects, "DestinationRule")
    else:
        assert not by_kind(objects, "HTTPRoute") and not by_kind(objects, "VirtualService")


def test_deploy_render_without_strategy_says_which_safeship_selects(
        config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a high-criticality service in production (high availability): blue-green, by the table
    code, objects, out, err = render_deploy(config_path, capsys, "production")
    assert code == 0, err
    assert "strategy blue_green: high service in a high-availability environment" in out.splitlines()[0]
    assert_valid(objects)
    assert {o["metadata"]["name"] for o in by_kind(objects, "Service")} >= {"user-service-preview"}


def test_deploy_render_beside_the_serving_version(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(f"sqlite:///{config_path.parent / '.safeship' / 'state.db'}")
    try:
        store.record_stable(StableVersion("user-service", "staging", "v1.2.0", None, time.time(), None, True))
    finally:
        store.close()
    code, objects, out, err = render_deploy(config_path, capsys, "staging", "--strategy", "canary")
    assert code == 0, err
    assert "(from v1.2.0)" in out.splitlines()[0]
    assert_valid(objects)
    selected = {s["metadata"]["name"]: s["spec"]["selector"]["app.kubernetes.io/version"]
                for s in by_kind(objects, "Service")}
    assert selected == {"user-service": "v1.2.0", "user-service-canary": "v1.3.0"}
    [virtual] = by_kind(objects, "VirtualService")
    weights = {r["destination"]["host"]: r["weight"] for r in virtual["spec"]["http"][0]["route"]}
    assert weights == {"user-service": 100, "user-service-canary": 0}
    [deployment] = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # a canary beside a serving version starts small


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_prepare_render(config_path: Path, capsys: pytest.CaptureFixture[str], environment: str) -> None:
    code, objects, _out, err = render_prepare(config_path, capsys, environment)
    assert code == 0, err
    assert_valid(objects)
    kinds = [o["kind"] for o in objects]
    assert {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "ServiceAccount", "Role",
            "RoleBinding", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= set(kinds)
    assert kinds[0] == "Namespace"  # everything else goes in it
    [namespace] = by_kind(objects, "Namespace")
    labels = namespace["metadata"]["labels"]
    # the seed's PodSecurityPolicy names "restricted": Pod Security Admission enforces it
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    [quota] = by_kind(objects, "ResourceQuota")
    expected = {"production": ("16000m", "32768Mi"), "staging": ("8000m", "16384Mi"),
                "development": ("4000m", "8192Mi")}[environment]
    assert (quota["spec"]["hard"]["requests.cpu"], quota["spec"]["hard"]["requests.memory"]) == expected
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    assert policies["safeship-default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    sources = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for f in policies["safeship-allow-ingress"]["ingress"][0]["from"]]
    assert sources == {"production": ["gateway"], "staging": ["istio-system"],
                       "development": ["ingress-nginx"]}[environment]
    [role] = by_kind(objects, "Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"deployments", "services", "pods"} <= resources
    assert ("httproutes" in resources) == (environment == "production")
    assert ("virtualservices" in resources) == (environment == "staging")
    assert "podsecuritypolicies" not in resources  # removed in Kubernetes 1.25; mapped onto PSA instead
    [binding] = by_kind(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    [claim] = by_kind(objects, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2048Mi"
    balancers = [s for s in by_kind(objects, "Service") if s["spec"]["type"] == "LoadBalancer"]
    assert len(balancers) == (1 if environment == "production" else 0)


def test_prepare_render_redacts_secrets(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, out, err = render_prepare(config_path, capsys, "production")
    assert code == 0, err
    assert SECRET not in out and SECRET not in err
    [secret] = by_kind(objects, "Secret")
    assert secret["stringData"] == {"API_TOKEN": "<redacted>", "DB_PASSWORD": "<redacted>"}
    assert "data" not in secret
    code, out, err = call(environment_manager.main, ["--prepare", "--environment", "production", "--render",
                                                     "--config", str(config_path), "--json"], capsys)
    assert code == 0, err
    assert SECRET not in out
    rendered = json.loads(out)
    assert next(o for o in rendered if o["kind"] == "Secret")["stringData"]["DB_PASSWORD"] == "<redacted>"


def test_render_refuses_an_environment_not_on_kubernetes(tmp_path: Path, config_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(config_path.read_text())
    [development] = [e for e in data["environment_management"]["environments"] if e["name"] == "development"]
    development["platform"] = "local"
    data["services"]["user-service"]["command"] = ["python", "-m", "examples.user_service"]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    for run in (render_deploy, render_prepare):
        code, _, out, err = run(config_path, capsys, "development")
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert "environment 'development' uses platform 'local', not kubernetes; nothing was rendered" in err
    code, _, _, _ = render_prepare(config_path, capsys, "production")
    assert code == 0


def test_render_goes_with_prepare_and_deploy_only(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(environment_manager.main, ["--validate", "--environment", "production", "--render",
                                                     "--config", str(config_path)], capsys)
    assert (code, out) == (2, "")
    assert "--render goes with --prepare" in err
    code, out, err = call(deployment_engine.main, ["--list", "--render", "--config", str(config_path)], capsys)
    assert (code, out) == (2, "")
    assert "--render goes with --deploy" in err


def test_deploy_render_names_a_bad_strategy_or_version(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, out, err = render_deploy(config_path, capsys, "production", "--strategy", "big-bang")
    assert (code, out) == (2, "")
    assert "--strategy" in err and "big-bang" in err
    code, out, err = call(deployment_engine.main, [
        "--deploy", "--service", "user-service", "--version", "v9.9.9", "--environment", "production",
        "--render", "--config", str(config_path)], capsys)
    assert (code, out) == (2, "")
    assert "'v9.9.9'" in err


def test_the_example_renders_as_the_issue_asks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The commands of the issue's "done when", on examples/kubernetes.yaml itself (copied, so that
    its store lands in the test's folder)."""
    config = tmp_path / "kubernetes.yaml"
    shutil.copy(EXAMPLE, config)
    for strategy in STRATEGIES:
        code, objects, _, err = render_deploy(config, capsys, "production", "--strategy", strategy)
        assert code == 0, err
        assert_valid(objects)
    code, objects, _, err = render_prepare(config, capsys, "production")
    assert code == 0, err
    assert_valid(objects)
    assert {"Namespace", "ResourceQuota", "NetworkPolicy", "Role", "RoleBinding"} <= {o["kind"] for o in objects}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rendered_pods_are_admitted_at_the_namespaces_pod_security_level(
        config_path: Path, capsys: pytest.CaptureFixture[str], strategy: str) -> None:
    code, namespace_objects, _, err = render_prepare(config_path, capsys, "production")
    assert code == 0, err
    level = by_kind(namespace_objects, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    code, objects, _, err = render_deploy(config_path, capsys, "production", "--strategy", strategy)
    assert code == 0, err
    [deployment] = by_kind(objects, "Deployment")
    assert pod_security_problems(deployment, level) == []


def test_the_pod_security_check_refuses_what_admission_refuses() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "x", "securityContext": {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    assert pod_security_problems(pod, "restricted") == []
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert pod_security_problems(pod, "privileged") == []
    assert pod_security_problems(pod, "baseline") == [
        "spec.containers[0].securityContext.privileged: forbidden at baseline"]
    assert len(pod_security_problems(pod, "restricted")) == 3  # privileged, escalation, capabilities
