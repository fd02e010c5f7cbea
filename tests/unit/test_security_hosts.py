"""DNS rebinding: the controller answers only Host headers that name it (127.0.0.1, localhost, ::1,
the host it listens on, the config's `api_hosts`); any other gets 400 and one sentence, on
/healthz and /metrics too, which need no token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from securitykit import built_controller, write_config

from safeship.api.app import create_app
from safeship.api.controller import Controller
from safeship.config.loader import load_config
from safeship.errors import ConfigError

TOKEN = "t" * 43
@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    with built_controller(write_config(tmp_path, extra="api_hosts: [deploy.internal]\n")) as built:
        yield built


@pytest.fixture
def client(controller: Controller) -> Iterator[TestClient]:
    with TestClient(create_app(controller, TOKEN), base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/", "/ui/login", "/deployments"])
@pytest.mark.parametrize("host", ["rebound.attacker.example", "rebound.attacker.example:8080", "testserver", ""])
def test_a_foreign_host_header_gets_400_and_one_sentence(client: TestClient, path: str, host: str) -> None:
    answer = client.get(path, headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "is not a name this controller answers to" in detail and "api_hosts" in detail
    assert "\n" not in detail and '"ok"' not in answer.text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:41234", "localhost:41234", "LOCALHOST", "[::1]:41234",
                                  "deploy.internal", "deploy.internal:8080"])
def test_loopback_and_configured_names_are_answered(client: TestClient, host: str) -> None:
    assert client.get("/healthz", headers={"Host": host}).status_code == 200
    assert client.get("/metrics", headers={"Host": host}).status_code == 200


def test_the_listen_host_is_trusted(controller: Controller) -> None:
    with TestClient(create_app(controller, TOKEN, listen_host="127.0.0.2"), base_url="http://127.0.0.2") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "127.0.0.3"}).status_code == 400


def test_a_bad_api_hosts_entry_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text("api_hosts: ['*.example.com']\n")
    with pytest.raises(ConfigError, match=r"api_hosts.*'\*\.example\.com' is not a host name"):
        load_config(path)
