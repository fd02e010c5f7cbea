"""The controller's HTTP API in process: what a caller sees for bad names, unknown names, bad
bodies, a missing token and failures below the API (status code and the one-sentence detail)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from apikit import AUTH, SERVICE
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from safeship.api.controller import Controller
from safeship.errors import (
    ConflictError,
    ControllerUnreachable,
    InputError,
    NotFoundError,
    StoreError,
    TemporaryError,
)

DEPLOY = {"service_name": SERVICE, "version": "v1.2.0", "environment": "production"}


def detail(response: Any) -> str:
    body = response.json()
    assert isinstance(body["detail"], str), body
    return str(body["detail"])


# ---------------------------------------------------------------- names in the path


@pytest.mark.parametrize("name", ["%2e%2e", "...", "%2e", "nope", "Production", "a%20b", "x" * 300])
def test_cleanup_of_an_environment_not_in_the_config_is_404_and_touches_nothing(
    client: TestClient, controller: Controller, name: str
) -> None:
    controller.store.save_environment_state("production", {"prepared": True}, at=1.0)
    created = client.post("/deployments", json=DEPLOY, headers=AUTH)
    assert created.status_code == 201, created.text

    answer = client.post(f"/environments/{name}/cleanup", headers=AUTH)

    assert answer.status_code == 404
    shown = name.replace("%2e", ".").replace("%20", " ")[:20]
    assert shown in detail(answer) and "is not in the config (known: production, staging)" in detail(answer)
    assert controller.store.environment_state("production") == {"prepared": True}
    assert [d.id for d in controller.store.list_deployments()] == [created.json()["id"]]


def test_a_path_name_that_cannot_be_a_name_says_why(client: TestClient) -> None:
    answer = client.post("/environments/%2e%2e/cleanup", headers=AUTH)
    assert answer.status_code == 404
    assert "environment '..' is not in the config" in detail(answer)
    assert "DNS-1123 label" in detail(answer)


def test_cleanup_of_a_configured_environment_still_works(client: TestClient, controller: Controller) -> None:
    controller.store.save_environment_state("staging", {"prepared": True}, at=1.0)
    answer = client.post("/environments/staging/cleanup", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {"environment": "staging", "instances_stopped": 0, "routes_closed": 0}
    assert controller.store.environment_state("staging") is None


def test_after_a_cleanup_the_next_deployment_is_a_first_one(client: TestClient, controller: Controller) -> None:
    """Nothing serves in a cleaned-up environment: its stable version is retired (its history row
    stays), so the next deployment starts from nothing instead of a canary from a version with no
    instance, and a restarted controller restores no weights for it."""
    from safeship.store import StableVersion

    controller.store.record_stable(StableVersion(SERVICE, "staging", "v1.1.0", None, 1.0, None, True))
    assert controller.engine.current_version(SERVICE, "staging") == "v1.1.0"
    assert client.post("/environments/staging/cleanup", headers=AUTH).status_code == 200
    assert controller.engine.current_version(SERVICE, "staging") is None
    [row] = controller.store.stable_versions(SERVICE, "staging")
    assert row.version == "v1.1.0" and row.retired_at is not None
    from safeship.routing.base import RouteKey

    assert controller.live_weights(RouteKey(SERVICE, "staging")) == {}


async def test_the_controller_itself_refuses_to_clean_up_an_unknown_environment(controller: Controller) -> None:
    controller.store.save_environment_state("production", {"prepared": True}, at=1.0)
    with pytest.raises(NotFoundError, match=r"'\.\.' is not in the config"):
        await controller.cleanup_environment("..")
    assert controller.store.environment_state("production") == {"prepared": True}


@pytest.mark.parametrize("service", ["nope", "%2e%2e", "...", "UPPER", "-x"])
def test_history_of_a_service_not_in_the_config_is_404(client: TestClient, service: str) -> None:
    answer = client.get(f"/services/{service}/history", headers=AUTH)
    assert answer.status_code == 404
    assert "is not in the config (known: billing, user-service)" in detail(answer)


@pytest.mark.parametrize("action", ["cancel", "rollback", "approve"])
@pytest.mark.parametrize("deployment_id", ["deploy-0000000000", "%2e%2e", "...", "-x", "a%00b", "x" * 300])
def test_unknown_or_impossible_deployment_ids_are_404(client: TestClient, deployment_id: str, action: str) -> None:
    for answer in (
        client.get(f"/deployments/{deployment_id}", headers=AUTH),
        client.post(f"/deployments/{deployment_id}/{action}", json={}, headers=AUTH),
    ):
        assert answer.status_code == 404, answer.text
        assert "not found" in detail(answer)


# ---------------------------------------------------------------- names in bodies and queries


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_name", "../etc"),
        ("service_name", "User Service"),
        ("environment", ".."),
        ("environment", "prod\nuction"),
        ("version", "../v1"),
        ("version", "v1 2"),
        ("version", "-v1"),
    ],
)
def test_a_malformed_name_in_the_body_is_422_naming_the_field(
    client: TestClient, controller: Controller, field: str, value: str
) -> None:
    answer = client.post("/deployments", json=DEPLOY | {field: value}, headers=AUTH)
    assert answer.status_code == 422
    assert detail(answer).startswith(f"request body: {field}: ")
    assert repr(value) in detail(answer)
    assert "\n" not in detail(answer)
    assert controller.store.list_deployments() == []


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("service_name", "nope", "service 'nope'"),
        ("environment", "qa", "environment 'qa'"),
        ("version", "v9.9.9", "version 'v9.9.9'"),
    ],
)
def test_a_well_formed_unknown_name_in_the_body_is_404(
    client: TestClient, controller: Controller, field: str, value: str, named: str
) -> None:
    answer = client.post("/deployments", json=DEPLOY | {field: value}, headers=AUTH)
    assert answer.status_code == 404
    assert named in detail(answer)
    assert controller.store.list_deployments() == []


@pytest.mark.parametrize("route", ["/deployments", "/rollbacks"])
def test_service_filters_are_checked_too(client: TestClient, route: str) -> None:
    malformed = client.get(route, params={"service": "../x"}, headers=AUTH)
    assert malformed.status_code == 422
    assert detail(malformed).startswith("query parameter: service: service name must be")
    unknown = client.get(route, params={"service": "nope"}, headers=AUTH)
    assert unknown.status_code == 404 and "'nope'" in detail(unknown)
    known = client.get(route, params={"service": SERVICE}, headers=AUTH)
    assert known.status_code == 200


def test_environment_filter_is_checked(client: TestClient) -> None:
    assert client.get("/deployments", params={"environment": ".."}, headers=AUTH).status_code == 422
    assert client.get("/deployments", params={"environment": "qa"}, headers=AUTH).status_code == 404
    assert client.get("/deployments", params={"environment": "staging"}, headers=AUTH).json() == {"deployments": []}


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("send", "sentence"),
    [
        ({"json": {"service_name": SERVICE}}, "request body: version: required field is missing"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, "request body: is not valid JSON"),
        (
            {"content": b'{"a": "\xff"}', "headers": {"content-type": "application/json"}},
            "request body: cannot be read as UTF-8 JSON",
        ),
        ({"content": b""}, "request body: a JSON object is required"),
        ({"json": [1, 2]}, "request body: must be a JSON object, got list"),
        ({"json": "text"}, "request body: must be a JSON object, got str"),
        ({"content": b'{"a": 1}'}, "request body: must be a JSON object sent with Content-Type: application/json"),
        ({"json": DEPLOY | {"colour": "blue"}}, "request body: colour: unknown field (check its spelling)"),
        ({"json": DEPLOY | {"policy": 7}}, "request body: policy: must be a valid string, got 7"),
        (
            {"json": DEPLOY | {"deployment_strategy": "yolo"}},
            "request body: deployment_strategy: must be 'blue_green', 'canary', 'rolling' or 'recreate', got 'yolo'",
        ),
        (
            {"json": DEPLOY | {"configuration": {"replicas": "many"}}},
            "request body: configuration.replicas: must be a valid integer, unable to parse string as an integer, "
            "got 'many'",
        ),
        (
            {"json": DEPLOY | {"rollback_config": {"triggers": [{"type": "error_rate_threshold", "threshold": "x"}]}}},
            "request body: rollback_config.triggers[0].threshold: must be a valid number, "
            "unable to parse string as a number, got 'x'",
        ),
    ],
)
def test_a_body_that_fails_validation_is_422_in_one_sentence(
    client: TestClient, controller: Controller, send: dict[str, Any], sentence: str
) -> None:
    headers = AUTH | send.pop("headers", {})
    answer = client.post("/deployments", headers=headers, **send)
    assert answer.status_code == 422
    assert answer.json() == {"detail": sentence}
    assert controller.store.list_deployments() == []


@pytest.mark.parametrize("action", ["cancel", "rollback", "approve"])
def test_optional_bodies_are_validated_when_given(client: TestClient, action: str) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    field = "reason" if action == "rollback" else "by"
    wrong = client.post(f"/deployments/{created['id']}/{action}", json={field: ["x"]}, headers=AUTH)
    assert wrong.status_code == 422
    assert detail(wrong).startswith(f"request body: {field}: must be a valid string")
    unknown = client.post(f"/deployments/{created['id']}/{action}", json={"who": "me"}, headers=AUTH)
    assert unknown.status_code == 422 and detail(unknown) == "request body: who: unknown field (check its spelling)"


def test_cancel_without_a_body_and_then_again(client: TestClient) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    first = client.post(f"/deployments/{created['id']}/cancel", headers=AUTH)
    assert first.status_code == 200 and first.json()["phase"] in {"rolling_back", "cancelled"}
    again = client.post(f"/deployments/{created['id']}/cancel", json={"by": "me"}, headers=AUTH)
    assert again.status_code == 409


def test_a_query_that_fails_validation_is_422(client: TestClient) -> None:
    answer = client.get("/deployments", params={"limit": "lots"}, headers=AUTH)
    assert answer.status_code == 422
    assert detail(answer).startswith("query parameter: limit: must be a valid integer")
    assert client.get("/deployments", params={"limit": 10**6}, headers=AUTH).status_code == 200


# ---------------------------------------------------------------- the schema and the token


def test_the_schema_is_served_behind_the_token(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/openapi.json", headers={"Authorization": "Basic dGVzdC10b2tlbg=="}).status_code == 401
    for ui in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(ui, headers=AUTH).status_code == 404

    schema = client.get("/openapi.json", headers=AUTH).json()
    body = schema["paths"]["/deployments"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/DeploymentBody"}
    fields = schema["components"]["schemas"]["DeploymentBody"]
    assert set(fields["required"]) == {"service_name", "version", "environment"}
    assert {"policy", "configuration", "rollback_config", "deployment_strategy"} <= set(fields["properties"])
    assert fields["additionalProperties"] is False
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    cleanup = schema["paths"]["/environments/{environment}/cleanup"]["post"]
    assert cleanup["security"] == [{"HTTPBearer": []}]
    assert cleanup["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # 422 is one sentence, not a list


def test_every_resource_but_health_and_metrics_needs_the_token(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    open_paths = {"/healthz", "/metrics"}
    for path, operations in schema["paths"].items():
        for method in operations:
            url = path.format(deployment_id="deploy-0000000000", service=SERVICE, environment="staging")
            answer = client.request(method.upper(), url)
            if path in open_paths:
                assert answer.status_code == 200, url
            else:
                assert answer.status_code == 401, f"{method} {url}"
                assert answer.headers["www-authenticate"] == "Bearer"


# ---------------------------------------------------------------- failures below the API


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InputError("refused"), 400),
        (NotFoundError("missing"), 404),
        (ConflictError("clash"), 409),
        (StoreError("the store is locked"), 503),
        (TemporaryError("try later"), 503),
        (ControllerUnreachable("router gone"), 503),
        (OperationalError("SELECT 1", {}, Exception("database is locked")), 503),
    ],
)
def test_errors_below_the_api_map_to_their_status(
    client: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    def fail(**_: Any) -> None:
        raise error

    monkeypatch.setattr(controller.store, "list_deployments", fail)
    answer = client.get("/deployments", headers=AUTH)
    assert answer.status_code == status
    assert detail(answer)
    if isinstance(error, StoreError | OperationalError):
        assert answer.json()["kind"] == "store"


def test_an_unexpected_exception_is_500_with_the_traceback_in_the_log(
    client: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(**_: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(controller.store, "list_deployments", fail)
    with caplog.at_level(logging.ERROR, logger="safeship.api.app"):
        answer = client.get("/deployments", headers=AUTH)
    assert answer.status_code == 500
    assert answer.json() == {"detail": "the controller failed (RuntimeError); the traceback is in its log"}
    [record] = [r for r in caplog.records if r.name == "safeship.api.app"]
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])
