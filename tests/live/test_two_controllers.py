"""Two real controller processes (`python -m safeship.api.server`) on one store, through a whole
canary, on SQLite and on PostgreSQL: the one driving the deployment is paused with SIGSTOP past
its lease, the other takes the deployment over, then the paused one is resumed with SIGCONT.

The world is sharedworld.py's (instances are rows of the shared store, each controller has its own
router): neither built-in platform can be shared by two controllers (see that module). What is
asserted is what the store holds afterwards: every step applied once, every phase entered once,
no event or row written under the stale lease once the other controller took it, the deployment
succeeded; and the resumed controller's own log saying it lost the lease and stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from safeship.api.client import ControllerClient
from safeship.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "store"))
import pgkit

pytestmark = [pytest.mark.live, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVICE, ENV = "shop", "production"
FINAL = {"succeeded", "rolled_back", "failed", "cancelled"}
LEASE_S = 2.0

CONFIG = """\
state_dir: {state_dir}
store: {{url: "{store_url}", lease_duration: {lease}s, lease_renew_interval: 0.5s}}
router_process: false
intelligent_deployment:
  strategies:
    canary: {{traffic_percentages: [20, 50, 100], step_duration: 2s, min_step_duration: 0.5s}}
  rollback:
    monitoring: {{duration: 1s, interval: 0.25s}}
  analysis: {{interval: 0.25s}}
environment_management:
  environments:
    - {{name: {env}, type: production, platform: shared-sim}}
services:
  {service}:
    replicas: 2
    versions: [v1, v2]
"""


class Server:
    def __init__(self, name: str, config: Path, state_dir: Path, log: Path) -> None:
        self.name, self.config, self.state_dir, self.log = name, config, state_dir, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(HERE / "twoctl_server.py"), "--config",
                                             str(self.config)], cwd=self.state_dir.parent, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def wait_started(self) -> None:
        assert self.process is not None
        client = ControllerClient(self.state_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = client.info()
            if info and info["pid"] == self.pid and client.is_running():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"controller {self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    with pgkit.running() as server:
        yield server.new_database()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def test_two_controllers_share_one_store_and_a_paused_one_cannot_write(store_url: str, tmp_path: Path) -> None:
    servers = []
    for name in ("a", "b"):
        state_dir = tmp_path / name
        config = tmp_path / f"{name}.yaml"
        config.write_text(CONFIG.format(state_dir=state_dir, store_url=store_url, lease=LEASE_S, env=ENV,
                                        service=SERVICE))
        servers.append(Server(name, config, state_dir, tmp_path / f"{name}.log"))
    store = Store(store_url)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_started()
        clients = {s.name: ControllerClient(s.state_dir) for s in servers}
        body = {"service_name": SERVICE, "environment": ENV}

        def final(client: ControllerClient, deployment_id: str) -> dict[str, Any]:
            return _wait(lambda: (d := client.get(deployment_id))["phase"] in FINAL and d, 120,
                         f"{deployment_id} to end")

        first = clients["a"].deploy(body | {"version": "v1"})
        assert final(clients["a"], first["id"])["phase"] == "succeeded"

        canary = clients["a"].deploy(body | {"version": "v2", "deployment_strategy": "canary"})
        deployment_id = canary["id"]
        # paused in the middle of the canary, by whichever controller drives it
        _wait(lambda: store.get_deployment(deployment_id).phase == "progressing"
              and store.get_deployment(deployment_id).step_index >= 3, 60, "the canary's first steps")
        lease = store.lease(deployment_id)
        assert lease is not None and lease.holder
        driver = next(s for s in servers if lease.holder.split(":")[1] == str(s.pid))
        other = next(s for s in servers if s is not driver)
        paused_at = store.get_deployment(deployment_id)
        os.kill(driver.pid, signal.SIGSTOP)
        try:
            taken = _wait(lambda: (held := store.lease(deployment_id)) is not None
                          and held.holder.split(":")[1] == str(other.pid) and held, LEASE_S + 20,
                          f"controller {other.name} to take the lease over")
            assert taken.token == lease.token + 1
            _wait(lambda: (store.get_deployment(deployment_id).phase, store.get_deployment(deployment_id).step_index)
                  != (paused_at.phase, paused_at.step_index), 60, f"controller {other.name} to move the deployment")
        finally:
            os.kill(driver.pid, signal.SIGCONT)
        ended = final(clients[other.name], deployment_id)
        assert ended["phase"] == "succeeded", ended.get("reason")
        _wait(lambda: f"deployment {deployment_id}: lease lost" in driver.log.read_text(), 20,
              f"controller {driver.name} to notice that it lost the lease")
    finally:
        for server in servers:
            server.terminate()  # both at once: each drains for a moment
        for server in servers:
            server.stop()
    try:
        record = store.get_deployment(deployment_id)
        events = store.events(deployment_id)
        with store.engine.connect() as conn:
            tokens = [(row.kind, row.fencing_token) for row in conn.execute(text(
                "SELECT kind, fencing_token FROM events WHERE deployment_id = :id ORDER BY id"), {"id": deployment_id})]
            row_token = conn.execute(text("SELECT fencing_token FROM deployments WHERE id = :id"),
                                     {"id": deployment_id}).scalar()
        released = store.lease(deployment_id)
    finally:
        store.close()

    # every step applied once, every phase entered once, the promotion once
    kinds = Counter(e.kind for e in events)
    phases = [e.data.get("phase") for e in events if e.kind == "phase"]
    assert len(phases) == len(set(phases)), phases
    assert phases[-1] == "succeeded"
    weights_steps = [s for s in record.plan if s["kind"] == "weights"]
    weights_events = [e.message for e in events if e.kind == "weights"]
    assert len(weights_events) == len(weights_steps) == len(set(weights_events)), weights_events
    assert kinds["promoted"] == 1
    judged = [s["kind"] for s in record.plan if s["kind"] in ("analyze", "monitor")]
    assert kinds["analysis_passed"] == len(judged), (kinds, [s["kind"] for s in record.plan])
    # nothing written under the stale token once the other controller had taken the lease
    written = [token for _, token in tokens if token is not None]
    assert written == sorted(written), tokens
    assert {lease.token, taken.token} <= set(written)
    assert row_token == taken.token
    assert released is not None and released.holder == "" and released.token == taken.token
    log = driver.log.read_text()
    assert f"deployment {deployment_id}: lease lost" in log
    assert "Traceback" not in log, log[-3000:]
    print(f"\n{store_url.split(':')[0]}: steps {len(record.plan)}, weights steps applied "
          f"{len(weights_events)}, phases {phases}, tokens {lease.token}->{taken.token}, "
          f"paused at step {paused_at.step_index} ({paused_at.phase}); {driver.name}'s log: "
          + "; ".join(line.split(": ", 2)[-1] for line in log.splitlines() if "lease lost" in line))


async def test_a_controller_paused_mid_tick_has_its_write_refused_and_stops(tmp_path: Path) -> None:
    """In process, deterministically: controller a's tick is held inside the platform call (its
    pause), its lease expires and b takes the deployment over and moves it; then a's tick goes
    on and tries to save what it computed from the row it read before: refused, a stops."""
    import asyncio

    from sharedworld import PLATFORM, ROUTER, register

    from safeship import platforms, routing
    from safeship.api.controller import Controller
    from safeship.config.loader import load_config
    from safeship.config.models import DeploymentRequest
    from safeship.routing.base import RouteKey

    register()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    clock = [1000.0]  # the leases' wall clock, moved by the test
    controllers = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(CONFIG.format(state_dir=tmp_path / name, store_url=url, lease=LEASE_S, env=ENV,
                                      service=SERVICE))
        controller = Controller(load_config(path), state_dir=tmp_path / name, store=Store(url))
        controller.leases.now = lambda: clock[0]
        controllers.append(controller)
    a, b = controllers
    key = RouteKey(SERVICE, ENV)
    gate = asyncio.Event()
    platform = a.parts.platforms[ENV]
    listed = platform.instances

    async def held(service: str, environment: str) -> Any:
        await gate.wait()  # a is "paused" here, in the middle of a tick
        return await listed(service, environment)

    platform.instances = held
    try:
        for controller in controllers:
            controller._locks[key] = asyncio.Lock()
            await controller.router.ensure_route(key)
        record = a.submit(DeploymentRequest(service_name=SERVICE, version="v1", environment=ENV))
        driving = asyncio.create_task(a._drive(record.id, key))
        for _ in range(200):  # a moves it to progressing, then waits in the platform call
            await asyncio.sleep(0.01)
            if a.store.get_deployment(record.id).phase == "progressing":
                break
        before = a.store.get_deployment(record.id)
        assert before.phase == "progressing" and not driving.done()

        clock[0] += LEASE_S + 1  # a's lease expires while it is held
        taken = b.leases.take(record.id)
        assert taken is not None and taken.taken_over
        for _ in range(3):
            await b.engine.advance(record.id)
        moved = b.store.get_deployment(record.id)
        assert moved.row_version > before.row_version

        gate.set()  # a resumes, its tick finishes and tries to save
        await asyncio.wait_for(driving, 10)
        assert record.id in a.leases.lost and a.leases.refusals == 1 and a.store.refused_writes == 1
        after = b.store.get_deployment(record.id)
        assert after == moved  # nothing of a's landed
        with b.store.engine.connect() as conn:
            tokens = [t for (t,) in conn.execute(text(
                "SELECT fencing_token FROM events WHERE deployment_id = :id AND fencing_token IS NOT NULL "
                "ORDER BY id"), {"id": record.id})]
        assert tokens == sorted(tokens) and tokens[-1] == taken.token
    finally:
        gate.set()
        for controller in controllers:
            controller.store.close()
        platforms.PLATFORMS.pop(PLATFORM, None)  # registered for this test only
        routing.ROUTERS.pop(ROUTER, None)
