"""TLS on the HAProxy router, against a real haproxy and a real upstream process on 127.0.0.1, with
clients that trust only the test CA: a renewed certificate reaches the next connection through
the Runtime API (no reload: the worker stays the same) while an open keep-alive connection keeps
working, and the redirect frontend sends plain HTTP to https."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from haproxykit import (  # noqa: F401  (fixtures)
    Upstreams,
    free_port,
    needs_haproxy,
    state_dir_fixture,
    upstreams_fixture,
)
from tlskit import Pki, TlsClient, install, make_pki, plain_request

from safeship.config.models import SafeshipConfig
from safeship.routing.base import Backend, RouteKey
from safeship.routing.haproxy import HAProxyRouter

pytestmark = [pytest.mark.live, pytest.mark.timeout(120), needs_haproxy]

ROUTE = RouteKey(service="shop", environment="test")


def _config(files: tuple[Path, Path], redirect: int | None) -> SafeshipConfig:
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [{"name": "test", "router": "haproxy"}]},
        "services": {"shop": {"tls": {"test": {"cert_file": str(files[0]), "key_file": str(files[1]),
                                               "redirect_http": redirect}}}},
    })


async def _tls_route(tmp_path: Path, state_dir: Path, upstreams: Upstreams, pki: Pki,
                     redirect: int | None = None) -> tuple[HAProxyRouter, int, tuple[Path, Path]]:
    live = tmp_path / "live"
    live.mkdir()
    files = (live / "cert.pem", live / "key.pem")
    install(pki.issue("first"), files)
    router = HAProxyRouter(state_dir, config=_config(files, redirect), close_grace=2.0)
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    upstream = upstreams.start("v1")
    await router.set_backends(ROUTE, "v1", [Backend("test/shop/v1-0", "127.0.0.1", upstream.port)])
    await router.set_weights(ROUTE, {"v1": 100})
    for _ in range(100):  # until the server's first health check passed
        client = await asyncio.to_thread(TlsClient, port, pki.ca)
        try:
            if (await asyncio.to_thread(client.get, "/"))[0] == 200:
                return router, port, files
        finally:
            client.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the TLS route never answered 200")


async def test_a_renewed_certificate_reaches_new_connections_without_a_reload(
        tmp_path: Path, state_dir: Path, upstreams: Upstreams) -> None:
    pki = make_pki(tmp_path / "pki")
    router, port, files = await _tls_route(tmp_path, state_dir, upstreams, pki)
    try:
        kept = await asyncio.to_thread(TlsClient, port, pki.ca)
        try:
            assert kept.common_name() == "first"
            assert (await asyncio.to_thread(kept.get, "/a"))[0] == 200
            worker = router._worker_pid()
            assert worker is not None

            install(pki.issue("second"), files)
            seen = "first"
            deadline = time.monotonic() + 15  # the watcher looks every second
            while seen == "first" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                fresh = await asyncio.to_thread(TlsClient, port, pki.ca)
                seen = fresh.common_name()
                if seen == "second":
                    assert (await asyncio.to_thread(fresh.get, "/b"))[0] == 200
                fresh.close()
            assert seen == "second", "HAProxy never served the renewed certificate"
            assert router.certificate_updates == 1
            assert router._worker_pid() == worker  # through the Runtime API: no reload, no new worker

            status, _, body = await asyncio.to_thread(kept.get, "/c")  # opened before the renewal
            assert status == 200 and b'"v1"' in body
            pem = router.pem_path(ROUTE)
            assert pem.stat().st_mode & 0o777 == 0o600
            assert pem.read_text().startswith(files[0].read_text().rstrip("\n"))  # a reload would serve it too
        finally:
            kept.close()
        await router.remove_route(ROUTE)
        assert not pem.exists()  # the key's copy goes with its route
    finally:
        await router.close()


async def test_the_redirect_frontend_sends_plain_http_to_https(
        tmp_path: Path, state_dir: Path, upstreams: Upstreams) -> None:
    pki = make_pki(tmp_path / "pki")
    redirect = free_port()
    router, port, _files = await _tls_route(tmp_path, state_dir, upstreams, pki, redirect)
    try:
        status, headers, _ = await asyncio.to_thread(
            plain_request, redirect, "GET /users/7?x=1 HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
        assert (status, headers["location"]) == (301, f"https://localhost:{port}/users/7?x=1")
        status, headers, _ = await asyncio.to_thread(
            plain_request, redirect, "POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert (status, headers["location"]) == (308, f"https://127.0.0.1:{port}/users")
        assert (await asyncio.to_thread(plain_request, redirect, "GET / HTTP/1.0\r\n\r\n"))[0] == 400
    finally:
        await router.close()


async def test_a_restarted_controller_with_other_tls_files_gets_them_served(
        tmp_path: Path, state_dir: Path, upstreams: Upstreams) -> None:
    pki = make_pki(tmp_path / "pki")
    router, port, _files = await _tls_route(tmp_path, state_dir, upstreams, pki)
    await router.close()
    moved = pki.issue("elsewhere")
    restarted = HAProxyRouter(state_dir, config=_config(moved, None), close_grace=2.0)  # reuses the running HAProxy
    try:
        assert await restarted.ensure_route(ROUTE, port=0) == port
        assert not restarted.started
        client = await asyncio.to_thread(TlsClient, port, pki.ca)
        try:
            assert client.common_name() == "elsewhere"
            assert (await asyncio.to_thread(client.get, "/"))[0] == 200
        finally:
            client.close()
    finally:
        await restarted.close()
