"""Issue 13's "done when" for webhook gates, through a real controller: with a real HTTP receiver
on loopback, a 500 from `confirm-promotion` holds the promotion (the candidate never takes all
traffic, `deployment-engine --status` says which gate holds it and what it answered), and a 200
later releases it: the deployment is promoted and succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from livekit import ENV, REPO, SERVICE, Setup, controller_with, deploy, wait_final, wait_for

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live, pytest.mark.slow]


class Gate:
    """The receiver's state: the status it answers and the bodies it was sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status = 200
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    def answer(self, status: int) -> None:
        with self.lock:
            self.status = status

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Gate]:
    gate = Gate()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with gate.lock:
                gate.bodies.append(body)
                status = gate.status
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    gate.url = f"http://127.0.0.1:{server.server_address[1]}/promote"
    try:
        yield gate
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _status(setup: Setup, deployment_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "deployment-engine"), "--status", "--deployment-id", deployment_id,
               "--config", str(setup.config), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_500_from_confirm_promotion_holds_the_promotion_and_a_200_releases_it(
        tmp_path: Path, receiver: Gate) -> None:
    def with_gate(config: str) -> str:
        return config + (
            "    webhooks:\n"
            f"      - {{name: ops-sign-off, type: confirm-promotion, url: \"{receiver.url}\", "
            "interval: 1s, timeout: 5s, metadata: {ticket: OPS-7}}\n")

    with controller_with(tmp_path, with_gate) as setup:
        client = ControllerClient(setup.state_dir)
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded"  # the gate answered 200: a first deployment passes it
        receiver.answer(500)
        deployment_id = deploy(client, "v1.3.0")["id"]
        wait_for(lambda: (client.get(deployment_id).get("gate") or {}).get("held") is True, 180,
                 "the confirm-promotion gate to hold the deployment")
        asked = len(receiver.received())
        wait_for(lambda: len(receiver.received()) >= asked + 2, 60, "the held gate to be asked again")
        held = client.get(deployment_id)
        assert held["phase"] == "progressing" and held["decision"] is None
        assert held["weights"].get("v1.3.0", 0) < 100 and held["weights"].get("v1.2.0", 0) > 0
        assert (held["gate"]["name"], held["gate"]["type"], held["gate"]["last_answer"]) == (
            "ops-sign-off", "confirm-promotion", "HTTP 500")
        shown = _status(setup, deployment_id)
        assert shown.returncode == 0, shown.stderr
        assert "held by confirm-promotion gate 'ops-sign-off' since" in shown.stdout
        assert "last answer HTTP 500" in shown.stdout
        body = receiver.received()[-1]
        assert (body["id"], body["service"], body["environment"], body["version"], body["baseline"]) == (
            deployment_id, SERVICE, ENV, "v1.3.0", "v1.2.0")
        assert body["gate"] == {"name": "ops-sign-off", "type": "confirm-promotion"}
        assert body["metadata"] == {"ticket": "OPS-7"}

        receiver.answer(200)
        final, _ = wait_final(client, deployment_id)
        assert final["phase"] == "succeeded", final["reason"]
        assert final["weights"] == {"v1.3.0": 100} and final["gate"] is None
        kinds = [e["kind"] for e in json.loads(_status(setup, deployment_id, "--json").stdout)["events"]]
        assert kinds.index("gate_held") < kinds.index("gate_passed") < kinds.index("promoted")
