"""The controller daemon end to end: a real server process, real service processes, real HTTP.

A load generator (its own thread and event loop, ~100 req/s) hits the route port throughout, so
the assertions are on what users saw: the phases, the rollback row, the failed requests.

Cleanup, even on failure: the controller is stopped (SIGTERM, then SIGKILL), then every service
PID the ledger ever recorded is SIGKILLed, and as a backstop every process that carries this
test's marker in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from safeship.api.client import ControllerClient
from safeship.errors import ConflictError, ControllerUnreachable, InputError, NotFoundError
from safeship.store import Store

pytestmark = [pytest.mark.live, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MARK = "SAFESHIP_TEST_MARK"
SERVICE, ENV = "user-service", "production"
ROUTE = f"{ENV}/{SERVICE}"
FINAL = {"succeeded", "rolled_back", "failed", "cancelled"}

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
intelligent_deployment:
  strategies:
    canary: {{traffic_percentages: [25, 50, 100], step_duration: 3s, min_step_duration: 1s}}
  health_checks:
    liveness: {{type: http, path: /health/live, interval: 0.5s, timeout: 1s, failure_threshold: 3}}
    readiness: {{type: http, path: /health/ready, interval: 0.25s, timeout: 1s, failure_threshold: 2}}
  rollback:
    triggers:
      - {{type: health_check_failure, timeout: 10s}}
      - {{type: error_rate_threshold, threshold: 0.05, duration: 2s}}
    monitoring: {{duration: 2s, interval: 0.5s}}
    rollback_timeout: 20s
  analysis: {{interval: 0.5s}}
environment_management:
  environments:
    - {{name: {env}, type: production, platform: local}}
services:
  {service}:
    replicas: 2
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0, v1.4.0, v1.5.0, v1.6.0]
    grace_period: 5s
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
    """`python -m safeship.api.server` as a child of the test."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.process: subprocess.Popen[bytes] | None = None
        self.log = setup.state_dir.parent / "controller.log"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "safeship.api.server", "--config", str(self.setup.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        client = ControllerClient(self.setup.state_dir)
        deadline = time.monotonic() + 20
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
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
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


class Load:
    """Steady traffic to the route port from its own thread; every request's outcome is kept."""

    def __init__(self, port: int, *, rate: float = 100.0, workers: int = 8, max_s: float = 240.0):
        self.port, self.rate, self.workers, self.max_s = port, rate, workers, max_s
        self.results: list[tuple[float, int | None]] = []  # (time, HTTP status or None: no answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as http:
            await asyncio.gather(*(self._worker(http, i) for i in range(self.workers)))

    async def _worker(self, http: httpx.AsyncClient, index: int) -> None:
        period = self.workers / self.rate
        started = time.monotonic()
        next_at = started + index * period / self.workers
        url = f"http://127.0.0.1:{self.port}/users/{index}"
        while not self._stop.is_set() and time.monotonic() - started < self.max_s:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            try:
                status: int | None = (await http.get(url)).status_code
            except httpx.HTTPError:
                status = None
            self.results.append((time.time(), status))

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(requests, failed) answered between start and end; failed = 5xx or no answer."""
        inside = [s for t, s in list(self.results) if start <= t <= end]
        return len(inside), sum(1 for s in inside if s is None or s >= 500)


# ---------------------------------------------------------------- helpers


def deploy(client: ControllerClient, version: str, **extra: Any) -> dict[str, Any]:
    body = {"service_name": SERVICE, "version": version, "environment": ENV}
    return client.deploy(body | {"deployment_strategy": "canary"} | extra)


def wait_final(
    client: ControllerClient, deployment_id: str, timeout: float = 120.0
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


# ---------------------------------------------------------------- tests


def test_canary_rolls_back_a_bad_release_and_ships_a_good_one(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    with Load(port) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]
        assert versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"]

        bad = deploy(client, "v1.3.0")
        assert bad["from_version"] == "v1.2.0"
        with pytest.raises(ConflictError, match="already has deployment"):
            deploy(client, "v1.4.0")
        second, phases = wait_final(client, bad["id"])
        assert second["phase"] == "rolled_back", second["reason"]
        assert "rolling_back" in phases
        rows = client.rollbacks(SERVICE)
        assert [(r["deployment_id"], r["from_version"], r["to_version"]) for r in rows] == [
            (bad["id"], "v1.3.0", "v1.2.0")
        ]
        assert rows[0]["automatic"] is True and rows[0]["success"] is True
        wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 15, "v1.3.0 to stop")

        started = time.time()
        good = deploy(client, "v1.4.0")
        third, phases = wait_final(client, good["id"])
        ended = time.time()
        total, failed = load.window(started, ended)
        rate = total / (ended - started)
        print(
            f"\nv1.4.0 canary: {total} requests in {ended - started:.1f}s ({rate:.0f}/s), "
            f"{failed} failed; phases {phases}"
        )
        assert third["phase"] == "succeeded", third["reason"]
        assert {"progressing", "monitoring"} <= set(phases)
        assert rate >= 50
        assert failed == 0
        assert third["metrics"]["v1.4.0"]["requests"] > 0
        assert third["metrics"]["v1.3.0"]["error_rate"] > 0.02

    wait_for(lambda: versions_in_ledger(setup) == ["v1.4.0", "v1.4.0"], 15, "v1.2.0 to stop")
    history = client.history(SERVICE)
    assert [d["version"] for d in history["deployments"]] == ["v1.4.0", "v1.3.0", "v1.2.0"]
    assert len(history["rollbacks"]) == 1
    [environment] = client.environments()
    assert environment["services"][0]["current_version"] == "v1.4.0"
    assert environment["services"][0]["port"] == port


def test_a_controller_killed_mid_deployment_adopts_its_instances_and_finishes(
    setup: Setup, controller: Controller
) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    with Load(port) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]
        candidate = deploy(client, "v1.4.0")
        wait_for(lambda: client.get(candidate["id"])["weights"].get("v1.4.0", 0) > 0, 30, "canary traffic")
        before = setup.pids()
        assert sorted(before) == [f"{ENV}/{SERVICE}/v1.2.0-0", f"{ENV}/{SERVICE}/v1.2.0-1", f"{ENV}/{SERVICE}/v1.4.0-0"]

        killed_at = time.time()
        controller.kill9()
        assert all(alive(pid) for pid in before.values())
        with pytest.raises(ControllerUnreachable):
            client.get(candidate["id"])
        controller.start()
        back_at = time.time()
        assert client.routes()[ROUTE] == port  # the same port: clients reconnect where they were
        after = setup.pids()
        assert {k: after[k] for k in before if k in after} == before  # adopted, not restarted

        final, phases = wait_final(client, candidate["id"])
        assert "progressing" in phases or "monitoring" in phases
        assert final["phase"] == "succeeded", final["reason"]
        down_total, down_failed = load.window(killed_at, back_at)
        total, failed = load.window(back_at, time.time())
        print(
            f"\nkill -9 mid-canary: controller down {back_at - killed_at:.1f}s, {down_failed} of "
            f"{down_total} requests failed meanwhile; after the restart {failed} of {total} failed"
        )
        assert failed == 0
    wait_for(lambda: versions_in_ledger(setup) == ["v1.4.0", "v1.4.0"], 15, "v1.2.0 to stop")
    assert before[f"{ENV}/{SERVICE}/v1.4.0-0"] == setup.pids()[f"{ENV}/{SERVICE}/v1.4.0-0"]
    for instance, pid in before.items():
        if "v1.2.0" in instance:
            wait_for(lambda pid=pid: not alive(pid), 15, f"{instance} to exit")


def test_the_api_needs_the_token_and_answers_bad_input_in_one_sentence(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    base = client.base_url()
    assert (setup.state_dir / "token").stat().st_mode & 0o777 == 0o600
    assert httpx.get(base + "/deployments").status_code == 401
    wrong = httpx.get(base + "/deployments", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(base + "/healthz").status_code == 200
    metrics = httpx.get(base + "/metrics")
    assert metrics.status_code == 200 and "safeship_unrouted_requests_total" in metrics.text

    headers = {"Authorization": f"Bearer {client.token()}"}
    missing = httpx.post(base + "/deployments", json={"service_name": SERVICE}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["detail"] == "request body: version: required field is missing"
    not_json = httpx.post(base + "/deployments", content=b"{", headers=headers)
    assert not_json.status_code == 422
    unknown = httpx.post(
        base + "/deployments", json={"service_name": "nope", "version": "v1", "environment": ENV}, headers=headers
    )
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    with pytest.raises(InputError, match="unknown policy 'nope'"):
        deploy(client, "v1.2.0", policy="nope")
    with pytest.raises(NotFoundError):
        client.get("deploy-missing")
    assert client.list(service=SERVICE) == []

    assert client.stop()
    assert client.info() is None
    assert not client.is_running()
    with pytest.raises(ControllerUnreachable):
        client.list()

    try:  # the CLI's path: start a detached controller when none answers
        assert client.ensure_running(setup.config)
        assert not client.ensure_running(setup.config)
        assert client.environments()[0]["name"] == ENV
    finally:
        info = client.info()
        assert client.stop()
        if info is not None and alive(int(info["pid"])):
            os.kill(int(info["pid"]), signal.SIGKILL)


def test_instances_that_die_or_never_get_ready_get_no_traffic(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    with Load(client.routes()[ROUTE]) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]

        victim_id = f"{ENV}/{SERVICE}/v1.2.0-0"
        victim = setup.pids()[victim_id]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: setup.pids().get(victim_id) not in (None, victim), 15, "the platform to restart it")
        wait_for(lambda: client.get(first["id"])["metrics"]["v1.2.0"]["requests"] > 0, 5, "traffic")
        time.sleep(2.0)  # the restarted instance is probed ready and serves again
        total, failed = load.window(killed_at, time.time())
        print(f"\nkill -9 of one v1.2.0 instance: {failed} of {total} requests failed")
        assert failed <= 2  # only requests cut mid-response can fail; the router retries the rest

        started = time.time()
        cli = [str(Path(sys.executable).parent / "deployment-engine"), "--deploy", "--service", SERVICE,
               "--version", "v1.5.0", "--environment", ENV, "--strategy", "canary",
               "--config", str(setup.config), "--json"]  # fmt: skip
        ran = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 1, ran.stderr  # DESIGN.md: 1 = rolled back
        final = json.loads(ran.stdout)
        total, failed = load.window(started, time.time())
        print(f"v1.5.0 (never ready): {final['phase']} ({final['reason']}); {failed} of {total} requests failed")
        assert final["phase"] == "rolled_back"
        assert final["evidence"]["trigger"] == "health_check_failure"
        assert failed == 0
    wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 15, "v1.5.0 to stop")
    info = client.info()
    assert info is not None and controller.process is not None
    assert info["pid"] == controller.process.pid  # the CLI used the running controller
