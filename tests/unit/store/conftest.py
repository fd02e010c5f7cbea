from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pgkit
import pytest

CONFIG = """
environment_management:
  environments:
    - name: "production"
      type: "production"
      platform: sim
services:
  user-service:
    criticality: high
    replicas: 2
    versions: [v1.2.0, v1.3.0]
"""


@pytest.fixture
def make_config(tmp_path: Path):
    """A sim safeship.yaml in tmp_path, with `store_url` as its store.url when given."""

    def make(store_url: str | None = None) -> Path:
        path = tmp_path / "safeship.yaml"
        text = CONFIG
        if store_url is not None:
            text += f"store:\n  url: {store_url!r}\n"
        path.write_text(text)
        return path

    return make


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgkit.PgServer]:
    """One PostgreSQL server for the session (skipped, saying why, where it cannot start)."""
    with pgkit.running() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store URL on each backend: a SQLite file, and an empty schema of its own on
    the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    server: pgkit.PgServer = request.getfixturevalue("pg_server")
    return server.new_database()

