"""Outgoing HTTP is bounded: a gate or webhook receiver that streams a huge answer has at most
64 KiB of it read (the rest is never taken off the socket), and one that drips its answer (headers
or body) a kilobyte at a time is cut off at the gate's or sink's timeout, as one deadline for the
whole exchange. The receiver is a real server on 127.0.0.1 that counts the bytes it managed to
send; every test is bounded by its own deadline and stops the server and its threads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from safeship.config.webhooks import WebhookGateConfig
from safeship.engine import webhooks
from safeship.engine.notify import Notification
from safeship.engine.sinks import DeliveryError, WebhookSink

FLOOD_LIMIT = 256 * 2**20  # what the flooding server sends at most: an unbounded reader takes all of it
DEADLINE_S = 20.0  # no test waits longer than this for the call under test
CHUNK = b"x" * 65536


class Receiver:
    """Reads a request, then (mode) floods a 200 answer's body, drips it, or drips its headers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.stop = threading.Event()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                receiver.serve(self.request, mode)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = False  # server_close joins the handlers
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, sock: socket.socket, mode: str) -> None:
        sock.settimeout(0.5)
        deadline = time.monotonic() + DEADLINE_S
        try:
            self._read_request(sock, deadline)
            if mode == "drip-headers":
                self._send(sock, b"HTTP/1.1 200 OK\r\n")
                while not self.stop.is_set() and time.monotonic() < deadline:
                    self._send(sock, b"X")
                    time.sleep(0.3)
                return
            self._send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            while not self.stop.is_set() and time.monotonic() < deadline and self.sent < FLOOD_LIMIT:
                if mode == "drip":
                    self._send(sock, b"d" * 1024)
                    time.sleep(0.5)
                else:
                    self._send(sock, CHUNK)
        except OSError:
            return  # the client closed the connection: what a bounded reader does

    def _read_request(self, sock: socket.socket, deadline: float) -> None:
        data = b""
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                data += sock.recv(65536) or b""
            except TimeoutError:
                continue
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and time.monotonic() < deadline:
            try:
                body += sock.recv(65536)
            except TimeoutError:
                continue

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(TimeoutError):  # the client reads no more for now: the loop decides
            self.sent += sock.send(data)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(params=["flood", "drip", "drip-headers"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    with Receiver(request.param) as running:
        yield running


def notification() -> Notification:
    return Notification(kind="started", deployment_id="deploy-0123456789", service="user-service",
                        environment="production", message="started", version="v1.3.0", from_version="v1.2.0",
                        to_version="v1.3.0", event_id=1, at=time.time())


async def test_a_gate_reads_at_most_64_kib_and_stops_at_its_timeout(receiver: Receiver) -> None:
    gate = WebhookGateConfig(name="sign-off", type="confirm-promotion", url=receiver.url, timeout=1.5)
    answer = await asyncio.wait_for(webhooks.ask(gate, {"id": "deploy-0123456789"}), DEADLINE_S)
    if receiver.mode == "flood":  # the status came; the rest of the body is not read
        assert (answer.ok, answer.text) == (True, "HTTP 200")
    else:
        assert (answer.ok, answer.text) == (False, "timed out after 1.5s")
    # Socket buffers take a few MiB at most; an unbounded reader would have taken all 256 MiB.
    assert receiver.sent < 16 * 2**20


def test_a_webhook_sink_reads_at_most_64_kib_and_stops_at_its_timeout(receiver: Receiver) -> None:
    sink = WebhookSink("hook", receiver.url, timeout=1.5, retries=0)
    outcome: list[BaseException | None] = []

    def deliver() -> None:
        try:
            sink.notify(notification())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=deliver, name="test-sink", daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    assert not worker.is_alive(), "the sink still holds its thread"
    [raised] = outcome
    if receiver.mode == "flood":  # a 200: delivered, with the rest of the body not read
        assert raised is None
    else:
        assert isinstance(raised, DeliveryError)
        assert str(raised) == f"POST to http://127.0.0.1:{receiver.server.server_address[1]} timed out after 1.5s"
    assert receiver.sent < 16 * 2**20
