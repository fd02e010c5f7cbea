"""A Router whose listeners live in the router daemon (`routing/daemon.py`), another process.

The client starts the daemon when none answers, and otherwise reuses the one a previous controller
left running. It remembers what it asked for (routes, backends, weights), so that if the daemon
itself dies and is started again, the routing picture is put back before anything else is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safeship.config.models import SafeshipConfig
from safeship.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    SafeshipError,
    TemporaryError,
)
from safeship.routing.base import (
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
)
from safeship.routing.private import check_private
from safeship.routing.tls import TlsListener, tls_for

log = logging.getLogger(__name__)

INFO_FILE = "router.json"
_KINDS: dict[str, type[SafeshipError]] = {
    "InputError": InputError, "NotFoundError": NotFoundError, "ConflictError": ConflictError,
    "TemporaryError": TemporaryError,
}
_MAX_UNIX_PATH = 100
RETRY_DELAY_S = 1.0  # how long a caller waits before asking again after the daemon failed to answer
# What talking to the daemon can raise: the socket failing, the daemon going away mid-answer, or
# an answer that is not JSON. All are translated into TemporaryError at this edge.
_TRANSPORT_ERRORS = (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError)


def socket_path(state_dir: Path) -> Path:
    """`<state_dir>/router.sock`, or a short private path in /tmp when that is too long for a socket."""
    preferred = state_dir / "router.sock"
    if len(str(preferred)) < _MAX_UNIX_PATH:
        return preferred
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"safeship-router-{digest}.sock"


def daemon_pid(state_dir: Path) -> int | None:
    """The PID of the router daemon serving `state_dir`, if one is recorded and alive."""
    try:
        pid = int(json.loads((state_dir / INFO_FILE).read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if b"safeship.routing.daemon" in cmdline else None


class RemoteRouter:
    """A `Router` whose listeners live in the router daemon. Failures to reach the daemon are
    `TemporaryError`; errors the daemon reports keep their kind."""

    abilities: RouterAbilities = RouterAbilities(hold=True, listens=True)

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        return cls(setup.state_dir, config=setup.config)

    def __init__(self, state_dir: Path, *, start_timeout: float = 15.0, config: SafeshipConfig | None = None) -> None:
        self.state_dir = state_dir
        self.config = config  # where a route's TLS settings come from
        self.socket = socket_path(state_dir)
        self.start_timeout = start_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._daemon_pid: int | None = None
        self._routes: dict[RouteKey, tuple[str, int, TlsListener | None]] = {}  # what to replay into a new daemon
        self._backends: dict[tuple[RouteKey, str], list[Backend]] = {}
        self._weights: dict[RouteKey, dict[str, int]] = {}
        self.unrouted: dict[RouteKey, int] = {}

    # ------------------------------------------------------------ connection

    async def open(self) -> None:
        """Connect to the router daemon, starting one when none answers."""
        if await self.connect():
            log.info("started the router daemon")

    async def connect(self) -> bool:
        """Connect to the daemon, starting one if none answers; True when this call started it."""
        try:
            return await self._connect()
        except _TRANSPORT_ERRORS as exc:
            raise TemporaryError(f"the router daemon does not answer: {exc}", delay=RETRY_DELAY_S) from exc

    async def _connect(self) -> bool:
        started = False
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not await self._try_connect():
                if not started:
                    self._spawn()
                    started = True
                while not await self._try_connect():
                    if time.monotonic() > deadline:
                        raise TemporaryError(f"the router daemon did not start; see {self.state_dir / 'router.log'}")
                    await asyncio.sleep(0.05)
            try:
                pid = int((await self._call_locked({"op": "ping"}))["pid"])
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                # A daemon that was dying, or one that lost the race to start, took the connection
                # and closed it: connect again (and start one if none listens) until the deadline.
                await self._drop()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if self._daemon_pid is not None and pid != self._daemon_pid:
            await self._replay()
        self._daemon_pid = pid
        return started

    async def _try_connect(self) -> bool:
        check_private(self.socket, "the router daemon's socket", self.state_dir)  # another user's, in /tmp: refused
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket), limit=2**22)
        except OSError:
            return False
        return True

    def _spawn(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.state_dir / "router.log", "ab") as log_file:
                subprocess.Popen(
                    [sys.executable, "-m", "safeship.routing.daemon", "--socket", str(self.socket),
                     "--info", str(self.state_dir / INFO_FILE)],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                    env=dict(os.environ),
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TemporaryError(f"cannot start the router daemon in {self.state_dir}: {exc}",
                                 delay=RETRY_DELAY_S) from exc
        log.info("started the router daemon for %s", self.state_dir)

    async def _replay(self) -> None:
        log.warning("the router daemon was restarted; putting routes, backends and weights back")
        for key, (host, port, tls) in self._routes.items():
            await self._call_locked({"op": "add_route", **_key(key), "host": host, "port": port,
                                     "tls": tls.to_json() if tls is not None else None})
        for (key, version), backends in self._backends.items():
            await self._call_locked({"op": "set_backends", **_key(key), "version": version,
                                     "backends": [[b.instance_id, b.host, b.port] for b in backends]})
        for key, weights in self._weights.items():
            await self._call_locked({"op": "set_weights", **_key(key), "weights": weights})

    async def _call(self, request: dict[str, Any]) -> Any:
        async with self._lock:
            try:
                return await self._call_locked(request)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                pass  # the daemon went away: reconnect (or restart it) once, then ask again
            await self._drop()
        await self.connect()
        async with self._lock:
            try:
                return await self._call_locked(request)
            except _TRANSPORT_ERRORS as exc:
                raise TemporaryError(f"the router daemon did not answer {request.get('op')!r}: {exc}",
                                     delay=RETRY_DELAY_S) from exc

    async def _call_locked(self, request: dict[str, Any]) -> Any:
        if self._writer is None or self._reader is None:
            raise ConnectionError("not connected to the router daemon")
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        line = await self._reader.readline()
        if not line:
            raise ConnectionError("the router daemon closed the connection")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise _KINDS.get(str(answer.get("kind")), SafeshipError)(str(answer.get("error")))
        return answer.get("result")

    async def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    # ------------------------------------------------------------ routes

    async def add_route(
        self, route: RouteKey, *, host: str = "127.0.0.1", port: int = 0, tls: TlsListener | None = None
    ) -> int:
        bound = int(await self._call({"op": "add_route", **_key(route), "host": host, "port": port,
                                      "tls": tls.to_json() if tls is not None else None}))
        self._routes[route] = (host, bound, tls)
        return bound

    async def remove_route(self, route: RouteKey) -> None:
        await self._call({"op": "remove_route", **_key(route)})
        self._routes.pop(route, None)
        self._weights.pop(route, None)
        for key in [k for k in self._backends if k[0] == route]:
            del self._backends[key]

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        """Make `route` known; with `port`, listen on `host:port` unless it listens already."""
        if route in self._routes:
            return self._routes[route][1]
        if port is None:
            return None
        return await self.add_route(route, host=host, port=port, tls=tls_for(self.config, route))

    def port(self, route: RouteKey) -> int:
        if route not in self._routes:
            raise NotFoundError(f"router daemon: no listener for {route}")
        return self._routes[route][1]

    # ------------------------------------------------------------ Router protocol

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        await self._call({"op": "set_backends", **_key(route), "version": version,
                          "backends": [[b.instance_id, b.host, b.port] for b in backends]})
        self._backends[(route, version)] = list(backends)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        await self._call({"op": "set_weights", **_key(route), "weights": dict(weights)})
        self._weights[route] = dict(weights)

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        await self._call({"op": "hold", **_key(route), "max_wait": max_wait})

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        raw = await self._call({"op": "counters", **_key(route)})
        return {version: TrafficCounters.from_json(c) for version, c in raw.items()}

    async def snapshot(self) -> dict[RouteKey, dict[str, TrafficCounters]]:
        """All routes' counters (for /metrics); also refreshes `unrouted`."""
        rows = await self._call({"op": "snapshot"})
        found: dict[RouteKey, dict[str, TrafficCounters]] = {}
        for row in rows:
            key = RouteKey(row["service"], row["environment"])
            found[key] = {v: TrafficCounters.from_json(c) for v, c in row["counters"].items()}
            self.unrouted[key] = int(row["unrouted"])
        return found

    async def routes_snapshot(self) -> RoutesSnapshot:
        counters = await self.snapshot()
        return RoutesSnapshot(counters=counters, unrouted=dict(self.unrouted))

    async def close(self) -> None:
        """Disconnect; the daemon keeps serving (stop it with `stop_daemon`)."""
        await self._drop()


def stop_daemon(state_dir: Path, *, timeout: float = 10.0) -> bool:
    """SIGTERM the router daemon of `state_dir` (only if /proc says it is ours); True if one ran."""
    import signal

    pid = daemon_pid(state_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon_pid(state_dir) == pid:
        time.sleep(0.05)
    if daemon_pid(state_dir) == pid:
        os.kill(pid, signal.SIGKILL)
    return True


def _key(route: RouteKey) -> dict[str, str]:
    return {"service": route.service, "environment": route.environment}
