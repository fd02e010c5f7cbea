"""Notifications from a real controller process to real HTTP receivers on loopback.

A webhook receiver refuses (500) every notification while a deployment runs, so each event is
committed and tried but not delivered; the controller is then killed with SIGKILL (by its PID),
the receiver starts answering 200, and a new controller on the same state dir delivers every
event after the restart. The receiver drops duplicates by the `Idempotency-Key` header, and then
holds exactly one delivery per event, each signed. A second receiver never answers at all: the
deployment succeeds anyway, and that sink's failures are `notification_failed` events.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from livekit import Controller, Setup, deploy, wait_final, wait_for

from safeship.api.client import ControllerClient
from safeship.engine.notify import notification_for
from safeship.signing import verify
from safeship.store import Store

pytestmark = [pytest.mark.live]

SECRET = "live-hook-secret-3b9d71"


@dataclass
class Delivery:
    key: str
    status: int
    signature: str
    body: bytes


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1, port 0: `mode` "fail" answers 500, "ok" 200, "hang"
    never answers (until closed, at most 60 s)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.deliveries: list[Delivery] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.mode == "hang":
                    receiver.deliveries.append(Delivery(self.headers.get("Idempotency-Key", ""), 0, "", body))
                    receiver.release.wait(60)
                    return
                status = 200 if receiver.mode == "ok" else 500
                receiver.deliveries.append(Delivery(self.headers.get("Idempotency-Key", ""), status,
                                                    self.headers.get("X-Safeship-Signature", ""), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/safeship"

    def delivered(self) -> list[Delivery]:
        return [d for d in list(self.deliveries) if d.status == 200]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    hook, stuck = Receiver("fail"), Receiver("hang")
    try:
        yield hook, stuck
    finally:
        hook.close()
        stuck.close()


def expected_keys(setup: Setup, deployment_id: str) -> dict[str, str]:
    """Idempotency key -> event kind of every notification the deployment's stored events make."""
    store = Store(f"sqlite:///{setup.state_dir}/state.db")
    try:
        record = store.get_deployment(deployment_id)
        events = store.events(deployment_id)
    finally:
        store.close()
    made = (notification_for(event, record, events[:index]) for index, event in enumerate(events))
    return {n.key: n.kind for n in made if n is not None}


def failed_notifications(setup: Setup) -> list[dict[str, Any]]:
    store = Store(f"sqlite:///{setup.state_dir}/state.db")
    try:
        return [dict(e.data) for e in store.events_since(0, limit=100_000) if e.kind == "notification_failed"]
    finally:
        store.close()


def test_a_controller_killed_before_delivering_delivers_after_restart_once_per_key(
        tmp_path: Path, setup: Setup, receivers: tuple[Receiver, Receiver]) -> None:
    hook, stuck = receivers
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    (tmp_path / "hook.secret").chmod(0o600)
    with open(setup.config, "a") as config:
        config.write(
            "notifications:\n"
            f"  - {{name: hook, type: webhook, url: '{hook.url}', secret_file: hook.secret, timeout: 3s, "
            "retries: 100, backoff: 0.2s}\n"
            f"  - {{name: stuck, type: webhook, url: '{stuck.url}', timeout: 1s, retries: 0}}\n"
        )
    first = Controller(setup)
    second = Controller(setup)
    try:
        first.start()
        client = ControllerClient(setup.state_dir)
        final, _ = wait_final(client, deploy(client, "v1.2.0")["id"], timeout=180)
        assert final["phase"] == "succeeded", final.get("reason")
        keys = expected_keys(setup, final["id"])
        assert {"started", "promoted", "succeeded"} <= set(keys.values())
        # Every event is committed (the deployment ended); the sink, in order, was refused the first.
        wait_for(lambda: bool(hook.deliveries), 60, "a try of the first notification")
        assert hook.delivered() == []

        first.kill9()
        hook.mode = "ok"
        second.start()
        wait_for(lambda: set(keys) <= {d.key for d in hook.delivered()}, 90, "every notification after the restart")
    finally:
        first.stop()
        second.stop()

    delivered = hook.delivered()
    by_key: dict[str, Delivery] = {}
    for delivery in delivered:
        by_key.setdefault(delivery.key, delivery)
    duplicates = len(delivered) - len(by_key)
    print(f"\n{len(keys)} notifications, {len(hook.deliveries) - len(delivered)} refused tries before the kill, "
          f"{len(delivered)} deliveries after the restart, {duplicates} duplicates dropped by key")
    assert set(by_key) == set(keys)  # after dedup by key: exactly one delivery per event, none unknown
    for key, delivery in by_key.items():
        body = json.loads(delivery.body)
        assert (body["idempotency_key"], body["event"]) == (key, keys[key])
        assert verify(SECRET.encode(), delivery.body, delivery.signature, max_age_s=3600)
        assert SECRET.encode() not in delivery.body
    # The receiver that never answered slowed nothing down: the deployment succeeded, and its sink's
    # tries ended in notification_failed events.
    stuck_failures = [f for f in failed_notifications(setup) if f["sink"] == "stuck"]
    assert stuck.deliveries and stuck_failures
    assert all("1s" in f["error"] or "Timeout" in f["error"] for f in stuck_failures)
