"""Roles and audit through a real controller process: tokens made by the `safeship token` command
(a separate process, on the same SQLite store) are honoured and refused over real HTTP by their
role, a revoked one is refused at once, and `safeship audit --json` lists every mutating call with
its actor, source address and outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import ENV, REPO, SERVICE, controller_with, wait_final

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live]
SAFESHIP = Path(sys.executable).parent / "safeship"


def _with_staging(text: str) -> str:
    text = text.replace(f"    - {{name: {ENV}, type: production, platform: local}}",
                        f"    - {{name: {ENV}, type: production, platform: local}}\n"
                        "    - {name: staging, type: staging, platform: local}")
    return text.replace(f"ports: {{{ENV}: 0}}", f"ports: {{{ENV}: 0, staging: 0}}")


def _safeship(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SAFESHIP), *argv, "--config", str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def _token(config: Path, *argv: str) -> str:
    done = _safeship(config, "token", "create", *argv, "--json")
    assert done.returncode == 0, done.stderr
    token: str = json.loads(done.stdout)["token"]
    return token


def _post(base: str, token: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_roles_are_enforced_and_audited_by_a_running_controller(tmp_path: Path) -> None:
    with controller_with(tmp_path, _with_staging) as setup:
        client = ControllerClient(setup.state_dir)
        base = client.base_url()
        viewer = _token(setup.config, "--role", "viewer", "--name", "watcher")
        deployer = _token(setup.config, "--role", "deployer", "--environment", "staging", "--name", "ci-staging")
        staging = {"service_name": SERVICE, "version": "v1.2.0", "environment": "staging"}
        production = staging | {"environment": ENV}

        assert httpx.get(base + "/deployments", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        refused_viewer = _post(base, viewer, "/deployments", staging)
        refused_production = _post(base, deployer, "/deployments", production)
        created = _post(base, deployer, "/deployments", staging)

        assert refused_viewer.status_code == 403
        assert refused_viewer.json()["detail"] == ("token 'watcher' (viewer) may not deploy: that needs the "
                                                   "deployer role or higher")
        assert refused_production.status_code == 403
        assert refused_production.json()["detail"] == ("token 'ci-staging' (deployer of staging) may not deploy "
                                                       "in production")
        assert created.status_code == 201, created.text
        final, _ = wait_final(client, created.json()["id"])
        assert final["phase"] == "succeeded", final["reason"]
        assert [d["environment"] for d in client.list()] == ["staging"]

        revoked = _safeship(setup.config, "token", "revoke", "ci-staging")
        assert revoked.returncode == 0, revoked.stderr
        after = _post(base, deployer, "/deployments", staging | {"version": "v1.3.0"})
        assert after.status_code == 401

        listed = _safeship(setup.config, "audit", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in reversed(json.loads(listed.stdout)["audit"]) if r["action"].startswith("POST ")]
        assert [(r["actor"], r["status"]) for r in rows] == [
            ("watcher", 403), ("ci-staging", 403), ("ci-staging", 201), ("unknown token", 401)]
        assert all(r["source"].startswith("127.0.0.1:") for r in rows)
        assert rows[1]["outcome"] == refused_production.json()["detail"]
        assert rows[2]["target"] == f"{created.json()['id']} ({SERVICE}/staging v1.2.0)"
        assert len([r for r in json.loads(listed.stdout)["audit"] if r["action"].startswith("safeship token")]) == 3
