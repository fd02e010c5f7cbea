"""Helpers for the roles and audit tests (their fixtures are in rolesfixtures.py): the config of a
staging and a production environment (both local), and tokens of each role made the way
`safeship token create` makes them (through the CLI, in process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from safeship.cli.main import main as safeship_main

ADMIN_TOKEN = "local-admin-token-of-at-least-32-characters"
LOCAL = "http://127.0.0.1"
SERVICE = "user-service"

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
router_process: false
environment_management:
  environments:
    - {{name: staging, type: staging, platform: local}}
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    replicas: 1
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0]
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deploy_body(environment: str, version: str = "v1.3.0") -> dict[str, str]:
    return {"service_name": SERVICE, "version": version, "environment": environment}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`safeship <argv>` in process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = safeship_main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def make_token(config: Path, capsys: pytest.CaptureFixture[str], role: str, *environments: str,
               name: str | None = None) -> str:
    argv = ["token", "create", "--config", str(config), "--role", role, "--json"]
    for environment in environments:
        argv += ["--environment", environment]
    if name is not None:
        argv += ["--name", name]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    token: str = json.loads(out)["token"]
    return token


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)
