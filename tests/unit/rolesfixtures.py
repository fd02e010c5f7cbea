"""Fixtures of the roles and audit tests, loaded with `pytest_plugins = ("rolesfixtures",)`: a
controller on a temp config (roleskit.CONFIG), not started, and its API and dashboard called in
process through a test client, with roleskit.ADMIN_TOKEN as the local admin token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from roleskit import ADMIN_TOKEN, CONFIG, LOCAL

from safeship.api.app import create_app
from safeship.api.controller import Controller


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
    with TestClient(create_app(controller, ADMIN_TOKEN), base_url=LOCAL) as test_client:
        yield test_client
