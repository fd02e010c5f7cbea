"""The controller's API in process: a Controller built on a temp config and store, not started (no
routes, no service processes, no router daemon), and its FastAPI app called through a test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from safeship.api.app import create_app
from safeship.api.controller import Controller

TOKEN = "test-token"
LOCAL = "http://127.0.0.1"  # the controller answers only Host headers that name it (not "testserver")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVICE = "user-service"

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
router_process: false
environment_management:
  environments:
    - {{name: staging, type: staging, platform: sim}}
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    replicas: 2
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0]
  billing:
    replicas: 1
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.0.0]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state"))
    return path


@pytest.fixture
def controller(config_file: Path) -> Iterator[Controller]:
    built = Controller.from_config_file(config_file)
    try:
        yield built
    finally:
        built.store.close()


@pytest.fixture
def client(controller: Controller) -> Iterator[TestClient]:
    with TestClient(create_app(controller, TOKEN), base_url=LOCAL, raise_server_exceptions=True) as test_client:
        yield test_client
