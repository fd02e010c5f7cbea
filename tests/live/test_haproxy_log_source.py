"""The haproxy log traffic source (`safeship.routing.haproxy_log`): log lines in the router's
format, read from the Unix datagram socket, become per-version requests, failures and latency
histograms; merged with the router's `show stat` counts; recorded for `before()`.

The format is proven twice: by a fake sender that writes datagrams in exactly that format, and by a
real `haproxy` started here with a minimal config that logs to the source's socket, in front of a
tiny HTTP server of the test. Every wait is bounded and polls what the source counted; every
process, server and socket is closed in `finally`, also when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from haproxykit import Upstreams, upstreams_fixture  # noqa: F401  (the upstreams fixture)
from livekit import ROUTE as LIVE_ROUTE
from livekit import Load, controller_with, deploy, wait_final

from safeship import histogram
from safeship.api.client import ControllerClient
from safeship.clock import RealClock, VirtualClock
from safeship.errors import TemporaryError
from safeship.loadgen import LoadGenerator, failed
from safeship.routing.base import Backend
from safeship.routing.haproxy import HAProxyRouter, backend_name, haproxy_pid, stop_haproxy
from safeship.routing.haproxy_log import HAProxyLogTraffic, log_socket, parse_line, route_by_convention
from safeship.traffic import RouteKey, TrafficCounters, TrafficSetup, traffic_source_class

HAPROXY = "/usr/sbin/haproxy"
ROUTE = RouteKey("user-service", "production")
BACKEND = "production__user-service"
SERVERS = {"v1-0": "v1", "v1-1": "v1", "v2-0": "v2", "dead-0": "v2"}
MAX_WAIT_S = 15.0  # the most any wait here polls (a bound, never an expectation)

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]


class FakeRouter:
    """What the source asks the haproxy router: a server's version, and `show stat` counts."""

    def __init__(self) -> None:
        self.stat: dict[str, TrafficCounters] = {}

    def version_of(self, route: RouteKey, server_name: str) -> str | None:
        return SERVERS.get(server_name) if route == ROUTE else None

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return {v: c.plus(TrafficCounters()) for v, c in self.stat.items()} if route == ROUTE else {}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short folder: a Unix socket path holds at most 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="hlog", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def source(state_dir: Path) -> AsyncIterator[HAProxyLogTraffic]:
    built = traffic_source_class("haproxy").create(
        TrafficSetup(router=FakeRouter(), clock=RealClock(), state_dir=state_dir))
    assert isinstance(built, HAProxyLogTraffic)
    try:
        yield built
    finally:
        await built.close()


def line(server: str, status: int, tr: int, ta: int, backend: str = BACKEND) -> bytes:
    return f"safeship 127.0.0.1 {backend} {server} {status} {tr} {ta} 0\n".encode()


class Sender:
    """Datagrams to the source's socket, as HAProxy sends them: without blocking. A Unix datagram
    socket queues only a few datagrams (net.unix.max_dgram_qlen, 10 by default) and the source
    reads on this test's own event loop, so a full queue is waited out here, never blocked on."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(str(path))

    async def send(self, data: bytes) -> None:
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the source never read its socket"
                await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def sender(path: Path) -> AsyncIterator[Sender]:
    out = Sender(path)
    try:
        yield out
    finally:
        out.sock.close()


async def seen(source: HAProxyLogTraffic, lines: int) -> None:
    """Wait (bounded) until the source has taken `lines` lines, however it counted them."""
    deadline = time.monotonic() + MAX_WAIT_S
    while source.lines + source.malformed + source.unattributed < lines:
        assert time.monotonic() < deadline, (
            f"the source took {source.lines} + {source.malformed} malformed + {source.unattributed} "
            f"unattributed lines, not {lines}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- the format, by a fake sender


def test_the_format_parses_and_anything_else_does_not() -> None:
    parsed = parse_line("safeship 127.0.0.1 production__user-service v1-0 503 -1 12 0\n")
    assert parsed is not None and parsed.connect_failure and parsed.active_ms == 12
    assert parse_line("safeship 127.0.0.1 b s 500 4 9 1") is not None
    # %Tw: the time held before a server took the request is not the version's latency
    held = parse_line("safeship 127.0.0.1 b s 200 7 4032 0 4025")
    assert held is not None and (held.queued_ms, held.served_ms) == (4025, 7)
    unserved = parse_line("safeship 127.0.0.1 b s 503 -1 3000 0 -1")
    assert unserved is not None and unserved.served_ms == 3000 and unserved.connect_failure
    assert parse_line("safeship 127.0.0.1 b s 200 1 2 0 -2") is None
    assert not parse_line("safeship 127.0.0.1 b s 500 4 9 1").connect_failure  # type: ignore[union-attr]
    for bad in ("", "safeship 127.0.0.1 b s 200 1 2", "other 127.0.0.1 b s 200 1 2 0",
                "safeship 127.0.0.1 b s two 1 2 0", "safeship 127.0.0.1 b s 200 1 -5 0"):
        assert parse_line(bad) is None, bad
    assert route_by_convention(BACKEND) == ROUTE
    assert route_by_convention(backend_name(ROUTE)) == ROUTE  # the haproxy router's own naming
    assert route_by_convention("no-separator") is None


async def test_lines_become_per_version_counters(source: HAProxyLogTraffic) -> None:
    mode = os.stat(source.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    async with sender(source.path) as out:
        for _ in range(6):
            await out.send(line("v1-0", 200, 3, 4))
        await out.send(line("v1-1", 500, 2, 3))  # a 5xx the server sent: an error
        for _ in range(3):
            await out.send(line("v2-0", 200, 40, 45))
        await out.send(line("dead-0", 503, -1, 1))  # HAProxy's 503 for a server that never answered
        await out.send(line("v2-0", -1, -1, 7))  # no status at all
        await out.send(b"safeship garbage\n")  # malformed: counted, skipped
        await out.send(line("<NOSRV>", 503, -1, 0))  # no server could take it: no version
        await out.send(line("v1-0", 200, 1, 1, backend="not-a-route"))
    await seen(source, 15)
    assert (source.malformed, source.unattributed, source.lines) == (1, 2, 12)
    v1, v2 = source.totals[ROUTE]["v1"], source.totals[ROUTE]["v2"]
    assert (v1.requests, v1.errors, v1.connect_failures) == (7, 1, 0)
    assert (v2.requests, v2.errors, v2.connect_failures) == (5, 0, 2)
    assert v1.latency_sum_ms == 6 * 4 + 3
    assert v2.latency_buckets[histogram.bucket_of(45)] == 3
    assert sum(v2.latency_buckets) == 5
    # without show stat counts of its own the router's (none yet) win: latency from the log only
    counted = await source.counters(ROUTE)
    assert counted["v1"].requests == 0 and sum(counted["v1"].latency_buckets) == 7


async def test_the_routers_counts_win_and_never_decrease(source: HAProxyLogTraffic) -> None:
    router: FakeRouter = source.router
    router.stat = {"v1": TrafficCounters(requests=100, errors=2, connect_failures=1)}
    async with sender(source.path) as out:
        for _ in range(4):
            await out.send(line("v1-0", 200, 10, 11))
    await seen(source, 4)
    first = (await source.counters(ROUTE))["v1"]
    assert (first.requests, first.errors, first.connect_failures) == (100, 2, 1)  # show stat's
    assert sum(first.latency_buckets) == 4 and first.latency_sum_ms == 44  # the log's
    router.stat = {"v1": TrafficCounters(requests=5, errors=0, connect_failures=0)}  # HAProxy restarted
    second = (await source.counters(ROUTE))["v1"]
    assert (second.requests, second.errors, second.connect_failures) == (105, 2, 1)
    router.stat = {}  # its servers were removed: the last counts stay
    third = (await source.counters(ROUTE))["v1"]
    assert (third.requests, third.errors, third.connect_failures) == (105, 2, 1)
    assert third.minus(first).requests == 5


async def test_before_answers_from_per_second_snapshots(state_dir: Path) -> None:
    clock = VirtualClock(start=1000.0)
    source = HAProxyLogTraffic(FakeRouter(), state_dir, clock=clock)
    try:
        assert await source.before(ROUTE, at=1000.0, span=60) is None  # no record
        sent = 0
        async with sender(source.path) as out:
            for minute in range(3):  # at 1060, 1120, 1180: 10, 20 and 30 requests (the last all 5xx)
                clock.advance(60.0)
                for _ in range(10 * (minute + 1)):
                    await out.send(line("v1-0", 200 if minute < 2 else 500, 5, 5))
                    sent += 1
                await seen(source, sent)
        clock.advance(1.0)
        # a snapshot at t holds what arrived before t: the parser's at 1120 and 1180, before()'s at 1181
        whole = await source.before(ROUTE, at=1181.0, span=1000.0)  # back to where the source started
        assert whole is not None and (whole.start, whole.end) == (1000.0, 1181.0)
        assert (whole.counters["v1"].requests, whole.counters["v1"].errors) == (60, 30)
        last = await source.before(ROUTE, at=1181.0, span=1.0)
        assert last is not None and (last.start, last.end) == (1180.0, 1181.0)
        assert (last.counters["v1"].requests, last.counters["v1"].errors) == (30, 30)
        middle = await source.before(ROUTE, at=1180.5, span=60.0)
        assert middle is not None and (middle.start, middle.end) == (1120.0, 1180.0)
        assert (middle.counters["v1"].requests, middle.counters["v1"].errors) == (20, 0)
        assert sum(middle.counters["v1"].latency_buckets) == 20
        assert await source.before(ROUTE, at=1000.0, span=10.0) is None  # nothing recorded that early
    finally:
        await source.close()


async def test_a_stale_socket_is_replaced_and_a_live_one_is_not_taken(state_dir: Path) -> None:
    path = log_socket(state_dir)
    path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody reads it: stale
    first = HAProxyLogTraffic(FakeRouter(), state_dir)
    try:
        async with sender(path) as out:
            await out.send(line("v1-0", 200, 1, 1))
        await seen(first, 1)
        second = HAProxyLogTraffic(FakeRouter(), state_dir)  # another controller on the same state dir
        try:
            with pytest.raises(TemporaryError, match="another process"):
                await second.counters(ROUTE)
        finally:
            await second.close()
        assert path.exists()  # the second one did not remove the first's socket
        async with sender(path) as out:
            await out.send(line("v1-0", 200, 1, 1))
        await seen(first, 2)
    finally:
        await first.close()
    assert not path.exists()


async def test_a_full_queue_drops_and_counts(state_dir: Path) -> None:
    source = HAProxyLogTraffic(None, state_dir, queue=1)
    try:
        parse = source._tasks[0]
        parse.cancel()  # nobody empties the queue now
        with contextlib.suppress(asyncio.CancelledError):
            await parse
        async with sender(source.path) as out:
            for _ in range(5):
                await out.send(line("v1-0", 200, 1, 1))
        deadline = time.monotonic() + MAX_WAIT_S
        while source.dropped < 4:
            assert time.monotonic() < deadline, f"dropped {source.dropped}"
            await asyncio.sleep(0.02)
        assert source.dropped == 4
    finally:
        await source.close()


# ---------------------------------------------------------------- real HAProxy


class Upstream(BaseHTTPRequestHandler):
    """/ok: 200; /fail: 500; /slow: 200 after 300 ms."""

    def do_GET(self) -> None:
        if "slow" in self.path:
            time.sleep(0.3)
        body = b"ok\n"
        self.send_response(500 if "fail" in self.path else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """\
global
    log unix@{socket} len 1024 format raw local0 info
defaults
    mode http
    log global
    log-format "safeship %ci %b %s %ST %Tr %Ta %TR"
    option dontlognull
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 0
frontend fe
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    use-server v2-0 if {{ path_beg /v2 }}
    use-server dead-0 if {{ path_beg /dead }}
    use-server v1-0 if {{ path_beg /v1 }}
    server v1-0 127.0.0.1:{upstream}
    server v2-0 127.0.0.1:{upstream}
    server dead-0 127.0.0.1:{dead}
"""


@contextlib.contextmanager
def running_haproxy(folder: Path, log_socket: Path) -> Iterator[int]:
    """haproxy in the foreground in front of an upstream of the test; yields its port."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(CONFIG.format(socket=log_socket, port=port, backend=BACKEND,
                                        upstream=upstream.server_address[1], dead=free_port()))
        log = folder / "haproxy.log"
        with log.open("wb") as out:
            process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            assert process.poll() is None, f"haproxy exited {process.returncode}: {log.read_text()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, f"haproxy never listened: {log.read_text()}"
            time.sleep(0.05)
        yield port
    finally:
        if process is not None and process.poll() is None:
            process.terminate()  # by its PID
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        upstream.shutdown()
        upstream.server_close()
        thread.join(timeout=5)


@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} is not installed (Debian's haproxy)")
async def test_real_haproxy_lines_give_versions_failures_and_latency(
        source: HAProxyLogTraffic, state_dir: Path) -> None:
    with running_haproxy(state_dir, source.path) as port:
        statuses: dict[str, int] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for path in ["/v1/ok"] * 5 + ["/v1/fail"] * 2 + ["/v2/ok"] * 3 + ["/v2/slow"] * 2 + ["/dead"] * 2:
                response = await client.get(path)
                statuses[f"{path} {response.status_code}"] = statuses.get(f"{path} {response.status_code}", 0) + 1
        assert statuses == {"/v1/ok 200": 5, "/v1/fail 500": 2, "/v2/ok 200": 3, "/v2/slow 200": 2,
                            "/dead 503": 2}
        await seen(source, 14)
    assert (source.malformed, source.unattributed, source.lines) == (0, 0, 14)
    v1, v2 = source.totals[ROUTE]["v1"], source.totals[ROUTE]["v2"]
    assert (v1.requests, v1.errors, v1.connect_failures) == (7, 2, 0)
    assert (v2.requests, v2.errors, v2.connect_failures) == (7, 0, 2)  # dead-0 serves v2: never answered
    slow = histogram.count_above(v2.latency_buckets, histogram.bucket_of(250.0))
    assert slow == 2  # the two /v2/slow requests, %Ta >= 300 ms
    assert histogram.count_above(v1.latency_buckets, histogram.bucket_of(250.0)) == 0
    assert v2.latency_sum_ms >= 600


# ---------------------------------------------------------------- the haproxy router's own config


async def send(port: int, n: int) -> dict[int, int]:
    """`n` requests one after another through the route: how many got each status."""
    got: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i in range(n):
            status = (await client.get(f"/users/{i}")).status_code
            got[status] = got.get(status, 0) + 1
    return got


def stop_routers_haproxy(state_dir: Path, master: int | None) -> None:
    """`stop_haproxy` by the PID file, then, should the master it started still run (its PID file
    gone first), SIGKILL by the PID read when it started."""
    stop_haproxy(state_dir)
    if master is None:
        return
    with contextlib.suppress(OSError):
        if b"haproxy" in Path(f"/proc/{master}/cmdline").read_bytes():
            os.kill(master, signal.SIGKILL)


async def all_logged(source: HAProxyLogTraffic, router: HAProxyRouter, route: RouteKey) -> None:
    """Wait (bounded) until the log has a line for every request show stat counted."""
    deadline = time.monotonic() + MAX_WAIT_S
    while True:
        counted = sum(c.requests for c in (await router.counters(route)).values())
        logged = sum(sum(c.latency_buckets) for c in source.totals.get(route, {}).values())
        if logged == counted:
            return
        assert time.monotonic() < deadline, f"{logged} lines logged for {counted} requests in show stat"
        await asyncio.sleep(0.05)


@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} is not installed (Debian's haproxy)")
async def test_the_haproxy_routers_lines_and_show_stat_merge_per_version(state_dir: Path,
                                                                         upstreams: Upstreams) -> None:
    route = RouteKey("shop", "test")
    good, bad = upstreams.start("v1"), upstreams.start("v2", fail=True)
    router = HAProxyRouter(state_dir, close_grace=2.0)
    source = traffic_source_class("haproxy").create(TrafficSetup(router=router, clock=RealClock(),
                                                                 state_dir=state_dir))
    master: int | None = None
    try:
        port = await router.ensure_route(route, port=0)
        master = haproxy_pid(state_dir)
        assert port is not None
        await router.set_backends(route, "v1", [Backend("test/shop/v1-0", "127.0.0.1", good.port)])
        await router.set_backends(route, "v2", [Backend("test/shop/v2-0", "127.0.0.1", bad.port)])
        await router.set_weights(route, {"v1": 50, "v2": 50})
        for _ in range(100):  # until the route answers (bounded)
            if 200 in await send(port, 1):
                break
            await asyncio.sleep(0.05)
        await all_logged(source, router, route)
        before = await source.counters(route)
        statuses = await send(port, 200)
        await all_logged(source, router, route)
        after = await source.counters(route)
        look = {v: after[v].minus(before.get(v, TrafficCounters())) for v in after}
        assert look["v1"].requests + look["v2"].requests == 200  # show stat's counts
        assert (look["v1"].errors, look["v2"].errors) == (0, statuses.get(500, 0))
        assert look["v2"].requests == statuses.get(500, 0) > 0 and look["v1"].requests == statuses.get(200, 0)
        for version in ("v1", "v2"):  # the log's latency: one line per request, no more, no fewer
            assert sum(look[version].latency_buckets) == look[version].requests
            assert look[version].latency_sum_ms >= 0
        assert (source.malformed, source.unattributed) == (0, 0)
    finally:
        await source.close()
        await router.close()
        stop_routers_haproxy(state_dir, master)


@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} is not installed (Debian's haproxy)")
async def test_open_loop_load_loses_no_log_line(state_dir: Path, upstreams: Upstreams) -> None:
    """~300 requests offered at 150 req/s through the haproxy router: HAProxy's socket queues ~10
    datagrams, so a reader that fell behind would lose lines. Every request show stat counted has
    its line in the histogram."""
    route = RouteKey("shop", "test")
    upstream = upstreams.start("v1")
    router = HAProxyRouter(state_dir, close_grace=2.0)
    source = HAProxyLogTraffic(router, state_dir)
    master: int | None = None
    try:
        port = await router.ensure_route(route, port=0)
        master = haproxy_pid(state_dir)
        assert port is not None
        await router.set_backends(route, "v1", [Backend("test/shop/v1-0", "127.0.0.1", upstream.port)])
        await router.set_weights(route, {"v1": 100})
        for _ in range(100):  # until the route answers (bounded)
            if 200 in await send(port, 1):
                break
            await asyncio.sleep(0.05)
        with LoadGenerator("127.0.0.1", port, rate=150, max_s=2.0) as load:
            deadline = time.monotonic() + MAX_WAIT_S
            while len(load.outcomes) < 250:  # bounded: the generator stops itself after max_s
                assert time.monotonic() < deadline, f"{len(load.outcomes)} answers"
                await asyncio.sleep(0.1)
        assert failed(load.outcomes) == 0
        await all_logged(source, router, route)
        assert source.dropped == 0
        counted = (await source.counters(route))["v1"]
        assert sum(counted.latency_buckets) == counted.requests >= 250
    finally:
        await source.close()
        await router.close()
        stop_routers_haproxy(state_dir, master)


# ---------------------------------------------------------------- through a real controller


def on_haproxy_with_its_log(text: str) -> str:
    """The live config with `router: haproxy` and `traffic_source: haproxy` (this source)."""
    edited = text.replace("platform: local}", "platform: local, router: haproxy, traffic_source: haproxy}")
    assert edited.count("traffic_source: haproxy") == 1
    return edited


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} is not installed (Debian's haproxy)")
def test_a_controller_on_haproxy_reports_latency_from_the_log(tmp_path: Path) -> None:
    """The controller builds this source from the registry for an environment that names it: a
    canary through HAProxy under load succeeds with no failed request, and the version's metrics
    carry a p99 and a mean, which show stat alone cannot give."""
    state = tmp_path / "state"
    try:
        with controller_with(tmp_path, on_haproxy_with_its_log) as setup:
            client = ControllerClient(setup.state_dir)
            port = client.routes()[LIVE_ROUTE]
            load = Load(port, rate=100)
            with load:
                first, phases = wait_final(client, deploy(client, "v1.2.0")["id"])  # nothing served before it
                assert first["phase"] == "succeeded", (first["reason"], phases)
                started = time.time()
                done, phases = wait_final(client, deploy(client, "v1.4.0")["id"])
                ended = time.time()
                assert done["phase"] == "succeeded", (done["reason"], phases)
                load.none_failed(started, ended, "the v1.4.0 canary through haproxy")
                seen_by_controller = client.get(done["id"])["metrics"]["v1.4.0"]
            assert seen_by_controller["requests"] > 0
            assert isinstance(seen_by_controller["p99_ms"], float) and seen_by_controller["p99_ms"] > 0
            assert isinstance(seen_by_controller["mean_ms"], float) and seen_by_controller["mean_ms"] >= 0
    finally:
        stop_haproxy(state)
