"""The router daemon: routes survive a client that goes away, and a daemon that dies is started
again by the next call with its routes, backends and weights put back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from safeship.routing.base import Backend, RouteKey
from safeship.routing.remote import RemoteRouter, daemon_pid, stop_daemon

pytestmark = pytest.mark.live
ROUTE = RouteKey("svc", "test")


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def state_dir(tmp_path: Path):
    try:
        yield tmp_path / "state"
    finally:
        stop_daemon(tmp_path / "state")


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def get(port: int) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"http://127.0.0.1:{port}/")).status_code


async def test_routes_outlive_the_client_and_come_back_after_the_daemon_dies(state_dir: Path, upstream: int) -> None:
    first = RemoteRouter(state_dir)
    assert await first.connect() is True  # started the daemon
    port = await first.add_route(ROUTE)
    await first.set_backends(ROUTE, "v1", [Backend("v1-0", "127.0.0.1", upstream)])
    await first.set_weights(ROUTE, {"v1": 100})
    assert await get(port) == 200
    await first.close()
    assert await get(port) == 200  # no client connected: still serving

    second = RemoteRouter(state_dir)
    assert await second.connect() is False  # adopted the running daemon
    assert await second.add_route(ROUTE) == port  # asking again is harmless
    assert (await second.counters(ROUTE))["v1"].requests == 2  # counters survived the client
    await second.set_backends(ROUTE, "v1", [Backend("v1-0", "127.0.0.1", upstream)])  # as a controller's start does

    old = daemon_pid(state_dir)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    for _ in range(600):  # until it is gone (or a zombie), at most 60 s
        if not _running(old):
            break
        await asyncio.sleep(0.1)
    assert not _running(old)
    await second.set_weights(ROUTE, {"v1": 100})  # reconnects, restarts the daemon, replays
    assert daemon_pid(state_dir) not in (None, old)
    assert await get(port) == 200
    await second.close()
