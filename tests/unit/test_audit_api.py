"""Every mutating call to the API and the dashboard, allowed or refused, is one row of the audit
table: who, what, on what, from where, the status and the refusal's sentence. Reads are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from roleskit import ADMIN_TOKEN, bearer, csrf_of, deploy_body, make_token

from safeship.api.controller import Controller
from safeship.store import AuditRecord

pytest_plugins = ("rolesfixtures",)  # the fixtures client, config_file and controller


def _api_rows(controller: Controller) -> list[AuditRecord]:
    """The rows of API and dashboard calls (not the CLI's `token create`), oldest first."""
    return [r for r in reversed(controller.store.audit(limit=1000)) if not r.actor.startswith("cli: ")]


def test_allowed_and_refused_api_calls_are_rows_and_reads_are_not(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployer = make_token(config_file, capsys, "deployer", "staging", name="ci-staging")
    client.get("/deployments", headers=bearer(deployer))
    created = client.post("/deployments", json=deploy_body("staging"), headers=bearer(deployer)).json()
    client.post("/deployments", json=deploy_body("production"), headers=bearer(deployer))
    client.post("/deployments", json=deploy_body("staging"), headers=bearer("not-a-token"))
    client.post(f"/deployments/{created['id']}/cancel", headers=bearer(ADMIN_TOKEN))

    rows = _api_rows(controller)

    assert [(r.actor, r.role, r.action, r.status) for r in rows] == [
        ("ci-staging", "deployer", "POST /deployments", 201),
        ("ci-staging", "deployer", "POST /deployments", 403),
        ("unknown token", None, "POST /deployments", 401),
        ("local admin", "admin", f"POST /deployments/{created['id']}/cancel", 200),
    ]
    allowed, refused, unknown, cancel = rows
    assert allowed.target == f"{created['id']} (user-service/staging v1.3.0)" and allowed.outcome == "ok"
    assert refused.target == "user-service/production v1.3.0"
    assert refused.outcome == "token 'ci-staging' (deployer of staging) may not deploy in production"
    assert unknown.outcome.startswith("missing, wrong or revoked bearer token")
    assert cancel.target == f"{created['id']} (user-service/staging)"
    assert all(r.source.startswith("testclient:") for r in rows)  # the client's address and port
    assert all(r.at > 0 for r in rows)


def test_a_body_the_api_refuses_is_a_row_with_its_sentence(client: TestClient, controller: Controller) -> None:
    client.post("/deployments", json=deploy_body("staging") | {"version": "../x"}, headers=bearer(ADMIN_TOKEN))

    (row,) = _api_rows(controller)

    assert row.status == 422 and row.actor == "local admin"
    assert row.outcome.startswith("request body: version: ")


def test_dashboard_logins_and_actions_are_rows_with_the_session_user(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    viewer = make_token(config_file, capsys, "viewer", name="watcher")
    created = client.post("/deployments", json=deploy_body("staging"), headers=bearer(ADMIN_TOKEN)).json()
    client.post("/ui/login", data={"token": "wrong", "next": "/"}, follow_redirects=False)
    client.post("/ui/login", data={"token": viewer, "next": "/"}, follow_redirects=False)
    csrf = csrf_of(client.get("/").text)
    refused = client.post(f"/ui/deployments/{created['id']}/abort", data={"csrf": csrf, "confirmed": "yes"})
    assert refused.status_code == 403

    rows = _api_rows(controller)[1:]  # after the admin's deployment

    assert [(r.actor, r.action, r.status) for r in rows] == [
        ("dashboard: unknown token", "POST /ui/login", 401),
        ("dashboard: watcher", "POST /ui/login", 303),
        ("dashboard: watcher", f"POST /ui/deployments/{created['id']}/abort", 403),
    ]
    assert rows[1].outcome == "logged in" and rows[1].role == "viewer"
    assert rows[2].outcome == ("token 'watcher' (viewer) may not cancel deployments: that needs the deployer role "
                               "or higher")
    assert rows[2].target == f"{created['id']} (user-service/staging)"
    assert controller.store.get_deployment(created["id"]).phase == "pending"


def test_get_audit_lists_the_rows_newest_first_for_an_admin(client: TestClient, controller: Controller) -> None:
    client.post("/deployments", json=deploy_body("staging"), headers=bearer(ADMIN_TOKEN))
    client.post("/deployments", json=deploy_body("production"), headers=bearer(ADMIN_TOKEN))

    answer = client.get("/audit", params={"limit": 1}, headers=bearer(ADMIN_TOKEN))

    assert answer.status_code == 200
    (row,) = answer.json()["audit"]
    assert row["action"] == "POST /deployments" and row["status"] == 201
    assert row["target"].endswith("(user-service/production v1.3.0)")
    assert set(row) == {"id", "at", "actor", "role", "action", "target", "source", "status", "outcome"}
