"""The builtin router against real HTTP on 127.0.0.1: tiny in-process upstreams, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from safeship.routing.base import Backend, RouteKey
from safeship.routing.builtin import BuiltinRouter

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

ROUTE = RouteKey(service="shop", environment="test")


class FakeUpstream:
    """A small HTTP/1.1 server answering with its name; records connections and request paths.

    Paths: `/echo` echoes the body (chunked when `x-chunked-response: 1`), `/status/N` answers
    N, `/slow/S` sleeps S seconds, `/drop` closes the connection without answering, `/eof`
    answers without a length and closes, anything else answers 200 with the upstream's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.paths: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def backend(self) -> Backend:
        return Backend(instance_id=self.name, host="127.0.0.1", port=self.port)

    async def close(self) -> None:
        self._closed.set()  # wakes handlers sleeping in /slow/ so they end before the loop does
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            for _ in range(100_000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                body = await _read_body(reader, headers)
                self.paths.append(path)
                if not await self._answer(method, path, headers, body, reader, writer):
                    return
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()

    async def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path == "/drop":
            writer.transport.abort()
            return False
        if path == "/upgrade":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n")
            await writer.drain()
            for _ in range(10_000):  # echo raw bytes until the client closes
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            return False
        if path == "/then-close":  # answers, then closes without saying so (an idle timeout)
            writer.write(b"HTTP/1.1 200 X\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return False
        if path == "/eof":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + self.name.encode())
            await writer.drain()
            return False
        if path.startswith("/slow/"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), float(path.removeprefix("/slow/")))
            if self._closed.is_set():
                return False
        status = int(path.removeprefix("/status/")) if path.startswith("/status/") else 200
        payload = body if path == "/echo" else self.name.encode()
        if headers.get("x-chunked-response") == "1":
            writer.write(f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for start in range(0, len(payload), 7001):
                piece = payload[start : start + 7001]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif status in (204, 304):
            writer.write(f"HTTP/1.1 {status} X\r\n\r\n".encode())
        else:
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(payload)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        for _ in range(1_000_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append((await reader.readexactly(size + 2))[:-2])
        raise AssertionError("endless chunked body")
    return await reader.readexactly(int(headers.get("content-length", "0")))


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


StartUpstream = Callable[[str], Awaitable[FakeUpstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    started: list[FakeUpstream] = []

    async def start(name: str) -> FakeUpstream:
        upstream = await FakeUpstream(name).start()
        started.append(upstream)
        return upstream

    try:
        yield start
    finally:
        for upstream in started:
            await upstream.close()


@pytest.fixture
async def router() -> AsyncIterator[BuiltinRouter]:
    proxy = BuiltinRouter(close_grace=2.0)
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as http:
        yield http


async def serve(
    router: BuiltinRouter, versions: dict[str, list[FakeUpstream]], weights: dict[str, int]
) -> str:
    """Routes ROUTE to the given upstreams; returns the router's base URL."""
    port = await router.add_route(ROUTE)
    for version, upstreams in versions.items():
        await router.set_backends(ROUTE, version, [upstream.backend() for upstream in upstreams])
    await router.set_weights(ROUTE, weights)
    return f"http://127.0.0.1:{port}"


async def raw_exchange(port: int, data: bytes, *, read_for: float = 5.0) -> bytes:
    """Sends raw bytes and reads until the router closes the connection (or `read_for` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        chunks = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(read_for):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


# --- traffic split ---------------------------------------------------------------------------


async def test_weights_split_traffic_between_versions(router, start_upstream, client) -> None:
    stable, canary = await start_upstream("stable"), await start_upstream("canary")
    url = await serve(router, {"v1": [stable], "v2": [canary]}, {"v1": 80, "v2": 20})

    answers = Counter()
    for _ in range(1000):
        answers[(await client.get(url + "/")).text] += 1

    # 1000 draws at p=0.2: sd ~12.6; six sd keeps this test from ever flaking.
    assert answers["stable"] + answers["canary"] == 1000
    assert abs(answers["canary"] - 200) <= 6 * math.sqrt(1000 * 0.2 * 0.8)
    counters = await router.counters(ROUTE)
    assert counters["v1"].requests == answers["stable"]
    assert counters["v2"].requests == answers["canary"]


async def test_requests_spread_across_a_versions_backends(router, start_upstream, client) -> None:
    first, second = await start_upstream("a"), await start_upstream("b")
    url = await serve(router, {"v1": [first, second]}, {"v1": 100})

    answers = Counter([(await client.get(url + "/")).text for _ in range(100)])

    assert answers["a"] >= 20 and answers["b"] >= 20


async def test_weight_changes_apply_to_new_requests(router, start_upstream, client) -> None:
    stable, canary = await start_upstream("stable"), await start_upstream("canary")
    url = await serve(router, {"v1": [stable], "v2": [canary]}, {"v1": 100, "v2": 0})
    assert {(await client.get(url)).text for _ in range(20)} == {"stable"}

    await router.set_weights(ROUTE, {"v1": 0, "v2": 100})

    assert {(await client.get(url)).text for _ in range(20)} == {"canary"}


# --- counters --------------------------------------------------------------------------------


async def test_counters_count_requests_errors_and_latency(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})

    for _ in range(7):
        assert (await client.get(url + "/")).status_code == 200
    for _ in range(3):
        assert (await client.get(url + "/status/503")).status_code == 503
    assert (await client.get(url + "/status/404")).status_code == 404

    counters = (await router.counters(ROUTE))["v1"]
    assert counters.requests == 11
    assert counters.errors == 3
    assert counters.connect_failures == 0
    assert sum(counters.latency_buckets) == 11
    assert counters.latency_sum_ms > 0


async def test_counters_are_copies(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})
    await client.get(url)

    snapshot = (await router.counters(ROUTE))["v1"]
    snapshot.requests += 100
    snapshot.latency_buckets[0] += 100

    again = (await router.counters(ROUTE))["v1"]
    assert again.requests == 1
    assert sum(again.latency_buckets) == 1
    assert router.snapshot()[ROUTE]["v1"].requests == 1


# --- bodies and framing ----------------------------------------------------------------------


async def test_content_length_bodies_pass_through(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})

    for size in (0, 1, 1000, 65536, 65537, 3_000_000):
        body = os.urandom(size)
        response = await client.post(url + "/echo", content=body)
        assert response.status_code == 200
        assert response.content == body


async def test_chunked_bodies_pass_through(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})
    body = os.urandom(1_500_000)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 50_000):
            yield body[start : start + 50_000]

    streamed = await client.post(url + "/echo", content=pieces())
    assert streamed.content == body

    chunked_back = await client.post(
        url + "/echo", content=body, headers={"x-chunked-response": "1"}
    )
    assert chunked_back.headers["transfer-encoding"] == "chunked"
    assert chunked_back.content == body


async def test_head_204_304_and_until_close_responses(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})
    port = router.port(ROUTE)

    # HEAD carries a Content-Length but no body; the next pipelined answer must follow directly.
    answer = await raw_exchange(
        port,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 ") == 4
    assert answer.startswith(b"HTTP/1.1 200 X\r\nContent-Length: 2\r\n\r\nHTTP/1.1 204 X")
    assert answer.endswith(b"\r\n\r\nv1")

    # No length: the body runs until the upstream closes, so the router closes too.
    until_close = await raw_exchange(port, b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
    assert until_close.startswith(b"HTTP/1.1 200 OK")
    assert until_close.endswith(b"\r\n\r\nv1")


async def test_connection_close_and_http10_close_the_client(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})
    port = router.port(ROUTE)

    closed = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    http10 = await raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n")

    assert closed.startswith(b"HTTP/1.1 200") and closed.endswith(b"v1")
    assert http10.startswith(b"HTTP/1.1 200") and http10.endswith(b"v1")


async def test_malformed_and_ambiguous_requests_get_400(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})
    port = router.port(ROUTE)

    smuggled = await raw_exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    spaced = await raw_exchange(
        port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc"
    )
    garbage = await raw_exchange(port, b"NONSENSE\r\n\r\n")

    assert smuggled.startswith(b"HTTP/1.1 400")
    assert spaced.startswith(b"HTTP/1.1 400")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert upstream.paths == []


async def test_expect_continue_is_answered_by_the_router(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port(ROUTE))
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
    finally:
        writer.close()


async def test_upgrade_tunnels_bytes_both_ways(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port(ROUTE))
    try:
        writer.write(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        for message in (b"ping", b"pong" * 1000):
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 10) == message
    finally:
        writer.close()
    counters = (await router.counters(ROUTE))["v1"]
    for _ in range(1000):  # the tunnel is counted when it ends
        if counters.requests:
            break
        await asyncio.sleep(0.01)
        counters = (await router.counters(ROUTE))["v1"]
    assert (counters.requests, counters.errors) == (1, 0)


# --- connection reuse ------------------------------------------------------------------------


async def test_upstream_connections_are_reused(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})

    for _ in range(200):
        assert (await client.get(url)).status_code == 200
    await asyncio.gather(*(client.get(url) for _ in range(50)))

    assert len(upstream.paths) == 250
    # Sequential requests share one connection; the burst of 50 may open a few more.
    assert upstream.connections <= 60


async def test_pooled_connections_closed_by_the_upstream_are_not_reused(
    router, start_upstream, client
) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})

    answers = []
    for _ in range(30):
        answers.append(await client.get(url + "/then-close"))
        await asyncio.sleep(0.01)  # lets the upstream's FIN arrive, as an idle timeout would

    assert [answer.text for answer in answers] == ["ok"] * 30
    assert upstream.connections == 30
    assert (await router.counters(ROUTE))["v1"].connect_failures == 0


async def test_client_keep_alive_and_pipelining(router, start_upstream) -> None:
    upstream = await start_upstream("v1")
    await serve(router, {"v1": [upstream]}, {"v1": 100})

    answer = await raw_exchange(
        router.port(ROUTE),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5
        + b"\r\n"  # a stray blank line between requests is allowed
        + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    )

    assert answer.count(b"HTTP/1.1 200") == 6


# --- draining --------------------------------------------------------------------------------


async def test_removed_backend_drains(router, start_upstream, client) -> None:
    leaving, staying = await start_upstream("leaving"), await start_upstream("staying")
    url = await serve(router, {"v1": [leaving]}, {"v1": 100})

    in_flight = asyncio.create_task(client.get(url + "/slow/1.0"))
    for _ in range(1000):
        if leaving.paths:
            break
        await asyncio.sleep(0.01)
    assert leaving.paths == ["/slow/1.0"]

    await router.set_backends(ROUTE, "v1", [staying.backend()])
    after = [(await client.get(url)).text for _ in range(20)]
    slow = await in_flight

    assert slow.status_code == 200 and slow.text == "leaving"
    assert after == ["staying"] * 20
    assert leaving.paths == ["/slow/1.0"]
    for _ in range(1000):  # the drained connection is closed once its request is done
        if leaving.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert leaving.open_connections == 0


# --- hold ------------------------------------------------------------------------------------


async def test_hold_queues_requests_until_weights_name_a_ready_version(
    router, start_upstream, client
) -> None:
    old, new = await start_upstream("old"), await start_upstream("new")
    url = await serve(router, {"v1": [old]}, {"v1": 100})

    await router.hold(ROUTE, max_wait=30.0)
    await router.set_backends(ROUTE, "v1", [])
    queued = [asyncio.create_task(client.get(url)) for _ in range(10)]
    await asyncio.sleep(0.3)
    assert not any(task.done() for task in queued)

    await router.set_backends(ROUTE, "v2", [new.backend()])
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in queued)  # backends alone do not release the hold
    await router.set_weights(ROUTE, {"v2": 100})
    answers = await asyncio.gather(*queued)

    assert [(answer.status_code, answer.text) for answer in answers] == [(200, "new")] * 10
    assert old.paths == []


async def test_hold_expiry_answers_503(router, start_upstream, client) -> None:
    old = await start_upstream("old")
    url = await serve(router, {"v1": [old]}, {"v1": 100})
    await router.set_backends(ROUTE, "v1", [])

    await router.hold(ROUTE, max_wait=0.5)
    answers = await asyncio.gather(*(client.get(url) for _ in range(5)))

    assert [answer.status_code for answer in answers] == [503] * 5
    assert router.unrouted[ROUTE] == 5
    assert (await client.get(url)).status_code == 503  # the hold is over: no wait, no backend


# --- failures and retries --------------------------------------------------------------------


async def test_no_backend_answers_503_and_counts_unrouted(router, client) -> None:
    url = f"http://127.0.0.1:{await router.add_route(ROUTE)}"

    answers = [await client.get(url) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [503] * 3
    assert router.unrouted[ROUTE] == 3
    assert await router.counters(ROUTE) == {}


async def test_refused_connection_is_retried_and_still_counted(
    router, start_upstream, client
) -> None:
    alive = await start_upstream("alive")
    dead = Backend(instance_id="dead", host="127.0.0.1", port=closed_port())
    url = f"http://127.0.0.1:{await router.add_route(ROUTE)}"
    await router.set_backends(ROUTE, "v1", [dead, alive.backend()])
    await router.set_weights(ROUTE, {"v1": 100})

    answers = [await client.post(url + "/echo", content=b"x" * 100) for _ in range(40)]

    assert {(answer.status_code, answer.text) for answer in answers} == {(200, "x" * 100)}
    counters = (await router.counters(ROUTE))["v1"]
    assert counters.connect_failures >= 5
    assert counters.requests == 40 + counters.connect_failures
    assert counters.errors == 0


async def test_retry_moves_to_another_version(router, start_upstream, client) -> None:
    stable = await start_upstream("stable")
    dead = Backend(instance_id="dead", host="127.0.0.1", port=closed_port())
    url = f"http://127.0.0.1:{await router.add_route(ROUTE)}"
    await router.set_backends(ROUTE, "v1", [stable.backend()])
    await router.set_backends(ROUTE, "v2", [dead])
    await router.set_weights(ROUTE, {"v1": 50, "v2": 50})

    answers = [await client.get(url) for _ in range(40)]

    assert {answer.text for answer in answers} == {"stable"}
    counters = await router.counters(ROUTE)
    assert counters["v2"].connect_failures == counters["v2"].requests >= 5
    assert counters["v1"].requests == 40


async def test_reset_before_answer_is_retried(router, start_upstream, client) -> None:
    crashing, healthy = await start_upstream("crashing"), await start_upstream("healthy")
    url = await serve(router, {"v1": [crashing, healthy]}, {"v1": 100})

    answers = [await client.get(url + "/drop") for _ in range(20)]

    # Both upstreams drop "/drop": each request fails, is retried once, then gets a 502.
    assert {answer.status_code for answer in answers} == {502}
    counters = (await router.counters(ROUTE))["v1"]
    assert counters.connect_failures == counters.requests == 40


async def test_only_backend_refusing_gives_502(router, client) -> None:
    dead = Backend(instance_id="dead", host="127.0.0.1", port=closed_port())
    url = f"http://127.0.0.1:{await router.add_route(ROUTE)}"
    await router.set_backends(ROUTE, "v1", [dead])
    await router.set_weights(ROUTE, {"v1": 100})

    assert (await client.get(url)).status_code == 502
    assert (await router.counters(ROUTE))["v1"].connect_failures == 1


async def test_slow_upstream_gets_504(start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    proxy = BuiltinRouter(upstream_timeout=0.5)
    try:
        url = await serve(proxy, {"v1": [upstream]}, {"v1": 100})
        answer = await client.get(url + "/slow/3")
        assert answer.status_code == 504
        counters = (await proxy.counters(ROUTE))["v1"]
        assert (counters.requests, counters.errors) == (1, 1)
    finally:
        await proxy.close()


# --- lifecycle -------------------------------------------------------------------------------


async def test_remove_route_closes_the_port(router, start_upstream, client) -> None:
    upstream = await start_upstream("v1")
    url = await serve(router, {"v1": [upstream]}, {"v1": 100})
    port = router.port(ROUTE)
    assert (await client.get(url)).status_code == 200

    await router.remove_route(ROUTE)

    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    assert await router.counters(ROUTE) == {}


async def test_two_routes_listen_on_their_own_ports(router, start_upstream, client) -> None:
    first, second = await start_upstream("first"), await start_upstream("second")
    other = RouteKey(service="cart", environment="test")
    port_a = await router.add_route(ROUTE)
    port_b = await router.add_route(other)
    await router.set_backends(ROUTE, "v1", [first.backend()])
    await router.set_backends(other, "v1", [second.backend()])
    await router.set_weights(ROUTE, {"v1": 100})
    await router.set_weights(other, {"v1": 100})

    assert port_a != port_b
    assert (await client.get(f"http://127.0.0.1:{port_a}")).text == "first"
    assert (await client.get(f"http://127.0.0.1:{port_b}")).text == "second"


# --- the same core paths on uvloop, the loop the controller and the benchmark use ------------


def test_core_paths_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_core_paths_scenario())


async def _core_paths_scenario() -> None:
    stable, canary = await FakeUpstream("stable").start(), await FakeUpstream("canary").start()
    proxy = BuiltinRouter(close_grace=2.0)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=30.0) as http:
            dead = Backend(instance_id="dead", host="127.0.0.1", port=closed_port())
            url = f"http://127.0.0.1:{await proxy.add_route(ROUTE)}"
            await proxy.set_backends(ROUTE, "v1", [stable.backend(), dead])
            await proxy.set_backends(ROUTE, "v2", [canary.backend()])
            await proxy.set_weights(ROUTE, {"v1": 50, "v2": 50})

            answers = Counter([(await http.get(url)).text for _ in range(200)])
            body = os.urandom(300_000)
            echoed = await http.post(
                url + "/echo", content=body, headers={"x-chunked-response": "1"}
            )

            await proxy.hold(ROUTE, max_wait=30.0)
            queued = asyncio.create_task(http.get(url))
            await asyncio.sleep(0.2)
            assert not queued.done()
            await proxy.set_weights(ROUTE, {"v2": 100})
            released = await queued

        assert set(answers) == {"stable", "canary"} and answers.total() == 200
        assert echoed.content == body
        assert released.text == "canary"
        counters = await proxy.counters(ROUTE)
        assert counters["v1"].connect_failures >= 1
        assert counters["v1"].errors == counters["v2"].errors == 0
    finally:
        await proxy.close()
        await stable.close()
        await canary.close()
