from __future__ import annotations

from pathlib import Path

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
