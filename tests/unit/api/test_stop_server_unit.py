"""`stop_server` against stand-in processes: nothing running, records that point at a process that
is not ours (left alone), and a daemon that ignores SIGTERM (killed). Every process started here is
killed in a finally block."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeship.api import server
from safeship.api.server import stop_server

CONFIG = """\
state_dir: {state_dir}
environment_management:
  environments:
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    command: [python, -m, examples.user_service, --port, "{{port}}"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state"))
    return path


@contextlib.contextmanager
def process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    started = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        yield started
    finally:
        if started.poll() is None:
            started.kill()
        started.wait(10)
        if started.stdout is not None:
            started.stdout.close()


def running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_nothing_running_is_said_and_creates_nothing(config: Path, tmp_path: Path) -> None:
    lines = stop_server(str(config))
    state = tmp_path / "state"
    assert lines == [f"no safeship controller runs for {state}", f"no router daemon runs for {state}"]
    assert not state.exists()


def test_records_naming_a_process_that_is_not_ours_are_removed_and_it_is_not_signalled(
    config: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with process("sleep", "60") as stranger:
        (state / "controller.json").write_text(json.dumps({"pid": stranger.pid, "port": 1}))
        (state / "router.json").write_text(json.dumps({"pid": stranger.pid}))
        lines = stop_server(str(config))
        time.sleep(0.2)
        assert running(stranger)
    assert lines[0] == f"removed the stale {state / 'controller.json'} (pid {stranger.pid} no longer runs it)"
    assert f"no safeship controller runs for {state}" in lines
    assert f"no router daemon runs for {state}" in lines
    assert not (state / "controller.json").exists() and not (state / "router.json").exists()


def test_a_record_without_a_pid_is_stale(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "controller.json").write_text("{not json")
    lines = stop_server(str(config))
    assert lines[0] == f"removed the stale {state / 'controller.json'} (it names no pid)"
    assert not (state / "controller.json").exists()


def test_a_daemon_that_ignores_sigterm_is_killed(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "STOP_TIMEOUT", 0.5)
    state = tmp_path / "state"
    state.mkdir()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(60)"
    # The stand-in carries the daemon's module name in its command line, as the real one does.
    with process(sys.executable, "-c", stubborn, "safeship.api.server") as daemon:
        assert daemon.stdout is not None and daemon.stdout.readline() == b"ready\n"  # SIGTERM is ignored now
        (state / "controller.json").write_text(json.dumps({"pid": daemon.pid, "port": 1}))
        lines = stop_server(str(config))
        daemon.wait(5)
        assert daemon.returncode == -9
    assert lines[0] == f"the controller (pid {daemon.pid}): killed (it did not stop within 0.5s of SIGTERM)"
    assert not (state / "controller.json").exists()
