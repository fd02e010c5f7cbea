"""TLS on the builtin router, in its own daemon process as the controller runs it (under uvloop),
with a real upstream and clients that trust only the test CA: a renewed certificate reaches the
next connection while an open keep-alive connection keeps working, a half-written pair is not
served, the upstream is told the client came over https, and the redirect port sends plain HTTP
to https."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tlskit
from tlskit import Pki, TlsClient, install, make_pki, plain_request

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        proto = self.headers.get_all("X-Forwarded-Proto") or []
        body = f"hello from {self.path} proto={','.join(proto)}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Daemon:
    """The router daemon (`python -m safeship.routing.daemon`), driven over its control socket."""

    def __init__(self, folder: Path) -> None:
        self.socket_path = folder / "router.sock"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "safeship.routing.daemon", "--socket", str(self.socket_path),
             "--info", str(folder / "router.json")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(folder / "router.log").open("ab"))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.conn.connect(str(self.socket_path))
                break
            except OSError:
                self.conn.close()
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    self.process.wait(10)
                    log = (folder / "router.log").read_text()
                    raise AssertionError(f"the router daemon did not start: {log}") from None
                time.sleep(0.05)
        self.answers = self.conn.makefile("rb")

    def call(self, op: str, **fields: Any) -> Any:
        self.conn.sendall(json.dumps({"op": op, "service": "web", "environment": "prod", **fields}).encode() + b"\n")
        answer = json.loads(self.answers.readline())
        if not answer["ok"]:
            raise AssertionError(answer["error"])
        return answer["result"]

    def stop(self) -> None:
        self.answers.close()
        self.conn.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@contextlib.contextmanager
def tls_route(
    tmp_path: Path, pki: Pki, *, redirect: bool = False
) -> Iterator[tuple[Daemon, int, int | None, tuple[Path, Path]]]:
    """A daemon with route web/prod on 127.0.0.1 (any free port) over TLS with the pair `first`,
    in place at live/cert.pem and live/key.pem, routed to one upstream; yields (the daemon, https
    port, redirect port, the pair's files)."""
    live = tmp_path / "live"
    live.mkdir()
    files = (live / "cert.pem", live / "key.pem")
    install(pki.issue("first"), files)
    redirect_port = _free_port() if redirect else None
    daemon = Daemon(tmp_path)
    try:
        with upstream() as upstream_port:
            port = daemon.call("add_route", host="127.0.0.1", port=0,
                               tls={"cert_file": str(files[0]), "key_file": str(files[1]),
                                    "redirect_http": redirect_port})
            daemon.call("set_backends", version="v1", backends=[["i1", "127.0.0.1", upstream_port]])
            daemon.call("set_weights", weights={"v1": 100})
            yield daemon, port, redirect_port, files
    finally:
        daemon.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_renewed_certificate_serves_new_connections_and_open_ones_keep_working(tmp_path: Path, pki: Pki) -> None:
    with tls_route(tmp_path, pki) as (_daemon, port, _redirect, files):
        kept = TlsClient(port, pki.ca)
        try:
            assert kept.common_name() == "first"
            assert kept.get("/a")[0] == 200

            install(pki.issue("second"), files)
            fresh = TlsClient(port, pki.ca)
            assert fresh.common_name() == "second"  # the very next connection, no signal or reload asked
            assert fresh.get("/b")[0] == 200
            fresh.close()

            status, _, body = kept.get("/c")  # the keep-alive connection opened before the swap
            assert (status, body) == (200, b"hello from /c proto=https\n")
            assert kept.common_name() == "first"

            # Half a renewal: the new certificate is in place, its key is not yet. The pair does not
            # load, so new connections still get the last pair that did.
            third_cert, third_key = pki.issue("third")
            install((third_cert, files[1]), (files[0], tmp_path / "unused.pem"))
            half = TlsClient(port, pki.ca)
            assert half.common_name() == "second"
            half.close()
            install((third_cert, third_key), files)
            done = TlsClient(port, pki.ca)
            assert done.common_name() == "third"
            assert done.get("/d")[0] == 200
            done.close()
            assert kept.get("/e")[0] == 200
        finally:
            kept.close()


def test_the_upstream_is_told_https_whatever_the_client_claims(tmp_path: Path, pki: Pki) -> None:
    with tls_route(tmp_path, pki) as (_daemon, port, _redirect, _files):
        client = TlsClient(port, pki.ca)
        try:
            client.sock.sendall(b"GET /p HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: http\r\n"
                                b"x-forwarded-proto: gopher\r\n\r\n")
            assert tlskit.read_response(client.file)[2] == b"hello from /p proto=https\n"
        finally:
            client.close()


def test_a_controller_that_restarts_with_other_tls_files_gets_them_served(tmp_path: Path, pki: Pki) -> None:
    with tls_route(tmp_path, pki) as (daemon, port, _redirect, _files):
        cert, key = pki.issue("elsewhere")
        redirect = _free_port()
        again = daemon.call("add_route", host="127.0.0.1", port=0,  # what a restarted controller asks
                            tls={"cert_file": str(cert), "key_file": str(key), "redirect_http": redirect})
        assert again == port
        client = TlsClient(port, pki.ca)
        try:
            assert client.common_name() == "elsewhere"
            assert client.get("/x")[0] == 200
        finally:
            client.close()
        status, headers, _ = plain_request(redirect, "GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (status, headers["location"]) == (301, f"https://localhost:{port}/x")
        assert daemon.call("add_route", host="127.0.0.1", port=0, tls=None) == port
        still = TlsClient(port, pki.ca)  # TLS off takes a router restart; until then it serves as before
        assert still.common_name() == "elsewhere"
        still.close()


def test_a_client_that_does_not_trust_the_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    other = make_pki(tmp_path / "other")
    with tls_route(tmp_path, pki) as (_daemon, port, _redirect, _files), pytest.raises(ssl.SSLCertVerificationError):
        TlsClient(port, other.ca)


def test_the_redirect_port_sends_plain_http_to_https(tmp_path: Path, pki: Pki) -> None:
    with tls_route(tmp_path, pki, redirect=True) as (_daemon, port, redirect, _files):
        assert redirect is not None
        status, headers, _ = plain_request(redirect, "GET /users/7?x=1 HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
        assert (status, headers["location"]) == (301, f"https://localhost:{port}/users/7?x=1")
        status, headers, _ = plain_request(redirect, "POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                     "Content-Length: 0\r\n\r\n")
        assert (status, headers["location"]) == (308, f"https://127.0.0.1:{port}/users")
        assert plain_request(redirect, "GET / HTTP/1.1\r\n\r\n")[0] == 400  # no Host: nowhere to send it
        assert plain_request(redirect, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n")[0] == 400

        client = TlsClient(port, pki.ca)  # where the redirect points answers
        try:
            assert client.get("/users/7?x=1")[0] == 200
        finally:
            client.close()
