"""`safeship logs`: a service's instance logs and the controller's log, through the console script."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

CONFIG = """\
state_dir: {state}
environment_management:
  environments:
    - {{name: staging, type: staging, platform: local}}
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    command: [python, -c, "pass"]
  other:
    command: [python, -c, "pass"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    logs = state / "logs"
    for env, name, text in [
        ("production", "v1.2.0-0.log", "ready on 20001\n"),
        ("production", "v1.3.0-rc.1-0.log", "Traceback (most recent call last):\nOSError: Address already in use\n"),
        ("staging", "v1.3.0-rc.1-0.log", "staging line\n"),
    ]:
        (logs / env / "user-service").mkdir(parents=True, exist_ok=True)
        (logs / env / "user-service" / name).write_text(text)
    (logs / "production" / "other").mkdir(parents=True)
    (logs / "production" / "other" / "v9-0.log").write_text("not this service\n")
    (logs / "controller.log").write_text("INFO safeship controller listening\n")
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state=state))
    return path


def logs(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "safeship"), "logs", "--config", str(config), *argv],
                          capture_output=True, text=True, timeout=60)


def test_it_prints_the_instance_logs_of_one_version_and_the_controllers(config: Path) -> None:
    done = logs(config, "--service", "user-service", "--environment", "production", "--version", "v1.3.0-rc.1")
    assert done.returncode == 0, done.stderr
    state = config.parent / "state" / "logs"
    assert done.stdout.splitlines() == [
        f"==> production/user-service/v1.3.0-rc.1-0 ({state / 'production/user-service/v1.3.0-rc.1-0.log'}) <==",
        "Traceback (most recent call last):",
        "OSError: Address already in use",
        f"==> controller ({state / 'controller.log'}) <==",
        "INFO safeship controller listening",
    ]


def test_without_environment_or_version_it_prints_every_instance_of_the_service(config: Path) -> None:
    done = logs(config, "--service", "user-service", "--lines", "1")
    assert done.returncode == 0, done.stderr
    headers = [line.split(" (")[0] for line in done.stdout.splitlines() if line.startswith("==>")]
    assert headers == ["==> staging/user-service/v1.3.0-rc.1-0", "==> production/user-service/v1.2.0-0",
                       "==> production/user-service/v1.3.0-rc.1-0", "==> controller"]
    assert "not this service" not in done.stdout
    assert "Traceback" not in done.stdout  # --lines 1


def test_an_unknown_service_is_one_sentence_and_exit_2(config: Path) -> None:
    done = logs(config, "--service", "nope")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "'nope'" in done.stderr


def _lines_until(follower: subprocess.Popen[bytes], wanted: str, timeout: float) -> list[str]:
    """What the follower printed until a line containing `wanted`, or until `timeout` passed."""
    assert follower.stdout is not None
    fd, buffer = follower.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while wanted.encode() not in buffer and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:
            break  # it exited
        buffer += chunk
    return buffer.decode().splitlines()


def test_follow_prints_what_a_log_gets_next(config: Path) -> None:
    log = config.parent / "state" / "logs" / "production" / "user-service" / "v1.2.0-0.log"
    follower = subprocess.Popen([str(BIN / "safeship"), "logs", "--config", str(config), "--service", "user-service",
                                 "--environment", "production", "--version", "v1.2.0", "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert "ready on 20001" in _lines_until(follower, "INFO safeship controller listening", 30)
        with open(log, "a") as handle:
            handle.write("served 1 request\n")
        assert _lines_until(follower, "served", 30)[-1:] == ["[production/user-service/v1.2.0-0] served 1 request"]
    finally:
        follower.kill()
        follower.wait(10)
