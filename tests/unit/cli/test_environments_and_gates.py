"""environment-manager does what it prints; approval and freeze windows through the commands."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_commands import call, deploy

from safeship.cli import deployment_engine, environment_manager
from safeship.store import Store

LOCAL = """
environment_management:
  environments:
    - name: "staging"
      type: "staging"
      platform: local
      config_maps:
        app-settings: {{FEATURE_X: "on", LIMIT: "10"}}
      variables: {{REGION: "loopback-1"}}
    - name: "production"
      type: "production"
      platform: local
services:
  user-service:
    replicas: 2
    secrets: [DB_PASSWORD]
    ports: {{staging: {port}}}
    command: ["python", "-m", "examples.user_service", "--port", "{{port}}", "--version", "{{version}}"]
"""
SECRET = "s3cr3t-planted-value-7f1c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    config = tmp_path / "safeship.yaml"
    config.write_text(LOCAL.format(port=free_port()))
    secrets = tmp_path / "secrets" / "staging"
    secrets.mkdir(parents=True)
    (secrets / "DB_PASSWORD").write_text(SECRET + "\n")
    (secrets / "DB_PASSWORD").chmod(0o600)
    return config


def env_cmd(config: Path, capsys, *args: str) -> tuple[int, dict, str]:
    code, out, err = call(environment_manager.main, [*args, "--config", str(config), "--json"], capsys)
    return code, (json.loads(out) if out.strip() else {}), err


def test_prepare_does_what_it_prints(local_config: Path, capsys) -> None:
    code, result, err = env_cmd(local_config, capsys, "--prepare", "--environment", "staging")
    assert code == 0, err
    names = [c["check"] for c in result["checks"]]
    expected = {"state directory", "logs directory", "user-service port", "config map app-settings", "secrets"}
    assert expected <= set(names)
    state = local_config.parent / ".safeship" / "environments" / "staging"
    assert (state / "config" / "app-settings" / "FEATURE_X").read_text() == "on"
    assert "REGION=loopback-1" in (state / "environment.env").read_text()
    recorded = Store(f"sqlite:///{local_config.parent / '.safeship/state.db'}").environment_state("staging")
    assert recorded is not None and recorded["secrets"] == ["DB_PASSWORD"]
    assert recorded["ports"]["user-service"] is not None
    assert SECRET not in json.dumps(result) and SECRET not in json.dumps(recorded)


def test_prepare_refuses_a_secret_others_can_read(local_config: Path, capsys) -> None:
    secret = local_config.parent / "secrets" / "staging" / "DB_PASSWORD"
    secret.chmod(0o644)
    code, _, err = env_cmd(local_config, capsys, "--prepare", "--environment", "staging")
    assert code == 2 and str(secret) in err and "0o644" in err and SECRET not in err
    assert not (local_config.parent / ".safeship" / "environments" / "staging").exists()


def test_validate_lists_each_failed_check(local_config: Path, capsys) -> None:
    code, result, _ = env_cmd(local_config, capsys, "--validate", "--environment", "staging")
    assert code == 0  # not prepared yet: the first deploy creates the directories, so that is no failure
    directories = [c for c in result["checks"] if c["check"] in ("state directory", "logs directory")]
    assert len(directories) == 2 and all(c["ok"] and "will be created on first deploy" in c["detail"]
                                         for c in directories)
    assert env_cmd(local_config, capsys, "--prepare", "--environment", "staging")[0] == 0
    code, result, _ = env_cmd(local_config, capsys, "--validate", "--environment", "staging")
    assert code == 0 and all(c["ok"] for c in result["checks"])
    port = Store(f"sqlite:///{local_config.parent / '.safeship/state.db'}").environment_state("staging")["ports"]
    with socket.socket() as squatter:  # another process takes the route port
        squatter.bind(("127.0.0.1", port["user-service"]))
        squatter.listen()
        code, result, _ = env_cmd(local_config, capsys, "--validate", "--environment", "staging")
    assert code == 1 and [c["check"] for c in result["checks"] if not c["ok"]] == ["user-service port"]


def test_cleanup_removes_state_keeps_history_and_guards_production(local_config: Path, capsys) -> None:
    env_cmd(local_config, capsys, "--prepare", "--environment", "staging")
    code, _, err = env_cmd(local_config, capsys, "--cleanup", "--environment", "production")
    assert code == 2 and "--force" in err
    code, result, _ = env_cmd(local_config, capsys, "--cleanup", "--environment", "staging")
    assert code == 0 and not (local_config.parent / ".safeship" / "environments" / "staging").exists()
    assert Store(f"sqlite:///{local_config.parent / '.safeship/state.db'}").environment_state("staging") is None
    assert any(c["check"] == "history" for c in result["checks"])
    code, _, _ = env_cmd(local_config, capsys, "--cleanup", "--environment", "production", "--force")
    assert code == 0


GATED = """
environment_management:
  environments:
    - name: "production"
      type: "production"
      platform: sim
      approval: required
      freeze_windows:
        - {name: "all-week", days: [daily], start: "00:00", end: "23:59", timezone: "UTC"}
services:
  user-service:
    replicas: 2
"""


def test_freeze_refuses_then_override_and_approval_are_recorded(tmp_path: Path, capsys) -> None:
    config = tmp_path / "safeship.yaml"
    config.write_text(GATED)
    code, result = deploy(config, "v1.2.0", capsys)
    assert code == 2 and "all-week" in result["err"] and "--override-freeze" in result["err"]
    store = Store(f"sqlite:///{tmp_path / '.safeship/state.db'}")
    assert store.list_deployments() == []
    code, result = deploy(config, "v1.2.0", capsys, "--override-freeze", "hotfix INC-9")
    assert code == 0 and result["phase"] == "awaiting_approval"
    deployment_id = result["id"]
    code, out, err = call(deployment_engine.main, ["--approve", "--deployment-id", deployment_id, "--approved-by",
                                                   "alice", "--config", str(config), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["phase"] == "succeeded"
    record = store.get_deployment(deployment_id)
    assert record.status["approval"]["by"] == "alice" and record.status["approval"]["at"] > 0
    assert record.status["freeze_override"]["reason"] == "hotfix INC-9"
    kinds = {e.kind for e in store.events(deployment_id)}
    assert "freeze_override" in kinds
    code, _, err = call(deployment_engine.main, ["--approve", "--deployment-id", deployment_id, "--config",
                                                 str(config)], capsys)
    assert code == 2 and "not awaiting approval" in err
