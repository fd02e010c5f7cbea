"""The one-service controller the security tests start from: its config file and the controller
built from it (closed again however the test ends)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safeship.api.controller import Controller

RUN = '[run, "{port}"]'  # never started by these tests
USER_SERVICE = '[python, -m, examples.user_service, --port, "{port}", --version, "{version}"]'
CONFIG = """\
state_dir: {state}
store: {{url: "sqlite:///{state}/state.db"}}
router_process: false
{extra}environment_management:
  environments:
    - {{name: staging, type: staging, platform: {platform}}}
services:
  user-service:
    replicas: 1
    command: {command}
"""


def write_config(tmp_path: Path, *, platform: str = "sim", extra: str = "", command: str = RUN) -> Path:
    """safeship.yaml in `tmp_path`, its state folder `tmp_path/state`; `extra`: top-level lines."""
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state=tmp_path / "state", extra=extra, platform=platform, command=command))
    return path


@contextmanager
def built_controller(path: Path) -> Iterator[Controller]:
    controller = Controller.from_config_file(path)
    try:
        yield controller
    finally:
        controller.store.close()
