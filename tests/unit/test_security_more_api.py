"""What runs on the controller's host comes from safeship.yaml only: POST /deployments refuses a
body that sets an exec probe, a probe command or environment variables (LD_PRELOAD, PYTHONPATH)
with 422 and one sentence naming the field, and nothing is deployed. Exec probes run as the
environment's run_as_user."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from securitykit import built_controller, write_config

from safeship.analysis.probes import probe
from safeship.api.app import create_app
from safeship.platforms.base import ProbeSpec

TOKEN = "t" * 43
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with (built_controller(write_config(tmp_path, platform="local")) as controller,
          TestClient(create_app(controller, TOKEN), base_url="http://127.0.0.1") as test_client):
        yield test_client


def deploy(client: TestClient, configuration: dict[str, Any]) -> Any:
    body = {"service_name": "user-service", "version": "v1.2.0", "environment": "staging",
            "configuration": configuration}
    return client.post("/deployments", json=body, headers=AUTH)


def deployments(client: TestClient) -> list[Any]:
    found: list[Any] = client.get("/deployments", headers=AUTH).json()["deployments"]
    return found


@pytest.mark.parametrize("variables", [{"LD_PRELOAD": "/tmp/evil.so"}, {"PYTHONPATH": "/tmp/evil"},
                                       {"GREETING": "hello"}])
def test_environment_variables_in_a_body_are_refused(client: TestClient, variables: dict[str, str]) -> None:
    answer = deploy(client, {"environment_variables": variables})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith("request body: configuration.environment_variables: ")
    assert "safeship.yaml" in detail and "\n" not in detail
    assert deployments(client) == []


@pytest.mark.parametrize("probe_name", ["liveness", "readiness"])
@pytest.mark.parametrize("given", [{"type": "exec", "command": ["sh", "-c", "touch /tmp/pwned"]},
                                   {"command": ["sh", "-c", "touch /tmp/pwned"]}])
def test_an_exec_probe_or_probe_command_in_a_body_is_refused(client: TestClient, probe_name: str,
                                                             given: dict[str, Any]) -> None:
    answer = deploy(client, {"health_checks": {probe_name: given}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith(f"request body: configuration.health_checks.{probe_name}: exec probes")
    assert "\n" not in detail
    assert deployments(client) == []


def test_http_probe_settings_and_resources_in_a_body_are_still_taken(client: TestClient) -> None:
    answer = deploy(client, {"health_checks": {"readiness": {"path": "/ready", "timeout": 2}},
                             "resources": {"cpu": 0.2}})
    assert answer.status_code == 201, answer.text
    assert len(deployments(client)) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
async def test_an_exec_probe_runs_as_the_user_it_is_given() -> None:
    nobody = pwd.getpwnam("nobody")
    spec = ProbeSpec(kind="exec", command=("id", "-u"), timeout=10.0, uid=nobody.pw_uid, gid=nobody.pw_gid)
    result = await probe(spec, host="127.0.0.1", port=1)
    assert result.detail == f"exit code 0: {nobody.pw_uid}"
