"""Helpers for the HAProxy live tests: small upstream HTTP servers in processes of their own, a
HAProxyRouter on a temp state dir, and cleanup by PID (upstreams and HAProxy) even when a test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safeship.routing.haproxy import HAProxyRouter, haproxy_binary, stop_haproxy

needs_haproxy = pytest.mark.skipif(haproxy_binary() is None,
                                   reason="the haproxy binary is not installed (apt-get install haproxy)")

# An upstream: answers every path 200 (or 500 with --fail) with its version in X-Version and its
# port in X-Port (`/slow...` after 1 s); the readiness path answers 200. HTTP/1.1 keep-alive,
# one thread per connection.
UPSTREAM = r"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, version, fail = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        status = 200 if self.path.startswith("/health") or not fail else 500
        body = ('{"version": "%s"}' % version).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Version", version)
        self.send_header("X-Port", str(port))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Upstream:
    version: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@dataclass
class Upstreams:
    started: list[Upstream] = field(default_factory=list)

    def start(self, version: str, *, fail: bool = False) -> Upstream:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), version, "1" if fail else "0"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        upstream = Upstream(version, port, process)
        self.started.append(upstream)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return upstream
            time.sleep(0.05)
        raise RuntimeError(f"upstream {version} on {port} did not start")

    def stop_all(self) -> None:
        for upstream in self.started:
            upstream.stop()


@pytest.fixture(name="upstreams")
def upstreams_fixture() -> Iterator[Upstreams]:
    found = Upstreams()
    try:
        yield found
    finally:
        found.stop_all()


@pytest.fixture(name="state_dir")
def state_dir_fixture(tmp_path: Path) -> Iterator[Path]:
    """A state dir whose HAProxy (if a test started one) is stopped by its PID afterwards."""
    state = tmp_path / "state"
    state.mkdir()
    try:
        yield state
    finally:
        stop_haproxy(state)


@pytest.fixture(name="router")
def router_fixture(state_dir: Path) -> Iterator[HAProxyRouter]:
    yield HAProxyRouter(state_dir, close_grace=2.0)
