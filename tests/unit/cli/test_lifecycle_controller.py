"""A controller that is not running, or a controller.json that lies: what the commands do.

Real console scripts on a `platform: local` config, with no controller running (a test that
started one by mistake stops it, by the PID /proc shows is that controller, when it ends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from safeship.api.client import ControllerClient
from safeship.api.daemons import is_controller_command
from safeship.api.server import stop_server
from safeship.config.loader import load_config
from safeship.config.models import DeploymentRequest
from safeship.engine.policies import policy_for
from safeship.engine.simulate import inert_engine
from safeship.errors import ControllerUnreachable
from safeship.locks import hold_lock, lock_holder
from safeship.store import Store

BIN = Path(sys.executable).parent
TOKEN = "t" * 40

CONFIG = """\
state_dir: {state}
store: {{url: "sqlite:///{state}/state.db"}}
environment_management:
  environments:
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    replicas: 1
    command: [python, -c, "import time; time.sleep(60)"]
    versions: [v1.2.0, v1.3.0]
    secrets: {secrets}
"""


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Path]:
    """A local-platform config whose state dir has a token and no controller; afterwards any
    controller and router daemon a command started (on the old code) are stopped by PID."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    token = state / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = tmp_path / "safeship.yaml"
    config.write_text(CONFIG.format(state=state, secrets="[]"))
    try:
        yield config
    finally:
        stop_server(str(config))


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[tuple[int, list[str]]]:
    """Another program on a loopback port that records every Authorization header sent to it."""
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _record(state: Path, pid: int, port: int) -> None:
    (state / "controller.json").write_text(json.dumps({"pid": pid, "host": "127.0.0.1", "port": port}))


def _submit(config: Path) -> str:
    """A pending deployment of the local platform, recorded in the store as a controller would."""
    loaded = load_config(config)
    store = Store(f"sqlite:///{config.parent / 'state' / 'state.db'}")
    try:
        record = inert_engine(loaded, store, policy_for=policy_for).submit(DeploymentRequest(
            service_name="user-service", version="v1.2.0", environment="production"))
    finally:
        store.close()
    return record.id


def _phase(config: Path, deployment_id: str) -> str:
    store = Store(f"sqlite:///{config.parent / 'state' / 'state.db'}")
    try:
        return store.get_deployment(deployment_id).phase
    finally:
        store.close()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SAFESHIP_CONFIG=""))


def _no_controller_started(config: Path) -> None:
    state = config.parent / "state"
    assert not (state / "controller.json").exists()
    assert not (state / "logs" / "controller.log").exists()


# ---------------------------------------------------------------- a stale controller.json


def test_the_token_is_never_sent_to_a_port_a_dead_controller_recorded(
        local: Path, stranger: tuple[int, list[str]]) -> None:
    port, seen = stranger
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    _record(local.parent / "state", dead.pid, port)
    client = ControllerClient(local.parent / "state")
    assert not client.is_running()
    with pytest.raises(ControllerUnreachable, match=f"pid {dead.pid} no longer runs"):
        client.get("deploy-1")
    assert seen == []


def test_the_token_is_never_sent_to_a_process_that_is_not_a_safeship_controller(
        local: Path, stranger: tuple[int, list[str]]) -> None:
    port, seen = stranger  # this test's own process listens there: alive, but not a controller
    _record(local.parent / "state", os.getpid(), port)
    client = ControllerClient(local.parent / "state")
    with pytest.raises(ControllerUnreachable, match=f"pid {os.getpid()} is not a safeship controller"):
        client.cancel("deploy-1")
    assert seen == []


def test_the_token_is_never_sent_to_a_port_the_recorded_controller_does_not_own(
        local: Path, stranger: tuple[int, list[str]]) -> None:
    port, seen = stranger
    # a process whose command line is the controller's, listening nowhere
    looks_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "safeship.api.server"])
    try:
        _record(local.parent / "state", looks_like.pid, port)
        client = ControllerClient(local.parent / "state")
        with pytest.raises(ControllerUnreachable, match=f"does not listen on port {port}"):
            client.get("deploy-1")
    finally:
        looks_like.kill()
        looks_like.wait(10)
    assert seen == []


def test_cancel_with_a_stale_record_is_queued_and_sends_no_token(
        local: Path, stranger: tuple[int, list[str]]) -> None:
    port, seen = stranger
    deployment_id = _submit(local)
    _record(local.parent / "state", os.getpid(), port)
    done = run("deployment-engine", "--cancel", "--deployment-id", deployment_id, "--config", str(local))
    assert done.returncode == 3, done.stderr
    assert "queued: the controller will act when it runs" in done.stdout
    assert "is not a safeship controller" in done.stdout
    assert seen == []
    assert _phase(local, deployment_id) == "rolling_back"  # recorded for the next controller


# ---------------------------------------------------------------- nothing runs


def test_cancel_with_no_controller_says_it_is_queued_and_exits_3(local: Path) -> None:
    deployment_id = _submit(local)
    done = run("deployment-engine", "--cancel", "--deployment-id", deployment_id, "--config", str(local))
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith(f"{deployment_id}: queued: the controller will act when it runs")
    assert "traffic returns to" not in done.stdout
    assert _phase(local, deployment_id) == "rolling_back"
    _no_controller_started(local)


def test_a_refused_rollback_starts_no_controller(local: Path) -> None:
    deployment_id = _submit(local)  # a first deployment: nothing earlier to return to
    done = run("rollback-manager", "--rollback", "--deployment-id", deployment_id, "--config", str(local))
    assert done.returncode == 2, done.stderr
    assert "no earlier stable version" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert _phase(local, deployment_id) == "pending"  # nothing changed
    _no_controller_started(local)


def test_a_rollback_with_no_controller_is_queued(local: Path) -> None:
    deployment_id = _submit(local)
    done = run("rollback-manager", "--rollback", "--deployment-id", deployment_id, "--force", "--config", str(local))
    assert done.returncode == 3, done.stderr
    assert "queued: the controller will act when it runs" in done.stdout
    assert _phase(local, deployment_id) == "rolling_back"
    _no_controller_started(local)


def test_a_deploy_refused_for_a_missing_secret_starts_no_controller(local: Path) -> None:
    local.write_text(CONFIG.format(state=local.parent / "state", secrets="[DB_PASSWORD]"))
    done = run("deployment-engine", "--deploy", "--service", "user-service", "--version", "v1.2.0",
               "--environment", "production", "--config", str(local))
    assert done.returncode == 2, done.stderr
    assert "DB_PASSWORD" in done.stderr
    _no_controller_started(local)


def test_approving_what_does_not_await_approval_starts_no_controller(local: Path) -> None:
    deployment_id = _submit(local)
    done = run("deployment-engine", "--approve", "--deployment-id", deployment_id, "--config", str(local))
    assert done.returncode == 2, done.stderr
    assert "not awaiting approval" in done.stderr
    _no_controller_started(local)


# ---------------------------------------------------------------- one controller per state dir


def test_a_second_controller_exits_2_naming_the_pid_that_holds_the_lock(local: Path) -> None:
    state = local.parent / "state"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from safeship.locks import hold_lock; "
        f"h = hold_lock(Path({str(state / 'controller.lock')!r})); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = subprocess.run([str(BIN / "safeship"), "server", "--config", str(local)],
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait(10)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: another safeship controller (pid {holder.pid}) holds {state / 'controller.lock'}, so this one "
        f"does not start; stop it with `safeship server --stop --config {local}`"]
    assert not (state / "router.json").exists()  # it opened nothing


def test_a_second_router_daemon_exits_2_naming_the_pid_that_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "router.lock"
    held = hold_lock(lock)
    try:
        done = subprocess.run([sys.executable, "-m", "safeship.routing.daemon", "--socket", str(tmp_path / "r.sock"),
                               "--info", str(tmp_path / "router.json")], capture_output=True, text=True, timeout=60)
    finally:
        held.close()
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: another router daemon (pid {os.getpid()}) holds {lock}, so this one "
                                   "does not start")
    assert not (tmp_path / "router.json").exists()


def test_the_lock_names_its_holder_and_is_free_once_closed(tmp_path: Path) -> None:
    lock = tmp_path / "controller.lock"
    held = hold_lock(lock)
    assert lock_holder(lock) == os.getpid()
    held.close()
    assert lock_holder(lock) is None


@pytest.mark.parametrize(("argv", "expected"), [
    (["/usr/bin/python3", "-m", "safeship.api.server", "--config", "x.yaml"], True),
    (["/v/bin/python", "/v/bin/safeship", "server", "--config", "x.yaml"], True),
    (["/v/bin/python", "/v/bin/safeship", "server"], True),
    (["python", "-m", "safeship.cli.main", "server", "--port", "0"], True),
    (["/v/bin/python", "/v/bin/safeship", "server", "--stop"], False),
    (["/v/bin/python", "/v/bin/safeship", "simulate", "--scenario", "server"], False),
    (["python", "-m", "safeship.routing.daemon", "--socket", "s"], False),
])
def test_every_way_the_controller_is_started_is_recognised(argv: list[str], expected: bool) -> None:
    assert is_controller_command(argv) is expected
