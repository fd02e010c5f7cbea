"""A real controller process (`python -m safeship.api.server`), checked for what the security
review found: a webhook URL's credential never reaches its log (httpx logs requests at INFO with
the whole URL), its notifications are signed with a timestamp, it answers only Host headers that
name it, and its state folder, token, store and WAL are its user's alone."""

from __future__ import annotations

import http.client
import json
import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from livekit import Controller as LiveController
from livekit import Setup, controller_with, deploy, wait_final, wait_for

from safeship.api.client import ControllerClient
from safeship.signing import verify
from safeship.store import DeploymentRecord, EventRecord, Store

pytestmark = pytest.mark.live

CREDENTIAL = "qs-credential-5e0c2d71b8"  # in the webhook URL's query, as many receivers want it
SECRET = "whsec-security-live-a41f09"


class Receiver:
    """200 to every POST on 127.0.0.1; keeps path, signature header and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                seen.append((self.path, self.headers.get("X-Safeship-Signature", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token={CREDENTIAL}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """umask 022, under which a file opened without a mode is world-readable (0644); set before the
    controller starts, which inherits it."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _a_rollback(state_dir: Path) -> None:
    """A deployment that rolled back, written to the store as the engine writes one; the running
    controller's outbox picks its events up within a second."""
    store = Store(f"sqlite:///{state_dir}/state.db")
    try:
        record = DeploymentRecord(
            id="deploy-5ec0000001", service="user-service", environment="production", version="v1.3.0",
            from_version="v1.2.0", strategy="canary", strategy_reason="test", policy="safeship", phase="pending",
            step_index=0, plan=[], status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0,
            step_started_at=1.0)
        store.create_deployment(record, [EventRecord(record.id, 1.0, "created", "created")])
        current = record
        for phase in ("preparing", "progressing", "rolling_back", "rolled_back"):
            after = current.replace(phase=phase)
            current = store.save_transition(current, after, [
                EventRecord(record.id, 2.0, "phase", f"{record.id} {phase}", {"phase": phase})])
    finally:
        store.close()


def _get(port: int, path: str, host: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_real_controller_keeps_credentials_out_of_its_log_signs_and_checks_hosts(
        usual_umask: None, tmp_path: Path, receiver: Receiver) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)

    def edit(config: str) -> str:
        return config + (
            "notifications:\n"
            f"  - {{name: hook, type: webhook, url: '{receiver.url}', secret_file: hook.secret, timeout: 3s}}\n")

    with controller_with(tmp_path, edit) as setup:
        _a_rollback(setup.state_dir)
        wait_for(lambda: len(receiver.seen) >= 2, 30, "the controller's webhook notifications")
        port = int(json.loads((setup.state_dir / "controller.json").read_text())["port"])

        # Signed with a timestamp, to the URL as configured (the credential reaches the receiver).
        for path, header, body in receiver.seen:
            assert CREDENTIAL in path
            assert header.startswith("t=") and ",v1=" in header
            assert verify(SECRET.encode(), body, header)

        # DNS rebinding: a page on another name gets nothing, /healthz and /metrics included.
        for path in ("/healthz", "/metrics"):
            status, text = _get(port, path, "rebound.attacker.example")
            assert status == 400 and "not a name this controller answers to" in text
            assert _get(port, path, f"127.0.0.1:{port}")[0] == 200
            assert _get(port, path, f"localhost:{port}")[0] == 200
        assert ControllerClient(setup.state_dir).is_running()  # the CLI's own requests still pass

        # The state folder and what it holds are private.
        assert _mode(setup.state_dir) == 0o700
        assert _mode(setup.state_dir / "token") == 0o600
        assert _mode(setup.state_dir / "state.db") == 0o600
        assert _mode(setup.state_dir / "state.db-wal") == 0o600
    log = (tmp_path / "controller.log").read_text()
    assert "safeship controller listening" in log  # it is the controller's log
    assert CREDENTIAL not in log
    assert SECRET not in log


def test_instance_logs_are_private_under_the_usual_umask(
        usual_umask: None, setup: Setup, controller: LiveController) -> None:
    client = ControllerClient(setup.state_dir)
    done, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert done["phase"] == "succeeded", done["reason"]
    logs = sorted((setup.state_dir / "logs").rglob("*.log"))
    assert logs, "the instances wrote no log"
    for log in logs:
        assert _mode(log) == 0o600, log
    for folder in {log.parent for log in logs}:
        assert _mode(folder) == 0o700, folder
