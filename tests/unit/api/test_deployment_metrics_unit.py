"""GET /deployments/{id} while the route's counters cannot be read (its router restarting, its port
held by another process): the deployment is still answered, with empty metrics and the sentence
why, so a command watching it does not stop; other errors keep their status."""

from __future__ import annotations

import pytest
from apikit import AUTH, SERVICE
from fastapi.testclient import TestClient

from safeship.api.controller import Controller
from safeship.errors import StoreError, TemporaryError
from safeship.store import DeploymentRecord

ID = "deploy-00000000aa"


def _saved(controller: Controller) -> None:
    controller.store.create_deployment(DeploymentRecord(
        id=ID, service=SERVICE, environment="production", version="v1.3.0", from_version="v1.2.0",
        strategy="canary", strategy_reason="test", policy="safeship", phase="progressing", step_index=1,
        plan=[{"kind": "promote"}, {"kind": "monitor", "duration": 1.0}], status={}, request={},
        created_at=100.0, updated_at=100.0, phase_started_at=100.0, step_started_at=100.0))


def test_a_deployment_is_shown_while_its_counters_cannot_be_read(
    client: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    _saved(controller)

    async def unreadable(service: str, environment: str) -> dict[str, object]:
        raise TemporaryError("router haproxy: route production/user-service is not known yet")

    monkeypatch.setattr(controller, "version_metrics", unreadable)
    answer = client.get(f"/deployments/{ID}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == ID and body["phase"] == "progressing"
    assert body["metrics"] == {}
    assert body["metrics_unavailable"] == "router haproxy: route production/user-service is not known yet"


def test_a_store_failure_reading_metrics_is_still_503(
    client: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    _saved(controller)

    async def broken(service: str, environment: str) -> dict[str, object]:
        raise StoreError("the store is locked")

    monkeypatch.setattr(controller, "version_metrics", broken)
    answer = client.get(f"/deployments/{ID}", headers=AUTH)
    assert answer.status_code == 503 and answer.json()["kind"] == "store"
