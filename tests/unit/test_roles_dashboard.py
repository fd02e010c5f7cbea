"""The dashboard shows only the buttons the session's role allows, and refuses the rest: a viewer
sees no action button and no Validate button, a staging deployer sees them in staging only, only
an admin sees the Audit page; revoking a token ends its sessions."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from roleskit import ADMIN_TOKEN, bearer, csrf_of, deploy_body, make_token, run_cli

from safeship.api.controller import Controller

pytest_plugins = ("rolesfixtures",)  # the fixtures client, config_file and controller


def _log_in(client: TestClient, token: str) -> None:
    client.cookies.clear()
    answer = client.post("/ui/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def _buttons(page: str) -> list[str]:
    return re.findall(r'data-action="([a-z]+)"', page)


@pytest.fixture
def deployments(client: TestClient) -> dict[str, str]:
    """A pending deployment in each environment, made by the local admin token."""
    made = {}
    for environment in ("staging", "production"):
        answer = client.post("/deployments", json=deploy_body(environment), headers=bearer(ADMIN_TOKEN))
        assert answer.status_code == 201, answer.text
        made[environment] = answer.json()["id"]
    return made


def test_a_viewer_sees_no_action_button_no_validate_button_and_no_audit_page(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str],
        deployments: dict[str, str]) -> None:
    _log_in(client, ADMIN_TOKEN)  # the same pages as an admin: the buttons are there
    assert "abort" in _buttons(client.get(f"/ui/deployments/{deployments['staging']}").text)
    assert client.get("/ui/environments").text.count("Validate now") == 2
    assert 'href="/ui/audit"' in client.get("/").text

    _log_in(client, make_token(config_file, capsys, "viewer", name="watcher"))
    overview = client.get("/")
    assert overview.status_code == 200
    assert 'id="who" data-role="viewer">watcher · viewer' in overview.text
    assert 'href="/ui/audit"' not in overview.text
    for deployment_id in deployments.values():
        page = client.get(f"/ui/deployments/{deployment_id}")
        assert page.status_code == 200
        assert _buttons(page.text) == []
        assert 'action="/ui/deployments/' not in page.text
    environments = client.get("/ui/environments").text
    assert "Validate now" not in environments and "/validate" not in environments
    audit = client.get("/ui/audit")
    assert audit.status_code == 403
    assert "token 'watcher' (viewer) may not read the audit table" in html.unescape(audit.text)

    csrf = csrf_of(overview.text)
    refused = client.post(f"/ui/deployments/{deployments['staging']}/abort", data={"csrf": csrf, "confirmed": "yes"})
    assert refused.status_code == 403
    assert "may not cancel deployments" in html.unescape(refused.text)
    assert client.post("/ui/environments/staging/validate", data={"csrf": csrf}).status_code == 403
    assert controller.store.get_deployment(deployments["staging"]).phase == "pending"


def test_a_staging_deployer_sees_buttons_in_staging_only(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str],
        deployments: dict[str, str]) -> None:
    _log_in(client, make_token(config_file, capsys, "deployer", "staging", name="ci-staging"))

    staging = client.get(f"/ui/deployments/{deployments['staging']}").text
    production = client.get(f"/ui/deployments/{deployments['production']}").text
    environments = client.get("/ui/environments").text

    assert "abort" in _buttons(staging)
    assert _buttons(production) == []
    assert 'action="/ui/environments/staging/validate"' in environments
    assert 'action="/ui/environments/production/validate"' not in environments
    csrf = csrf_of(staging)
    refused = client.post(f"/ui/deployments/{deployments['production']}/abort",
                          data={"csrf": csrf, "confirmed": "yes"})
    assert refused.status_code == 403
    expected = "token 'ci-staging' (deployer of staging) may not cancel deployments in production"
    assert expected in html.unescape(refused.text)
    done = client.post(f"/ui/deployments/{deployments['staging']}/abort", data={"csrf": csrf, "confirmed": "yes"},
                       follow_redirects=False)
    assert done.status_code == 303
    assert controller.store.get_deployment(deployments["production"]).phase != "cancelled"


def test_the_audit_page_lists_rows_for_an_admin(client: TestClient, deployments: dict[str, str]) -> None:
    _log_in(client, ADMIN_TOKEN)

    page = client.get("/ui/audit")

    assert page.status_code == 200
    rows = re.findall(r'<tr class="audit-row[^"]*" data-status="(\d+)">', page.text)
    assert rows == ["303", "201", "201"]  # the login, then both deployments, newest first
    assert "POST /deployments" in page.text and "dashboard: local admin" in page.text
    filtered = client.get("/ui/audit", params={"actor": "dashboard: local admin"}).text
    assert re.findall(r'data-status="(\d+)"', filtered) == ["303"]


def test_revoking_a_token_ends_its_dashboard_session(
        client: TestClient, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log_in(client, make_token(config_file, capsys, "viewer", name="watcher"))
    assert client.get("/", follow_redirects=False).status_code == 200

    code, _out, err = run_cli(["token", "revoke", "watcher", "--config", str(config_file)], capsys)
    assert code == 0, err

    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.post("/ui/login", data={"token": "x", "next": "/"}).status_code == 401
