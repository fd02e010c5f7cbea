"""Shared by the live tests: a controller process on a temp state dir, a bounded load generator,
and cleanup that kills every service process a test started (by the PIDs the ledger recorded, and
by a marker in their environment), even when the test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safeship.api.client import ControllerClient
from safeship.loadgen import LoadGenerator, failed
from safeship.routing.remote import stop_daemon
from safeship.store import Store

REPO = Path(__file__).resolve().parents[2]
MARK = "SAFESHIP_TEST_MARK"
SERVICE, ENV = "user-service", "production"
ROUTE = f"{ENV}/{SERVICE}"
FINAL = {"succeeded", "rolled_back", "failed", "cancelled"}
# Fewest requests a window must hold before "none of them failed" means anything. Small enough for
# a busy 2-core machine (the generator asks 100+ req/s; a deployment's switch lasts seconds).
MIN_REQUESTS = 20

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
intelligent_deployment:
  strategies:
    canary: {{traffic_percentages: [25, 50, 100], step_duration: 3s, min_step_duration: 1s}}
    blue_green: {{health_check_timeout: 20s, scale_down_delay: 2s, post_switch_analysis: 3s}}
    rolling: {{max_surge: 1, max_unavailable: 0, step_analysis: 1s, min_instance_seconds: 5s}}
    recreate: {{max_wait: 15s, analysis: 2s}}
  health_checks:
    liveness: {{type: http, path: /health/live, interval: 0.5s, timeout: 1s, failure_threshold: 3}}
    readiness: {{type: http, path: /health/ready, interval: 0.25s, timeout: 1s, failure_threshold: 2}}
  rollback:
    triggers:
      - {{type: health_check_failure, timeout: 10s}}
      - {{type: error_rate_threshold, threshold: 0.05, duration: 2s}}
    monitoring: {{duration: 2s, interval: 0.5s}}
    rollback_timeout: 20s
  analysis: {{interval: 0.5s, confirm_duration: 10s}}
environment_management:
  environments:
    - {{name: {env}, type: production, platform: local}}
services:
  {service}:
    replicas: 2
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0, v1.4.0, v1.5.0, v1.6.0]
    grace_period: 5s
    ports: {{{env}: 0}}  # any free port: a test must not want one another run may hold
    env: {{{mark}: "{mark_value}"}}
"""


# ---------------------------------------------------------------- processes


@dataclass
class Setup:
    config: Path
    state_dir: Path
    mark: str
    seen_pids: set[int] = field(default_factory=set)

    def ledger(self) -> list[dict[str, Any]]:
        store = Store(f"sqlite:///{self.state_dir}/state.db")
        try:
            records: list[dict[str, Any]] = [dict(r) for r in store.load_instances()]
        finally:
            store.close()
        self.seen_pids |= {int(r["pid"]) for r in records if r.get("pid")}
        return records

    def pids(self) -> dict[str, int]:
        return {str(r["id"]): int(r["pid"]) for r in self.ledger() if r.get("pid")}


class Controller:
    """`python -m safeship.api.server` as a child of the test, with extra environment `env`."""

    def __init__(self, setup: Setup, env: dict[str, str] | None = None) -> None:
        self.setup = setup
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = setup.state_dir.parent / "controller.log"

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO), **self.env)

    def start(self) -> None:
        command = [sys.executable, "-m", "safeship.api.server", "--config", str(self.setup.config)]
        with open(self.log, "ab") as log:
            log.write(f"\n==== controller start, {self.env}\n".encode())
            self.process = subprocess.Popen(command, cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        client = ControllerClient(self.setup.state_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = client.info()
            if info and info["pid"] == self.process.pid and client.is_running():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"controller did not start:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, for one a test stopped), then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _is_service(pid: int, mark: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK}={mark}".encode() in environ


def _marked(mark: str) -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_service(int(p.name), mark)}


def _kill_services(setup: Setup) -> None:
    with contextlib.suppress(Exception):
        stop_daemon(setup.state_dir)  # the router daemon the controller started
    with contextlib.suppress(Exception):
        setup.ledger()
    for pid in setup.seen_pids | _marked(setup.mark):
        if _is_service(pid, setup.mark):  # never a PID that is no longer ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    state_dir = tmp_path / "state"
    mark = uuid.uuid4().hex
    config = tmp_path / "safeship.yaml"
    config.write_text(CONFIG.format(state_dir=state_dir, env=ENV, service=SERVICE, mark=MARK, mark_value=mark))
    made = Setup(config, state_dir, mark)
    try:
        yield made
    finally:
        _kill_services(made)


@contextlib.contextmanager
def controller_with(tmp_path: Path, edit: Callable[[str], str]) -> Iterator[Setup]:
    """A running controller whose config is CONFIG passed through `edit`; stopped and cleaned after."""
    state_dir = tmp_path / "state"
    mark = uuid.uuid4().hex
    config = tmp_path / "safeship.yaml"
    config.write_text(edit(CONFIG.format(state_dir=state_dir, env=ENV, service=SERVICE, mark=MARK, mark_value=mark)))
    made = Setup(config, state_dir, mark)
    running = Controller(made)
    try:
        running.start()
        yield made
    finally:
        running.stop()
        _kill_services(made)


@pytest.fixture
def controller(setup: Setup) -> Iterator[Controller]:
    running = Controller(setup)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        _kill_services(setup)


# ---------------------------------------------------------------- load


class Load(LoadGenerator):
    """The package's bounded open-loop generator, sending to the route port on loopback."""

    def __init__(self, port: int, *, rate: float = 100.0, max_s: float = 600.0,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__("127.0.0.1", port, rate=rate, max_s=max_s, max_outstanding=512, tls=tls)

    @property
    def results(self) -> list[tuple[float, int | None]]:
        return [(o.sent_at, o.status) for o in list(self.outcomes)]

    def window(self, start: float, end: float) -> tuple[int, int]:  # type: ignore[override]
        """(requests, failed) sent between start and end; failed = 5xx or no answer."""
        inside = super().window(start, end)
        return len(inside), failed(inside)

    def none_failed(self, start: float, end: float, what: str) -> int:
        """Asserts that at least MIN_REQUESTS requests were sent between start and end and that none
        failed; returns how many were sent. Counts only: a slow machine sends fewer, never fails more."""
        total, failures = self.window(start, end)
        print(f"\n{what}: {failures} of {total} requests failed")
        assert total >= MIN_REQUESTS, f"only {total} requests were sent during {what}: too few to judge"
        assert failures == 0, f"{failures} of {total} requests failed during {what}"
        return total


# ---------------------------------------------------------------- helpers


def deploy(client: ControllerClient, version: str, **extra: Any) -> dict[str, Any]:
    body = {"service_name": SERVICE, "version": version, "environment": ENV}
    return client.deploy(body | {"deployment_strategy": "canary"} | extra)


def wait_final(
    client: ControllerClient, deployment_id: str, timeout: float = 240.0
) -> tuple[dict[str, Any], list[str]]:
    """Poll until the deployment ends; returns the last view and the phases seen, in order."""
    phases: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(deployment_id)
        if not phases or phases[-1] != data["phase"]:
            phases.append(data["phase"])
        if data["phase"] in FINAL:
            return data, phases
        time.sleep(0.2)
    raise AssertionError(f"{deployment_id} did not end in {timeout}s; phases {phases}")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def versions_in_ledger(setup: Setup) -> list[str]:
    return sorted(str(r["version"]) for r in setup.ledger())


