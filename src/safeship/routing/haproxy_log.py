"""HAProxy's per-request log lines as a traffic source (`traffic_source: haproxy`): latency
histograms per version, which HAProxy's `show stat` cannot give (it keeps averages only).

The haproxy router's config sends one log line per request, without a syslog header
(`log unix@<state_dir>/haproxy/log.sock format raw`), to a Unix datagram socket this source binds.
The line's format (`log-format`) is fixed:

    safeship %ci %b %s %ST %Tr %Ta %TR %Tw

client address, backend name, server name, HTTP status (-1: none), the server's response time in
ms (-1: no response), the total active time in ms, the time to read the request in ms, the time
it waited in HAProxy before a server took it in ms (-1: none took it; the recreate gap's hold, whose
refused tries wait 1 s each, shows here). For example
`safeship 127.0.0.1 production__user-service v1-0 200 3 5 0 0`. A line without the last field (the
format before it was added, from a HAProxy still on an older config) counts as waited 0 ms.

What a line means:

- route: the backend name. The router's `route_of(backend)` names it when the router has one;
  otherwise the backend is `<environment>__<service>`, the convention the haproxy router names its
  backends by (`safeship.routing.haproxy.backend_name`; DNS labels hold no `_`, so it is
  unambiguous).
- version: `router.version_of(route, server)`; a server the router no longer knows keeps the
  version it last had (a line can arrive after its server was removed). A line whose server maps
  to no version (`<NOSRV>`: no server could take it) is counted as `unattributed` and nowhere else.
- requests, errors, connect failures: every line is a request; status -1, or a 503 with `%Tr` -1
  (HAProxy answered for a server that never responded: refused, reset, down) is a connect failure;
  any other 5xx is an error (`TrafficCounters.observe` with status None or the status).
- latency: `%Ta` less `%Tw` into `safeship.histogram`'s buckets, and into the latency sum: like the
  builtin router, the time a request was held before a server took it is not the serving version's.

A malformed line (wrong field count or tag, a number that is not one) is counted in `malformed` and
skipped; it never stops the reader. A thread of its own receives the datagrams (the socket queues
only ~10 before HAProxy drops lines, so it must be emptied at once, whatever the event loop is
busy with) into a bounded buffer; a task on the event loop parses them. When the buffer is full
the newest datagram is dropped and counted in `dropped` (a latency histogram with fewer requests,
never a wrong one).

`counters(route)`: the router's `show stat` counts (requests, 5xx, connect failures) with this
source's latency histogram and latency sum laid over them. The router's counts win: HAProxy counts
every request it handles, whereas log datagrams are lossy by design (HAProxy drops a line when the
socket's buffer is full or nobody reads it yet), and the router's counts are what every other
caller of the router sees. The analysis judges latency by the histogram's own total
(`sum(latency_buckets)`), so a histogram that missed a few lines is a smaller sample, not a
skewed one. Counts never decrease: when the router's count of a version goes back (HAProxy
restarted without carrying its counters), what it had counted is kept as an offset and the new
count added to it, and a version the router stops reporting (its servers removed) keeps its last
counts. Without a router (`router=None`, a test or a log-only setup), the log's own counts are used.

`before(route, at, span)`: a ring of per-route snapshots of the log-derived counters, taken by
the parser once a second while lines arrive (before it counts the batch it just took, so a
snapshot at time t holds what was counted before t), every `IDLE_SNAPSHOT_S` while none do (so an
idle hour is a record of zero requests, not a gap), and at every `counters` and `before` call (at
most once a second). A route's record starts with zero requests at the time the source started
listening. Answered as `RouterTraffic` does: the difference between the latest snapshot at or
before `at - span` (or, when none is that old, the first one inside the window: the record is
shorter than asked, and says so by its bounds) and the latest at or before `at`, with their real
times; None when fewer than two snapshots bound it. These windows are the log's counts (the router
keeps no record of a past time to give).

The socket: `<state_dir>/haproxy/log.sock` (or where the haproxy router's `log_socket_path` puts
it when that path is too long for a Unix socket), mode 0600: HAProxy runs as the same user (a
HAProxy of another user cannot write to it). A socket file left by a dead process is removed
first; one that a live process reads (another controller on the same state dir) is left alone,
and binding is tried again on the next read, so a second controller that is about to be refused
its lock never steals the log of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from safeship.clock import Clock, RealClock
from safeship.errors import PermanentError, TemporaryError
from safeship.routing.private import check_private
from safeship.traffic import RouteKey, SnapshotRing, TrafficCounters, TrafficSetup, TrafficWindow

log = logging.getLogger(__name__)

TAG = "safeship"
LOG_FORMAT = "safeship %ci %b %s %ST %Tr %Ta %TR %Tw"  # what the router's config must send
SOCKET = Path("haproxy") / "log.sock"  # under the state dir
BACKEND_SEPARATOR = "__"  # <environment>__<service>
QUEUE = 10_000  # datagrams waiting for the parser
RECEIVE_WAIT_S = 0.2  # the receiving thread's recv timeout
PARSE_EVERY_S = 0.05  # how often the parser looks at an empty buffer
PARSE_BATCH = 1000  # datagrams parsed between two yields to the event loop
DATAGRAM = 4096  # bytes read per datagram; a line is far shorter
RING = 3600  # snapshots kept per route: an hour at one a second
SNAPSHOT_S = 1.0  # the spacing of snapshots while lines arrive
IDLE_SNAPSHOT_S = 30.0  # and while none do
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL


@dataclass(frozen=True)
class LogLine:
    client: str
    backend: str
    server: str
    status: int  # -1: none
    response_ms: int  # %Tr; -1: the server never responded
    active_ms: int  # %Ta
    request_ms: int  # %TR
    queued_ms: int = 0  # %Tw; -1 (no server took it) counts as 0

    @property
    def served_ms(self) -> int:
        """The request's time from the moment a server took it: `%Ta` less `%Tw`."""
        return max(0, self.active_ms - max(0, self.queued_ms))

    @property
    def connect_failure(self) -> bool:
        return self.status == -1 or (self.status == 503 and self.response_ms == -1)


def parse_line(text: str) -> LogLine | None:
    """One log line in `LOG_FORMAT`, or None when it is not one."""
    fields = text.split()
    if len(fields) not in (8, 9) or fields[0] != TAG:
        return None
    try:
        status, response, active, request, *rest = (int(f) for f in fields[4:])
    except ValueError:
        return None
    queued = rest[0] if rest else 0
    if active < 0 or status < -1 or response < -1 or queued < -1:
        return None
    return LogLine(fields[1], fields[2], fields[3], status, response, active, request, queued)


def log_socket(state_dir: Path) -> Path:
    """Where the haproxy router's config sends its lines: its own `log_socket_path` when it has one
    (it moves the socket to a short folder in /tmp when the state dir's path is too long for a Unix
    socket), else `<state_dir>/haproxy/log.sock`."""
    try:
        router_module = importlib.import_module("safeship.routing.haproxy")
    except ImportError:
        router_module = None
    where = getattr(router_module, "log_socket_path", None)
    if callable(where):
        found = where(state_dir)
        if isinstance(found, Path):
            return found
    return state_dir / SOCKET


def route_by_convention(backend: str) -> RouteKey | None:
    """`<environment>__<service>` as a route, or None for another name."""
    environment, separator, service = backend.partition(BACKEND_SEPARATOR)
    if not separator or not environment or not service or BACKEND_SEPARATOR in service:
        return None
    return RouteKey(service=service, environment=environment)


def _copy(counters: Mapping[str, TrafficCounters]) -> dict[str, TrafficCounters]:
    return {version: c.plus(TrafficCounters()) for version, c in counters.items()}


class _Monotonic:
    """One version's router counts made never decreasing (see the module's docstring)."""

    __slots__ = ("last", "offset")

    def __init__(self) -> None:
        self.last: tuple[int, ...] = (0, 0, 0)
        self.offset: tuple[int, ...] = (0, 0, 0)

    def update(self, now: tuple[int, ...] | None) -> tuple[int, ...]:
        if now is None:  # the router no longer reports this version: its last counts stay
            now = self.last
        elif any(n < last for n, last in zip(now, self.last, strict=True)):
            self.offset = tuple(o + last for o, last in zip(self.offset, self.last, strict=True))
        self.last = now
        return tuple(o + n for o, n in zip(self.offset, now, strict=True))


class HAProxyLogTraffic:
    """A `TrafficSource` over HAProxy's log lines merged with the haproxy router's counters."""

    name: ClassVar[str] = "haproxy"

    def __init__(self, router: Any, state_dir: Path, *, clock: Clock | None = None, ring: int = RING,
                 queue: int = QUEUE) -> None:
        self.router = router
        self.clock: Clock = clock if clock is not None else RealClock()
        self.path = log_socket(state_dir)
        self._state_dir = state_dir
        # the ring's spacing is the snapshot schedule's (`_snapshot`); it only keeps it ordered
        self._ring = SnapshotRing(ring, min_spacing=1e-9)
        self._queue_size = queue
        self.totals: dict[RouteKey, dict[str, TrafficCounters]] = {}
        self.malformed = 0  # lines that are not in LOG_FORMAT
        self.unattributed = 0  # lines of a route or server that maps to no version
        self.dropped = 0  # datagrams the full queue had no room for
        self.lines = 0  # lines counted into `totals`
        self._servers: dict[tuple[RouteKey, str], str] = {}
        self._last_snapshot = -float("inf")
        self._monotonic: dict[tuple[RouteKey, str], _Monotonic] = {}
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None  # the socket file this source made
        self._since = self.clock.now()  # lines are counted from here: every route had none before
        self._buffer: deque[bytes] = deque()  # filled by the receiving thread, emptied by the parser
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._bind()
        with contextlib.suppress(RuntimeError):  # no running loop: started by the first read
            asyncio.get_running_loop()
            self._start()

    @classmethod
    def create(cls, setup: TrafficSetup) -> HAProxyLogTraffic:
        return cls(setup.router, setup.state_dir, clock=setup.clock)

    # ------------------------------------------------------------ the socket

    def _bind(self) -> None:
        """Bind the log socket unless a live reader holds it (then try again later)."""
        if self._sock is not None or self._closed:
            return
        path = str(self.path)
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise PermanentError(f"haproxy log socket {path}: the path is {len(os.fsencode(path))} bytes, "
                                 f"longer than the {_UNIX_PATH_MAX} a Unix socket takes; use a shorter state_dir")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private(self.path.parent, "haproxy log socket folder", self._state_dir)
            if self._live_reader():
                log.warning("haproxy log socket %s is read by another process; not taking it", path)
                return
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    raise PermanentError(f"haproxy log socket {path} is a directory; remove it")
                os.unlink(path)  # a stale socket left by a process that died
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind(path)  # in a 0700 folder when this source made it; the umask is not
                os.chmod(path, 0o600)  # touched (it is the whole process's, threads included)
                made = os.stat(path)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise PermanentError(f"haproxy log socket {path} cannot be bound: {exc.strerror or exc}") from exc
        self._sock, self._inode, self._since = sock, (made.st_dev, made.st_ino), self.clock.now()

    def _live_reader(self) -> bool:
        """Whether a process is bound to the socket file now (a stale file refuses a connection)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _ensure(self) -> None:
        """Reading, or a TemporaryError saying why not (a read must not measure nothing silently)."""
        if self._closed:
            raise TemporaryError(f"haproxy log source on {self.path} is closed", delay=5.0)
        if self._tasks and self._tasks[0].done():  # the parser ended: a bug, logged; parse again
            ended = self._tasks[0]
            failure = ended.exception() if not ended.cancelled() else None
            log.error("haproxy log parser stopped (%r); starting it again", failure)
            self._tasks = [asyncio.create_task(self._parse(), name="haproxy-log-parse")]
        try:
            self._start()
        except PermanentError as exc:
            raise TemporaryError(str(exc), delay=5.0) from exc
        if not self._tasks:
            raise TemporaryError(f"haproxy log socket {self.path} is read by another process, not this "
                                 "source: no latency to measure", delay=5.0)

    def _start(self) -> None:
        """Start the receiving thread and the parser on the running loop (once, and only once bound)."""
        if self._tasks or self._closed:
            return
        self._bind()
        if self._sock is None:
            return
        self._sock.settimeout(RECEIVE_WAIT_S)  # the thread looks at `_closed` this often
        self._thread = threading.Thread(target=self._receive, args=(self._sock,), name="haproxy-log-receive",
                                        daemon=True)
        self._thread.start()
        self._tasks = [asyncio.create_task(self._parse(), name="haproxy-log-parse")]

    def _receive(self, sock: socket.socket) -> None:
        """The receiving thread: datagrams into the bounded buffer, at once. A thread, not a task:
        a Unix datagram socket queues only `net.unix.max_dgram_qlen` datagrams (10 by default)
        before HAProxy's non-blocking sends fail and it drops lines, and an event loop busy for a
        few milliseconds with the controller's other work would not empty it in time."""
        while not self._closed:
            try:
                data = sock.recv(DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:  # a closed socket, or a passing error: logged, and read on
                if self._closed:
                    return
                log.warning("haproxy log socket %s: %s", self.path, exc)
                time.sleep(RECEIVE_WAIT_S)
                continue
            if len(self._buffer) >= self._queue_size:
                self.dropped += 1
            else:
                self._buffer.append(data)

    async def _parse(self) -> None:
        """The parser: the buffer's datagrams into counters, on the event loop (where the router's
        `version_of` and the readers of the counters live)."""
        while True:
            if not self._buffer:
                self._snapshot(idle=True)
                await asyncio.sleep(PARSE_EVERY_S)
                continue
            self._snapshot(idle=False)  # what was counted before this batch, at the time it is read
            for _ in range(min(len(self._buffer), PARSE_BATCH)):
                data = self._buffer.popleft()
                for text in data.decode("utf-8", "replace").splitlines():
                    if text.strip():
                        await self.take(text)
            await asyncio.sleep(0)  # the loop's other work between batches

    # ------------------------------------------------------------ lines

    async def take(self, text: str) -> None:
        """Count one log line (the parser calls this; tests may too)."""
        line = parse_line(text)
        if line is None:
            self.malformed += 1
            return
        route = self._route_of(line.backend)
        version = await self._version_of(route, line.server) if route is not None else None
        if route is None or version is None:
            self.unattributed += 1
            return
        if route not in self.totals:  # a route's record starts at zero when the source started
            self._ring.keep(route, self._since, {})
        counters = self.totals.setdefault(route, {}).setdefault(version, TrafficCounters())
        counters.observe(float(line.served_ms), status=None if line.connect_failure else line.status)
        self.lines += 1

    def _route_of(self, backend: str) -> RouteKey | None:
        ask = getattr(self.router, "route_of", None)
        if callable(ask):
            try:
                found = ask(backend)
            except Exception:  # the router's trouble is not the log's: the line is unattributed
                return None
            return found if isinstance(found, RouteKey) else None
        return route_by_convention(backend)

    async def _version_of(self, route: RouteKey, server: str) -> str | None:
        ask = getattr(self.router, "version_of", None)
        found: Any = None
        if callable(ask):
            try:
                found = ask(route, server)
                if inspect.isawaitable(found):
                    found = await found
            except Exception:
                found = None
        if isinstance(found, str) and found:
            self._servers[route, server] = found
            return found
        return self._servers.get((route, server))

    # ------------------------------------------------------------ the ring

    def _snapshot(self, *, idle: bool) -> None:
        now = self.clock.now()
        if now - self._last_snapshot < (IDLE_SNAPSHOT_S if idle else SNAPSHOT_S):
            return
        self._last_snapshot = now
        for route, counters in self.totals.items():
            self._ring.keep(route, now, counters)

    # ------------------------------------------------------------ TrafficSource

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        self._ensure()
        self._snapshot(idle=False)
        logged = self.totals.get(route, {})
        if self.router is None or not callable(getattr(self.router, "counters", None)):
            return _copy(logged)
        try:
            counted = await self.router.counters(route)
        except (TemporaryError, PermanentError):
            raise
        except Exception as exc:  # the router's own trouble reaches callers as a TemporaryError
            raise TemporaryError(f"haproxy counters of {route}: {exc}", delay=1.0) from exc
        merged: dict[str, TrafficCounters] = {}
        for version in sorted(set(counted) | {v for (r, v) in self._monotonic if r == route}):
            given = counted.get(version)
            now = (given.requests, given.errors, given.connect_failures) if given is not None else None
            requests, errors, connect_failures = self._monotonic.setdefault((route, version), _Monotonic()).update(now)
            latency = logged.get(version, TrafficCounters())
            merged[version] = TrafficCounters(requests=requests, errors=errors, connect_failures=connect_failures,
                                              latency_sum_ms=latency.latency_sum_ms,
                                              latency_buckets=list(latency.latency_buckets))
        for version, latency in logged.items():  # a version the router never reported: its latency
            if version not in merged:
                merged[version] = TrafficCounters(latency_sum_ms=latency.latency_sum_ms,
                                                  latency_buckets=list(latency.latency_buckets))
        return merged

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        self._ensure()
        self._snapshot(idle=False)  # the record up to now
        # the latest snapshot at or before the window's start, else the first one inside it (a
        # route's first is the source's start, when it had served nothing the source could see)
        return self._ring.window(route, at, span, from_first=True)

    async def close(self) -> None:
        """Stop reading and remove the socket file (the router belongs to whoever built it)."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, RECEIVE_WAIT_S * 10)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                found = os.lstat(self.path)
                if (found.st_dev, found.st_ino) == self._inode:  # ours, not a later reader's
                    os.unlink(self.path)
            self._sock.close()
            self._sock = None
