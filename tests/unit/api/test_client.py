"""The CLI's client against the API: every call it makes is one the API takes (the request bodies
are pydantic models now), and every error comes back as the safeship error the CLI turns into its
exit code. The client's HTTP goes to the in-process app instead of a socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import SERVICE, TOKEN
from fastapi.testclient import TestClient

from safeship.api import client as client_module
from safeship.api.client import ControllerClient
from safeship.api.controller import Controller
from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.errors import ConflictError, InputError, NotFoundError, StoreError, TemporaryError


@pytest.fixture
def cli(client: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch) -> ControllerClient:
    state = controller.state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / "controller.json").write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 9}))
    (state / "token").write_text(TOKEN + "\n")

    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        path = url.removeprefix("http://127.0.0.1:9")
        return client.request(method, path, **kwargs)

    monkeypatch.setattr(client_module.httpx, "request", request)
    # no process listens on port 9: the in-process app stands in for a controller the record names
    monkeypatch.setattr(ControllerClient, "not_running_because", lambda self: None)
    return ControllerClient(state)


def cli_body(**fields: Any) -> dict[str, Any]:
    """What `deployment-engine --deploy` sends: the whole request model, dumped, plus the policy."""
    request = DeploymentRequest.model_validate(fields)
    return request.model_dump(mode="json") | {"policy": None}


def test_every_call_the_client_makes_is_accepted(cli: ControllerClient) -> None:
    created = cli.deploy(cli_body(service_name=SERVICE, version="v1.2.0", environment="production",
                                  deployment_strategy=DeploymentStrategy.CANARY))
    assert created["phase"] == "pending" and created["strategy"] == "canary"
    assert cli.get(created["id"])["id"] == created["id"]
    assert [d["id"] for d in cli.list(service=SERVICE, environment="production", active=True)] == [created["id"]]
    assert cli.history(SERVICE)["deployments"][0]["id"] == created["id"]
    assert cli.rollbacks(SERVICE) == []
    assert [e["name"] for e in cli.environments()] == ["staging", "production"]
    assert cli.cancel(created["id"], by="ops")["phase"] in {"rolling_back", "cancelled"}
    with pytest.raises(ConflictError):
        cli.approve(created["id"], by="ops")
    with pytest.raises(ConflictError):
        cli.rollback(created["id"], "manual rollback")
    assert cli.cleanup_environment("staging")["environment"] == "staging"


def test_a_full_request_with_configuration_and_rollback_settings_round_trips(cli: ControllerClient) -> None:
    body = cli_body(
        service_name=SERVICE,
        version="v1.3.0",
        environment="production",
        configuration={"replicas": 3},
        rollback_config={
            "triggers": [{"type": "error_rate_threshold", "threshold": 0.05, "duration": "90s"}],
            "monitoring": {"duration": "2m", "interval": "15s"},
        },
        requested_by="ci",
        override_freeze="hotfix",
    )
    created = cli.deploy(body)
    assert created["version"] == "v1.3.0"


def test_errors_come_back_as_the_errors_the_cli_maps_to_exit_codes(
    cli: ControllerClient, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match=r"^request body: service_name: service name must be"):
        cli.deploy(cli_body(service_name="../x", version="v1.2.0", environment="production"))
    with pytest.raises(NotFoundError, match="service 'nope' is not in the config"):
        cli.deploy(cli_body(service_name="nope", version="v1.2.0", environment="production"))
    with pytest.raises(NotFoundError, match=r"environment '\.\.\.' is not in the config"):
        cli.cleanup_environment("...")
    with pytest.raises(NotFoundError):
        cli.get("deploy-0000000000")

    def locked(**_: Any) -> None:
        raise StoreError("the store is locked by another writer")

    monkeypatch.setattr(controller.store, "list_deployments", locked)
    with pytest.raises(StoreError, match="locked") as raised:
        cli.list()
    assert raised.value.exit_code == 4

    def busy(**_: Any) -> None:
        raise TemporaryError("the router daemon is restarting")

    monkeypatch.setattr(controller.store, "list_deployments", busy)
    with pytest.raises(TemporaryError, match="restarting"):
        cli.list()


def test_a_wrong_token_is_an_input_error(cli: ControllerClient, controller: Controller) -> None:
    (Path(controller.state_dir) / "token").write_text("wrong\n")
    with pytest.raises(InputError, match="refused the token"):
        cli.environments()
