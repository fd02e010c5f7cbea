"""The role matrix against the in-process API: a viewer reads but cannot deploy, a staging
deployer deploys in staging but cannot touch production, an admin (and the local admin token)
may do everything; each refusal is 403 with one sentence and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from roleskit import ADMIN_TOKEN, bearer, deploy_body, make_token

from safeship.api.controller import Controller

pytest_plugins = ("rolesfixtures",)  # the fixtures client, config_file and controller


def _one_sentence(answer_detail: str) -> None:
    assert answer_detail and "\n" not in answer_detail
    assert answer_detail.count(". ") == 0, answer_detail


def test_a_viewer_reads_but_gets_403_with_one_sentence_on_post_deployments(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    viewer = make_token(config_file, capsys, "viewer", name="dash-viewer")
    for path in ("/deployments", "/rollbacks", "/environments", "/services/user-service/history"):
        assert client.get(path, headers=bearer(viewer)).status_code == 200, path

    answer = client.post("/deployments", json=deploy_body("staging"), headers=bearer(viewer))

    assert answer.status_code == 403
    detail = answer.json()["detail"]
    assert detail == "token 'dash-viewer' (viewer) may not deploy: that needs the deployer role or higher"
    _one_sentence(detail)
    assert controller.store.list_deployments() == []


def test_a_staging_deployer_deploys_in_staging_and_is_refused_in_production(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployer = make_token(config_file, capsys, "deployer", "staging", name="ci-staging")

    refused = client.post("/deployments", json=deploy_body("production"), headers=bearer(deployer))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "token 'ci-staging' (deployer of staging) may not deploy in production"
    assert controller.store.list_deployments() == []

    created = client.post("/deployments", json=deploy_body("staging"), headers=bearer(deployer))
    assert created.status_code == 201, created.text
    assert [(d.environment, d.version) for d in controller.store.list_deployments()] == [("staging", "v1.3.0")]
    cancelled = client.post(f"/deployments/{created.json()['id']}/cancel", json={"by": "ci"}, headers=bearer(deployer))
    assert cancelled.status_code == 200, cancelled.text


def test_a_staging_deployer_cannot_act_on_a_production_deployment(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployer = make_token(config_file, capsys, "deployer", "staging", name="ci-staging")
    production = client.post("/deployments", json=deploy_body("production"), headers=bearer(ADMIN_TOKEN)).json()
    before = controller.store.get_deployment(production["id"])

    for action, doing in (("cancel", "cancel"), ("rollback", "roll back"), ("approve", "approve"),
                          ("promote", "promote")):
        answer = client.post(f"/deployments/{production['id']}/{action}", headers=bearer(deployer))
        assert answer.status_code == 403, action
        assert answer.json()["detail"] == (f"token 'ci-staging' (deployer of staging) may not {doing} "
                                           "deployments in production")
    assert controller.store.get_deployment(production["id"]) == before
    cleanup = client.post("/environments/staging/cleanup", headers=bearer(deployer))
    assert cleanup.status_code == 403
    assert "needs the admin role" in cleanup.json()["detail"]
    assert client.get("/audit", headers=bearer(deployer)).status_code == 403


def test_an_unknown_deployment_is_404_before_the_role_is_looked_at(
        client: TestClient, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    viewer = make_token(config_file, capsys, "viewer")
    assert client.post("/deployments/deploy-0000000000/cancel", headers=bearer(viewer)).status_code == 404


@pytest.mark.parametrize("kind", ["created admin", "local admin"])
def test_an_admin_may_do_everything(client: TestClient, controller: Controller, config_file: Path,
                                    capsys: pytest.CaptureFixture[str], kind: str) -> None:
    token = make_token(config_file, capsys, "admin") if kind == "created admin" else ADMIN_TOKEN
    for environment in ("staging", "production"):
        assert client.post(f"/environments/{environment}/cleanup", headers=bearer(token)).status_code == 200
        created = client.post("/deployments", json=deploy_body(environment), headers=bearer(token))
        assert created.status_code == 201, created.text
        cancelled = client.post(f"/deployments/{created.json()['id']}/cancel", headers=bearer(token))
        assert cancelled.status_code == 200, cancelled.text
    assert client.get("/audit", headers=bearer(token)).status_code == 200
    assert len(controller.store.list_deployments()) == 2


def test_an_admin_limited_to_staging_is_refused_production_and_the_audit_table(
        client: TestClient, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = make_token(config_file, capsys, "admin", "staging", name="staging-admin")
    assert client.post("/environments/staging/cleanup", headers=bearer(token)).status_code == 200
    refused = client.post("/environments/production/cleanup", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["detail"] == ("token 'staging-admin' (admin of staging) may not clean environments up "
                                        "in production")
    audit = client.get("/audit", headers=bearer(token))
    assert audit.status_code == 403
    assert "not limited to environments" in audit.json()["detail"]


def test_a_revoked_or_unknown_token_is_401_and_the_token_records_its_last_use(
        client: TestClient, controller: Controller, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from roleskit import run_cli

    token = make_token(config_file, capsys, "viewer", name="short-lived")
    assert controller.store.tokens()[0].last_used_at is None
    assert client.get("/deployments", headers=bearer(token)).status_code == 200
    assert controller.store.tokens()[0].last_used_at is not None
    assert client.get("/deployments", headers=bearer(token + "x")).status_code == 401

    code, _out, err = run_cli(["token", "revoke", "short-lived", "--config", str(config_file)], capsys)
    assert code == 0, err
    answer = client.get("/deployments", headers=bearer(token))
    assert answer.status_code == 401
    assert "revoked" in answer.json()["detail"]
