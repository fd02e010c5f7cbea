"""The builtin reverse proxy: one HTTP/1.1 listener per route, traffic split across versions.

Why it looks the way it does:

- Raw asyncio streams, no HTTP framework. The router sits inside the controller's event loop
  and must keep up with HAProxy within a factor of two, which frameworks do not.
- Only the headers that decide framing and connection reuse are looked at (Content-Length,
  Transfer-Encoding, Connection, Expect), by searching one lower-cased copy of the head.
  Everything else passes through byte for byte.
- Timeouts come from one watchdog task that scans per-connection deadlines, instead of an
  `asyncio.timeout()` per await, which would allocate a timer on every request.
- Small request bodies are read whole so that a request whose upstream fails before answering
  can be replayed on another instance; large and chunked bodies are streamed.
- A route may listen on any address and terminate TLS (`tls=`, see routing/tls.py): the
  certificate follows its files for new connections while open ones keep theirs, and an optional
  second port answers plain HTTP with a redirect to https. Requests on a TLS route reach the
  upstream with `X-Forwarded-Proto: https` (replacing any the client sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence

from safeship.config.models import SafeshipConfig
from safeship.errors import ConflictError, InputError, NotFoundError, TemporaryError
from safeship.routing.base import (
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
)
from safeship.routing.http11 import (
    CHUNK,
    CHUNKED,
    CONTINUE,
    END_OF_HEAD,
    HEAD_LIMIT,
    HIGH_WATER,
    LENGTH,
    NO_BODY,
    STREAM_ERRORS,
    UNTIL_CLOSE,
    BadMessage,
    PeerFailed,
    Request,
    Response,
    copy_chunked,
    copy_exact,
    copy_until_eof,
    with_forwarded_proto,
)
from safeship.routing.tls import ReloadingContext, TlsListener, redirect_answer, tls_for

log = logging.getLogger(__name__)

_MAX_INTERIM = 8  # 1xx responses relayed before the final one
_WATCH_INTERVAL = 0.25
_TLS_HANDSHAKE_TIMEOUT = 10.0
_REDIRECT_TIMEOUT = 10.0  # a redirect port's client has this long to send its request head

_monotonic = time.monotonic


def _canned(status: int, reason: str, *, close: bool) -> bytes:
    body = f"{status} {reason}\n".encode()
    connection = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n{connection}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_CANNED = {
    (status, close): _canned(status, reason, close=close)
    for status, reason in _REASONS.items()
    for close in (False, True)
}


# ---------------------------------------------------------------------------------------------
# Routing state


class _Upstream:
    """One backend of one version: its idle keep-alive connections and its in-flight count."""

    __slots__ = ("backend", "draining", "idle", "in_flight", "version")

    def __init__(self, backend: Backend, version: _Version) -> None:
        self.backend = backend
        self.version = version
        self.in_flight = 0
        self.draining = False
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def retire(self) -> None:
        """No new requests; in-flight ones finish and their connections close on return."""
        self.draining = True
        self.trim_idle(math.inf)

    def trim_idle(self, released_before: float) -> None:
        keep = [entry for entry in self.idle if entry[2] >= released_before]
        for _reader, writer, released in self.idle:
            if released < released_before:
                writer.close()
        self.idle = keep


class _Version:
    __slots__ = ("counters", "cursor", "name", "upstreams", "weight")

    def __init__(self, name: str) -> None:
        self.name = name
        self.weight = 0
        self.upstreams: list[_Upstream] = []
        self.cursor = 0
        self.counters = TrafficCounters()

    def pick(self, avoid: _Upstream | None = None) -> _Upstream | None:
        """The least busy upstream; ties go round-robin so load spreads when all are idle."""
        upstreams = self.upstreams
        count = len(upstreams)
        if count == 1:
            only = upstreams[0]
            return None if only is avoid else only
        self.cursor = start = (self.cursor + 1) % count if count else 0
        best: _Upstream | None = None
        for offset in range(count):
            candidate = upstreams[(start + offset) % count]
            if candidate is not avoid and (best is None or candidate.in_flight < best.in_flight):
                best = candidate
        return best


class _Session:
    """One client connection, as the watchdog sees it."""

    __slots__ = ("awaiting_upstream", "busy", "deadline", "timed_out", "upstream_writer", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.deadline = math.inf
        self.busy = False
        self.awaiting_upstream = False
        self.timed_out = False
        self.upstream_writer: asyncio.StreamWriter | None = None

    def expire(self) -> None:
        self.deadline = math.inf
        upstream = self.upstream_writer
        if upstream is not None and self.awaiting_upstream:
            # The request is still answerable: the handler sees the abort and sends a 504.
            self.timed_out = True
            upstream.transport.abort()
            return
        self.writer.transport.abort()
        if upstream is not None:
            upstream.transport.abort()


class _Route:
    __slots__ = (
        "closing",
        "held_until",
        "key",
        "redirect",
        "released",
        "server",
        "sessions",
        "table",
        "tls",
        "total_weight",
        "versions",
        "weights_since_hold",
    )

    def __init__(self, key: RouteKey) -> None:
        self.key = key
        self.server: asyncio.Server | None = None
        self.redirect: asyncio.Server | None = None  # the HTTP -> HTTPS redirect port, if any
        self.tls: ReloadingContext | None = None
        self.versions: dict[str, _Version] = {}
        self.table: list[tuple[int, _Version]] = []  # cumulative weight, version
        self.total_weight = 0
        self.sessions: set[_Session] = set()
        self.closing = False
        self.held_until: float | None = None  # loop time
        self.released = asyncio.Event()
        self.weights_since_hold = False

    def version(self, name: str) -> _Version:
        state = self.versions.get(name)
        if state is None:
            state = self.versions[name] = _Version(name)
        return state

    def rebuild_table(self) -> None:
        """Versions with weight but no ready backend are skipped: their share goes elsewhere."""
        table: list[tuple[int, _Version]] = []
        total = 0
        for version in self.versions.values():
            if version.weight > 0 and version.upstreams:
                total += version.weight
                table.append((total, version))
        self.table = table
        self.total_weight = total

    def choose(self) -> _Upstream | None:
        table = self.table
        if not table:
            return None
        version = table[-1][1]
        if len(table) > 1:
            point = random.random() * self.total_weight
            for bound, candidate in table:
                if point < bound:
                    version = candidate
                    break
        return version.pick()

    def choose_retry(self, failed: _Upstream) -> _Upstream | None:
        """Another instance: of the same version if it has one, else of another routed version."""
        same_version = failed.version.pick(avoid=failed)
        if same_version is not None:
            return same_version
        others = [version for _, version in self.table if version is not failed.version]
        if not others:
            return None
        weights = [version.weight for version in others]
        return random.choices(others, weights=weights)[0].pick()

    def release_hold(self) -> None:
        self.held_until = None
        self.released.set()

    def maybe_release_hold(self) -> None:
        if self.held_until is not None and self.weights_since_hold and self.table:
            self.release_hold()


class _NoResponse(Exception):
    """The upstream failed before sending a byte; `replayable` if the request can be resent."""

    def __init__(self, *, replayable: bool) -> None:
        super().__init__()
        self.replayable = replayable


# ---------------------------------------------------------------------------------------------
# The router


class BuiltinRouter:
    """An asyncio HTTP/1.1 reverse proxy; implements `safeship.routing.base.Router`.

    It runs in the caller's event loop and never installs a loop policy; run it under uvloop
    for speed. `unrouted` counts per route the requests answered 503 because no version had a
    ready backend (or a hold expired).
    """

    abilities: RouterAbilities = RouterAbilities(hold=True, listens=True)

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        upstream_timeout: float = 60.0,
        client_idle_timeout: float = 60.0,
        pool_idle_timeout: float = 2.0,
        max_idle_per_backend: int = 64,
        close_grace: float = 10.0,
        config: SafeshipConfig | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._upstream_timeout = upstream_timeout
        self._client_idle_timeout = client_idle_timeout
        # Shorter than common upstream keep-alive timeouts (uvicorn: 5 s) so that we seldom
        # pick a pooled connection the upstream is closing.
        self._pool_idle_timeout = pool_idle_timeout
        self._max_idle = max_idle_per_backend
        self._close_grace = close_grace
        self._config = config  # where `ensure_route` finds a route's TLS settings
        self._routes: dict[RouteKey, _Route] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.unrouted: dict[RouteKey, int] = {}

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        """The builtin router for a controller: in a daemon process of its own when
        `setup.own_process` (routes keep serving while the controller restarts), else in the
        caller's event loop."""
        if setup.own_process:
            from safeship.routing.remote import RemoteRouter

            return RemoteRouter(setup.state_dir, config=setup.config)
        return cls(close_grace=setup.close_grace, config=setup.config)

    async def open(self) -> None:
        return None  # listeners open per route, in this event loop

    # -- listeners ----------------------------------------------------------------------------

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        """Make `route` known; with `port`, listen on `host:port` unless it listens already (with
        TLS when the config given to the router sets it for the route)."""
        state = self._state(route)
        if state.server is not None:
            if self._config is not None:
                await self.update_tls(route, tls_for(self._config, route))
            return self.port(route)
        if port is None:
            return None
        return await self.add_route(route, host=host, port=port, tls=tls_for(self._config, route))

    async def update_tls(self, route: RouteKey, tls: TlsListener | None) -> None:
        """Bring a listening route's TLS files and redirect port to `tls` (a controller that
        restarted with an edited config). New connections get the new files; open ones keep
        theirs. Turning TLS on or off needs a new listener on the same port, which would refuse
        connections for a moment: that waits for the router to restart, and says so in its log."""
        state = self._routes.get(route)
        if state is None or state.server is None:
            return
        current = state.tls
        if (current is None) != (tls is None):
            log.warning("builtin router: %s: the config turns TLS %s, which takes effect when the router "
                        "restarts; it serves as before until then", route, "on" if tls is not None else "off")
            return
        if current is None or tls is None or current.listener == tls:
            return
        current.retarget(tls)
        if tls.redirect_http != (state.redirect.sockets[0].getsockname()[1] if state.redirect else None):
            if state.redirect is not None:
                state.redirect.close()
                state.redirect = None
            if tls.redirect_http is not None:
                host = state.server.sockets[0].getsockname()[0]
                try:
                    state.redirect = await asyncio.start_server(
                        functools.partial(self._redirect_client, state), host, tls.redirect_http, limit=HEAD_LIMIT
                    )
                except OSError as exc:
                    raise TemporaryError(f"builtin router: cannot listen on {host}:{tls.redirect_http} for the "
                                         f"https redirect of {route}: {exc}") from exc

    async def add_route(
        self, route: RouteKey, *, host: str = "127.0.0.1", port: int = 0, tls: TlsListener | None = None
    ) -> int:
        """Start listening for `route` on `host:port`; returns the bound port (port 0 picks one).
        With `tls`, the listener terminates TLS and `tls.redirect_http`, when set, answers plain
        HTTP on that port with a redirect to this one."""
        state = self._state(route)
        if state.server is not None:
            raise ConflictError(f"builtin router: {route} already listens on {self.port(route)}")
        context = ReloadingContext(tls) if tls is not None else None  # InputError when the pair does not load
        handler = functools.partial(self._serve_client, state)
        try:
            state.server = await asyncio.start_server(
                handler, host, port, limit=HEAD_LIMIT, backlog=1024,
                ssl=context.opening if context is not None else None,
                ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT if context is not None else None,
            )
        except OSError as exc:
            raise TemporaryError(f"builtin router: cannot listen on {host}:{port}: {exc}") from exc
        state.tls = context
        if tls is not None and tls.redirect_http is not None:
            try:
                state.redirect = await asyncio.start_server(
                    functools.partial(self._redirect_client, state), host, tls.redirect_http, limit=HEAD_LIMIT
                )
            except OSError as exc:
                state.server.close()
                state.server = state.tls = None
                raise TemporaryError(f"builtin router: cannot listen on {host}:{tls.redirect_http} for the "
                                     f"https redirect of {route}: {exc}") from exc
        self.unrouted.setdefault(route, 0)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="builtin-router-watchdog")
        bound = self.port(route)
        log.info("builtin router: %s listening on %s:%d%s", route, host, bound, " (TLS)" if tls else "")
        return bound

    def port(self, route: RouteKey) -> int:
        state = self._routes.get(route)
        if state is None or state.server is None:
            raise NotFoundError(f"builtin router: no listener for {route}")
        port: int = state.server.sockets[0].getsockname()[1]
        return port

    async def remove_route(self, route: RouteKey) -> None:
        """Stop listening; in-flight requests get `close_grace` seconds, then are cut."""
        state = self._routes.pop(route, None)
        if state is None:
            return
        state.closing = True
        if state.server is not None:
            state.server.close()
        if state.redirect is not None:
            state.redirect.close()
        state.released.set()
        for session in list(state.sessions):
            if not session.busy:
                session.writer.close()
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._close_grace
        while state.sessions and loop.time() < give_up_at:
            await asyncio.sleep(0.02)
        for session in list(state.sessions):
            session.deadline = 0.0
            session.awaiting_upstream = False
            session.expire()
        for version in state.versions.values():
            for upstream in version.upstreams:
                upstream.retire()
        self.unrouted.pop(route, None)

    async def close(self) -> None:
        for route in list(self._routes):
            await self.remove_route(route)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    # -- the Router protocol ------------------------------------------------------------------

    async def set_backends(
        self, route: RouteKey, version: str, backends: Sequence[Backend]
    ) -> None:
        state = self._state(route)
        version_state = state.version(version)
        current = {upstream.backend: upstream for upstream in version_state.upstreams}
        ready: list[_Upstream] = []
        for backend in dict.fromkeys(backends):
            upstream = current.pop(backend, None)
            ready.append(upstream if upstream is not None else _Upstream(backend, version_state))
        for leaving in current.values():
            leaving.retire()
        version_state.upstreams = ready
        state.rebuild_table()
        state.maybe_release_hold()

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        _check_weights(route, weights)
        state = self._state(route)
        for version in state.versions.values():
            version.weight = 0
        for name, weight in weights.items():
            state.version(name).weight = weight
        state.rebuild_table()
        if state.held_until is not None:
            state.weights_since_hold = True
            state.maybe_release_hold()

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        if not max_wait > 0:
            raise InputError(f"builtin router: hold max_wait must be > 0, got {max_wait}")
        state = self._state(route)
        if state.held_until is None:
            state.released = asyncio.Event()
        state.held_until = asyncio.get_running_loop().time() + max_wait
        state.weights_since_hold = False

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        state = self._routes.get(route)
        if state is None:
            return {}
        return {name: _copy(version.counters) for name, version in state.versions.items()}

    def snapshot(self) -> dict[RouteKey, dict[str, TrafficCounters]]:
        """Every route's counters (copies), synchronously: the shape `routing.metrics` renders."""
        return {
            key: {name: _copy(version.counters) for name, version in state.versions.items()}
            for key, state in self._routes.items()
        }

    async def routes_snapshot(self) -> RoutesSnapshot:
        return RoutesSnapshot(counters=self.snapshot(), unrouted=dict(self.unrouted))

    def _state(self, route: RouteKey) -> _Route:
        state = self._routes.get(route)
        if state is None:
            state = self._routes[route] = _Route(route)
        return state

    # -- serving clients ----------------------------------------------------------------------

    async def _redirect_client(
        self, route: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The redirect port: one request head, answered with the https location, then close."""
        try:
            async with asyncio.timeout(_REDIRECT_TIMEOUT):
                head = await reader.readuntil(END_OF_HEAD)
                server = route.server
                if server is None or route.closing:
                    return
                writer.write(redirect_answer(head.lstrip(b"\r\n"), server.sockets[0].getsockname()[1]))
                await writer.drain()
        except asyncio.LimitOverrunError:
            writer.write(_CANNED[431, True])
        except (*STREAM_ERRORS, TimeoutError):
            pass
        finally:
            writer.close()

    async def _serve_client(
        self, route: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = _Session(writer)
        route.sessions.add(session)
        try:
            await self._serve_requests(route, session, reader, writer)
        except (*STREAM_ERRORS, PeerFailed):
            pass
        except Exception:
            log.exception("builtin router: %s: unexpected error serving a client", route.key)
        finally:
            route.sessions.discard(session)
            writer.close()

    async def _serve_requests(
        self,
        route: _Route,
        session: _Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        idle_timeout = self._client_idle_timeout
        while not route.closing:
            session.busy = False
            session.deadline = _monotonic() + idle_timeout
            try:
                head = await reader.readuntil(END_OF_HEAD)
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                writer.write(_CANNED[431, True])
                return
            if head.startswith(b"\r\n"):
                # Stray blank lines before a request line are allowed (RFC 9112, 2.2).
                head = head.lstrip(b"\r\n")
                if not head:
                    continue
            session.busy = True
            try:
                request = Request(head)
            except BadMessage:
                writer.write(_CANNED[400, True])
                return
            if not await self._handle(route, session, request, reader, writer):
                return

    async def _handle(
        self,
        route: _Route,
        session: _Session,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answers one request; True when the client connection may carry another."""
        if request.length and not request.streams_body:
            if request.expects_continue:
                writer.write(CONTINUE)
            session.deadline = _monotonic() + self._upstream_timeout
            request.body = await reader.readexactly(request.length)
        if route.tls is not None:  # the upstream learns the client came over https
            request.head = with_forwarded_proto(request.head, b"https")
        if route.held_until is not None and not await self._wait_for_release(route, session):
            return self._unrouted(route, request, writer)
        upstream = route.choose()
        if upstream is None:
            return self._unrouted(route, request, writer)
        # Latency runs from dispatch: time queued behind a hold is not the serving version's.
        started = _monotonic()
        try:
            return await self._exchange(session, upstream, request, reader, writer, started)
        except _NoResponse as failure:
            upstream.version.counters.observe(_ms_since(started), status=None)
            retry = route.choose_retry(upstream) if failure.replayable else None
        if retry is None:
            return self._reply(writer, 502, request)
        started = _monotonic()
        try:
            return await self._exchange(session, retry, request, reader, writer, started)
        except _NoResponse:
            retry.version.counters.observe(_ms_since(started), status=None)
            return self._reply(writer, 502, request)

    async def _wait_for_release(self, route: _Route, session: _Session) -> bool:
        """Queue behind a hold; False when the hold expired first (the caller answers 503)."""
        held_until = route.held_until
        assert held_until is not None
        released = route.released
        session.deadline = math.inf  # the hold has its own deadline
        try:
            async with asyncio.timeout_at(held_until):
                await released.wait()
        except TimeoutError:
            if route.held_until == held_until:
                # The recreate gap outlasted its budget: stop queueing, route normally again.
                route.held_until = None
            return False
        return not route.closing

    def _unrouted(self, route: _Route, request: Request, writer: asyncio.StreamWriter) -> bool:
        if not route.closing:
            self.unrouted[route.key] = self.unrouted.get(route.key, 0) + 1
        return self._reply(writer, 503, request)

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: int, request: Request) -> bool:
        # An unread streamed body is still on the wire: the connection cannot carry more.
        keep = request.keep_alive and not request.streams_body
        with contextlib.suppress(*STREAM_ERRORS):
            writer.write(_CANNED[status, not keep])
        return keep

    # -- one upstream exchange ----------------------------------------------------------------

    async def _exchange(
        self,
        session: _Session,
        upstream: _Upstream,
        request: Request,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        started: float,
    ) -> bool:
        """Sends `request` to `upstream`, relays the answer and counts it; True to keep the
        client. Raises _NoResponse when the upstream failed before answering."""
        upstream.in_flight += 1
        try:
            pooled = _take_idle(upstream)
            ureader, uwriter = pooled if pooled is not None else await self._connect(upstream)
            reusable = False
            session.upstream_writer = uwriter
            try:
                status, reusable, keep = await self._relay(
                    session, request, creader, cwriter, ureader, uwriter
                )
            finally:
                session.upstream_writer = None
                session.awaiting_upstream = False
                self._checkin(upstream, ureader, uwriter, reusable)
        finally:
            upstream.in_flight -= 1
        upstream.version.counters.observe(_ms_since(started), status=status)
        return keep

    async def _connect(
        self, upstream: _Upstream
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        backend = upstream.backend
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await asyncio.open_connection(backend.host, backend.port, limit=HEAD_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise _NoResponse(replayable=True) from exc

    def _checkin(
        self,
        upstream: _Upstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reusable: bool,
    ) -> None:
        if reusable and not upstream.draining and len(upstream.idle) < self._max_idle:
            upstream.idle.append((reader, writer, _monotonic()))
        else:
            writer.close()

    async def _relay(
        self,
        session: _Session,
        request: Request,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> tuple[int, bool, bool]:
        """(status, upstream connection reusable, client connection reusable)."""
        try:
            uwriter.write(request.head + request.body if request.body else request.head)
        except RuntimeError as exc:  # uvloop: the pooled transport closed under us
            raise _NoResponse(replayable=True) from exc
        if request.streams_body:
            await self._stream_request_body(session, request, creader, cwriter, uwriter)
        response = await self._read_response_head(session, request, cwriter, ureader)
        if response is None:
            return 504, False, self._reply(cwriter, 504, request)
        if isinstance(response, int):
            return response, False, self._reply(cwriter, response, request)
        keep = request.keep_alive and response.framing != UNTIL_CLOSE
        if response.status == 101:
            await self._tunnel(session, creader, cwriter, ureader, uwriter, response.head)
            return 101, False, False
        try:
            await self._send_response(session, response, cwriter, ureader)
        except PeerFailed as failure:
            # The client already has the head; all we can do is cut the connection.
            return (502 if failure.upstream else response.status), False, False
        return response.status, response.reusable, keep

    async def _stream_request_body(
        self,
        session: _Session,
        request: Request,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        uwriter: asyncio.StreamWriter,
    ) -> None:
        if request.expects_continue:
            cwriter.write(CONTINUE)
        try:
            if request.chunked:
                await copy_chunked(creader, uwriter, session, self._upstream_timeout, False)
            else:
                await copy_exact(
                    creader, uwriter, request.length, session, self._upstream_timeout, False
                )
        except PeerFailed as failure:
            if failure.upstream:
                raise _NoResponse(replayable=False) from failure
            raise

    async def _read_response_head(
        self,
        session: _Session,
        request: Request,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
    ) -> Response | int | None:
        """The final response head; None on timeout; a status to answer when it is garbage."""
        session.awaiting_upstream = True
        session.deadline = _monotonic() + self._upstream_timeout
        for _ in range(_MAX_INTERIM + 1):
            try:
                head = await ureader.readuntil(END_OF_HEAD)
            except asyncio.LimitOverrunError:
                return 502
            except (OSError, EOFError, RuntimeError) as exc:
                if session.timed_out:
                    session.timed_out = False
                    return None
                partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
                if partial:
                    return 502
                raise _NoResponse(replayable=not request.streams_body) from exc
            try:
                response = Response(head, request)
            except BadMessage:
                return 502
            if response.status >= 200 or response.status == 101:
                session.awaiting_upstream = False
                return response
            cwriter.write(head)  # 1xx interim response: relay it and wait for the final one
        return 502

    async def _send_response(
        self,
        session: _Session,
        response: Response,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
    ) -> None:
        framing = response.framing
        timeout = self._upstream_timeout
        try:
            if framing == NO_BODY:
                cwriter.write(response.head)
            elif framing == LENGTH and response.length <= CHUNK:
                try:
                    body = await ureader.readexactly(response.length)
                except STREAM_ERRORS as exc:
                    raise PeerFailed(upstream=True) from exc
                cwriter.write(response.head + body)
            else:
                cwriter.write(response.head)
                if framing == LENGTH:
                    await copy_exact(ureader, cwriter, response.length, session, timeout, True)
                elif framing == CHUNKED:
                    await copy_chunked(ureader, cwriter, session, timeout, True)
                else:
                    await copy_until_eof(ureader, cwriter, session, timeout)
        except RuntimeError as exc:  # uvloop refuses writes to a closed client transport
            raise PeerFailed(upstream=False) from exc
        if cwriter.transport.get_write_buffer_size() > HIGH_WATER:
            try:
                await cwriter.drain()
            except STREAM_ERRORS as exc:
                raise PeerFailed(upstream=False) from exc

    async def _tunnel(
        self,
        session: _Session,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        """After 101 Switching Protocols, bytes flow both ways until either side closes."""
        cwriter.write(head)
        timeout = self._client_idle_timeout
        pumps = [
            asyncio.ensure_future(copy_until_eof(creader, uwriter, session, timeout)),
            asyncio.ensure_future(copy_until_eof(ureader, cwriter, session, timeout)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    # -- housekeeping -------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Enforces connection deadlines and closes stale pooled connections; runs until close()."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            try:
                self._sweep(_monotonic())
            except Exception:
                log.exception("builtin router: watchdog sweep failed")

    def _sweep(self, now: float) -> None:
        stale_before = now - self._pool_idle_timeout
        for route in list(self._routes.values()):
            for session in list(route.sessions):
                if session.deadline < now:
                    session.expire()
            for version in route.versions.values():
                for upstream in version.upstreams:
                    if upstream.idle and upstream.idle[0][2] < stale_before:
                        upstream.trim_idle(stale_before)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _take_idle(
    upstream: _Upstream,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The most recently used idle connection that still looks open (LIFO keeps few warm)."""
    idle = upstream.idle
    while idle:
        reader, writer, _released = idle.pop()
        if not reader.at_eof() and not writer.transport.is_closing():
            return reader, writer
        writer.close()
    return None


def _ms_since(started: float) -> float:
    return (_monotonic() - started) * 1000.0


def _copy(counters: TrafficCounters) -> TrafficCounters:
    return counters.plus(TrafficCounters())


def _check_weights(route: RouteKey, weights: Mapping[str, int]) -> None:
    """Weights are relative shares (normally percents summing to 100); only negatives are
    refused, so a plan whose split does not add up exactly behaves as it does in `sim`."""
    negative = {name: weight for name, weight in weights.items() if weight < 0}
    if negative:
        raise InputError(f"builtin router: {route}: weights must be >= 0, got {negative}")
