"""The state folder and what is in it are the user's alone: `.safeship` is made 0700, the store
and its WAL file are not readable by others, nor are the controller's and the instances' logs."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from safeship.api.client import ControllerClient
from safeship.errors import ControllerUnreachable
from safeship.store import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_and_its_wal_are_private_in_a_private_folder(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, under which SQLite makes 0644 files
    try:
        state = tmp_path / ".safeship"
        store = Store(f"sqlite:///{state}/state.db")
        try:
            store.add_events([])
            store.list_deployments()
            wal = state / "state.db-wal"
            assert wal.exists()
            assert _mode(state) == 0o700
            assert _mode(state / "state.db") == 0o600
            assert _mode(wal) == 0o600
            assert _mode(state / "state.db-shm") & 0o077 == 0
        finally:
            store.close()
    finally:
        os.umask(old)


def test_a_store_left_readable_by_an_older_safeship_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(f"sqlite:///{path}").close()
    path.chmod(0o644)
    store = Store(f"sqlite:///{path}")
    try:
        assert _mode(path) == 0o600
    finally:
        store.close()


def test_the_controller_log_is_private(tmp_path: Path) -> None:
    """The CLI starts the controller with its output in `<state_dir>/logs/controller.log`; that
    file and its folder are made private even when the start fails (no config here)."""
    state = tmp_path / "state"
    client = ControllerClient(state)
    old = os.umask(0o022)
    try:
        with contextlib.suppress(ControllerUnreachable):  # it exits at once: there is no config
            client.ensure_running(tmp_path / "missing.yaml")
    finally:
        os.umask(old)
    log = state / "logs" / "controller.log"
    assert log.exists()
    assert _mode(log) == 0o600
    assert _mode(state / "logs") == 0o700
    assert _mode(state) == 0o700
