"""A service's webhook gates need names of their own: the config is refused when it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeship.config.loader import load_config
from safeship.errors import InputError

CONFIG = """\
services:
  user-service:
    command: ["python", "-m", "examples.user_service", "--port", "{port}"]
    webhooks:
      - {name: qa, type: confirm-promotion, url: "http://127.0.0.1:9/a"}
      - {name: qa, type: pre-rollout, url: "http://127.0.0.1:9/b"}
"""


def test_two_gates_of_one_name_are_refused_naming_the_field_and_the_name(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG)
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "services.user-service.webhooks" in message
    assert "'qa' is used twice" in message
    assert "\n" not in message.strip()


def test_distinct_gate_names_load(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.replace("{name: qa, type: pre-rollout", "{name: smoke, type: pre-rollout"))
    config = load_config(path)
    assert [g.name for g in config.services["user-service"].webhooks] == ["qa", "smoke"]
