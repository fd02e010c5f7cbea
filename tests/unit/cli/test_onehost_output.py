"""No `None` in what the commands print, and Ctrl-C on --deploy says the deployment goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_commands import call, deploy

from safeship.api import client as api_client
from safeship.cli import deployment_engine, rollback_manager

LOCAL = """\
environment_management:
  environments:
    - {name: production, type: production, platform: local}
services:
  user-service:
    replicas: 1
    command: [python, -m, examples.user_service, --port, "{port}", --version, "{version}"]
    versions: [v1.2.0]
"""


def test_history_of_a_forced_rollback_of_a_first_deployment_prints_no_none(config_file: Path, capsys) -> None:
    code, first = deploy(config_file, "v1.2.0", capsys)
    assert code == 0
    code, _, err = call(rollback_manager.main, ["--rollback", "--deployment-id", first["id"], "--force",
                                                "--config", str(config_file)], capsys)
    assert code == 0, err
    code, out, _ = call(rollback_manager.main, ["--history", "--service", "user-service",
                                                "--config", str(config_file)], capsys)
    assert code == 0
    assert "v1.2.0 rolled back, no earlier version to serve" in out
    assert "None" not in out and "-> nothing" not in out


def test_ctrl_c_on_deploy_says_the_deployment_continues(tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "safeship.yaml"
    config.write_text(LOCAL)

    def interrupted(self: Any, deployment_id: str) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(api_client.ControllerClient, "ensure_running", lambda self, path: False)
    monkeypatch.setattr(api_client.ControllerClient, "deploy", lambda self, body: {"id": "deploy-1a2b3c4d"})
    monkeypatch.setattr(api_client.ControllerClient, "get", interrupted)
    code, out, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", "v1.2.0",
                                                   "--environment", "production", "--config", str(config)], capsys)
    assert code == 130
    assert "error: interrupted" not in err
    assert "the deployment continues on the controller" in out
    assert f"deployment-engine --status --deployment-id deploy-1a2b3c4d --config {config}" in out
    assert f"deployment-engine --cancel --deployment-id deploy-1a2b3c4d --config {config}" in out
