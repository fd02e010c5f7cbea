"""What a cluster would refuse is refused when the config loads (exit 2, one sentence naming the
field), for configs with a `platform: kubernetes` environment (safeship.config.kubernetes). Where a
rule mirrors a refusal of the API server or of Pod Security Admission, its real message is quoted
with the Kubernetes source file it comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from safeship.cli import environment_manager
from safeship.config.loader import load_config
from safeship.errors import ConfigError


def write(tmp_path: Path, *, platform: str = "kubernetes", env_type: str = "production",
          environment: dict[str, Any] | None = None, strategies: dict[str, Any] | None = None,
          name: str = "user-service", **service: Any) -> Path:
    data: dict[str, Any] = {
        "environment_management": {"environments": [
            {"name": "production", "type": env_type, "platform": platform, "namespace": "prod",
             "kubeconfig": str(tmp_path / "no-such-kubeconfig"), **(environment or {})}]},
        "services": {name: {"image": "registry.example/app:{version}", **service}},
        "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
    }
    if strategies is not None:
        data["intelligent_deployment"] = {"strategies": strategies}
    path = tmp_path / "safeship.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# ---------------------------------------------------------------- item 8: service names


def test_a_service_name_starting_with_a_digit_is_refused_on_kubernetes(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # The API server refuses such a Service with k8s.io/apimachinery/pkg/util/validation/validation.go
    # (IsDNS1035Label, dns1035LabelErrMsg): "a DNS-1035 label must consist of lower case alphanumeric
    # characters or '-', start with an alphabetic character, and end with an alphanumeric character"
    path = write(tmp_path, name="1api")
    error = refused(path)
    assert error.field == "services.1api"
    assert "DNS-1035 label" in error.detail and "starting with a letter" in error.detail
    try:
        code = environment_manager.main(["--prepare", "--environment", "production", "--render",
                                         "--config", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "services.1api" in err
    # the same name is a fine DNS-1123 label where nothing runs on Kubernetes
    assert "1api" in load_config(write(tmp_path, name="1api", platform="local")).services


# ---------------------------------------------------------------- item 7: who the pod runs as


def test_root_is_refused_where_the_pod_security_level_is_restricted(tmp_path: Path) -> None:
    # Pod Security Admission would refuse every pod, k8s.io/pod-security-admission/policy/check_runAsUser.go:
    # `violates PodSecurity "restricted:latest": runAsUser=0 (pod must not set runAsUser=0)`
    error = refused(write(tmp_path, environment={"run_as_user": "0"}))
    assert error.field == "environment_management.environments[0].run_as_user"
    assert "'restricted'" in error.detail and "runAsUser 0" in error.detail
    error = refused(write(tmp_path, pod={"run_as_user": 0}))
    assert error.field == "services.user-service.pod.run_as_user"
    # baseline (a development environment without a PodSecurityPolicy) admits root
    assert load_config(write(tmp_path, env_type="development", environment={"run_as_user": "0"}))
    assert load_config(write(tmp_path, pod={"run_as_user": 1000}))


def test_a_user_name_is_refused_where_a_pod_needs_a_uid(tmp_path: Path) -> None:
    error = refused(write(tmp_path, environment={"run_as_user": "app"}))
    assert error.field == "environment_management.environments[0].run_as_user"
    assert "numeric UID" in error.detail


@pytest.mark.parametrize(("pod", "field", "words"), [
    ({"pre_stop_sleep": "10s"}, "pre_stop_sleep", "shorter than grace_period"),
    ({"min_available": "half"}, "min_available", "percentage"),
    ({"affinity": {"node_affinity": {}}}, "affinity", "unknown field 'node_affinity'"),
    ({"tolerations": [{"key": "gpu", "effects": "NoSchedule"}]}, "tolerations[0]", "unknown field 'effects'"),
    ({"topology_spread_constraints": [{"maxSkew": 1, "topologyKey": "zone"}]}, "topology_spread_constraints[0]",
     "whenUnsatisfiable is missing"),
    ({"image_pull_secrets": ["Registry_Creds"]}, "image_pull_secrets", "DNS-1123 subdomain"),
    ({"annotations": {"bad key": "x"}}, "annotations", "qualified name"),
])
def test_pod_settings_a_cluster_would_refuse_are_refused(tmp_path: Path, pod: dict[str, Any], field: str,
                                                         words: str) -> None:
    error = refused(write(tmp_path, grace_period="10s", pod=pod))
    assert error.field == f"services.user-service.pod.{field}"
    assert words in error.detail


# ---------------------------------------------------------------- item 5: one claim, two versions


def test_a_read_write_once_volume_is_refused_while_two_versions_may_run_at_once(tmp_path: Path) -> None:
    volume = {"name": "data", "size": "1Gi", "mount_path": "/data"}  # ReadWriteOnce by default
    error = refused(write(tmp_path, volumes=[volume]))
    assert error.field == "services.user-service.volumes[0].access_mode"
    assert "canary, blue-green and rolling" in error.detail and "ReadWriteMany" in error.detail
    error = refused(write(tmp_path, volumes=[{**volume, "access_mode": "ReadWriteOncePod"}],
                          strategies={"canary": {"enabled": False}, "rolling": {"enabled": False}}))
    assert "blue-green" in error.detail and "canary" not in error.detail
    # a volume every node may mount, or recreate alone, is fine
    assert load_config(write(tmp_path, volumes=[{**volume, "access_mode": "ReadWriteMany"}]))
    only_recreate = {"canary": {"enabled": False}, "blue_green": {"enabled": False}, "rolling": {"enabled": False}}
    assert load_config(write(tmp_path, volumes=[volume], strategies=only_recreate))
    # the local platform has no claims
    assert load_config(write(tmp_path, platform="local", volumes=[volume]))
