"""The builtin router in a process of its own, driven over a Unix socket.

The controller owns deployments; this process owns the listeners. When the controller dies or
restarts, routes keep serving with the last backends and weights, and the per-version counters
keep counting, so a controller crash is not an outage and the analysis sees no counter reset.

    python -m safeship.routing.daemon --socket STATE/router.sock --info STATE/router.json

It holds an exclusive flock on `router.lock` beside its info file for its whole life: a second
daemon for the same state directory exits 2, naming the PID that holds it.

Control protocol: one JSON object per line each way. A request is {"op": NAME, ...}; the answer
is {"ok": true, "result": ...} or {"ok": false, "error": "one sentence", "kind": "InputError"}.
`add_route` may carry "tls": {"cert_file", "key_file", "redirect_http"} (routing/tls.py); asked
again for a route that listens, it brings the route's TLS files and redirect port to what it
carries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from safeship.errors import SafeshipError
from safeship.locks import LockHeld, hold_lock
from safeship.routing.base import Backend, RouteKey
from safeship.routing.builtin import BuiltinRouter
from safeship.routing.tls import TlsListener

log = logging.getLogger(__name__)

LOCK_FILE = "router.lock"

Handler = Callable[[BuiltinRouter, dict[str, Any]], Awaitable[Any]]


def _route(request: dict[str, Any]) -> RouteKey:
    return RouteKey(str(request["service"]), str(request["environment"]))


async def _add_route(router: BuiltinRouter, request: dict[str, Any]) -> int:
    key = _route(request)
    tls = TlsListener.from_json(request.get("tls"))
    try:
        port = router.port(key)  # already listening (a controller that restarted asks again) ...
    except SafeshipError:
        return await router.add_route(key, host=str(request.get("host", "127.0.0.1")),
                                      port=int(request.get("port", 0)), tls=tls)
    await router.update_tls(key, tls)  # ... perhaps with other TLS files in its config
    return port


async def _remove_route(router: BuiltinRouter, request: dict[str, Any]) -> None:
    await router.remove_route(_route(request))


async def _set_backends(router: BuiltinRouter, request: dict[str, Any]) -> None:
    backends = [Backend(str(b[0]), str(b[1]), int(b[2])) for b in request["backends"]]
    await router.set_backends(_route(request), str(request["version"]), backends)


async def _set_weights(router: BuiltinRouter, request: dict[str, Any]) -> None:
    await router.set_weights(_route(request), {str(v): int(w) for v, w in request["weights"].items()})


async def _hold(router: BuiltinRouter, request: dict[str, Any]) -> None:
    await router.hold(_route(request), float(request["max_wait"]))


async def _counters(router: BuiltinRouter, request: dict[str, Any]) -> dict[str, Any]:
    counters = await router.counters(_route(request))
    return {version: c.to_json() for version, c in counters.items()}


async def _snapshot(router: BuiltinRouter, _request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"service": key.service, "environment": key.environment, "unrouted": router.unrouted.get(key, 0),
         "counters": {version: c.to_json() for version, c in counters.items()}}
        for key, counters in router.snapshot().items()
    ]


async def _ping(_router: BuiltinRouter, _request: dict[str, Any]) -> dict[str, Any]:
    return {"pid": os.getpid()}


OPS: dict[str, Handler] = {
    "add_route": _add_route,
    "remove_route": _remove_route,
    "set_backends": _set_backends,
    "set_weights": _set_weights,
    "hold": _hold,
    "counters": _counters,
    "snapshot": _snapshot,
    "ping": _ping,
}


async def _answer(router: BuiltinRouter, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
        handler = OPS[str(request["op"])]
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": f"bad control request: {line[:200]!r}", "kind": "InputError"}
    try:
        return {"ok": True, "result": await handler(router, request)}
    except SafeshipError as exc:
        return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"bad {request['op']} request: {exc}", "kind": "InputError"}


async def serve(socket_path: Path, info_path: Path) -> None:
    router = BuiltinRouter(close_grace=2.0)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                writer.write(json.dumps(await _answer(router, line)).encode() + b"\n")
                await writer.drain()
        writer.close()

    socket_path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(client, path=str(socket_path), limit=2**22)
    os.chmod(socket_path, 0o600)
    temporary = info_path.with_name(f".{info_path.name}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "socket": str(socket_path), "started_at": time.time()}))
    os.replace(temporary, info_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("router daemon %d listening for control on %s", os.getpid(), socket_path)
    try:
        await stop.wait()
    finally:
        server.close()
        await router.close()
        socket_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if json.loads(info_path.read_text()).get("pid") == os.getpid():
                info_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="safeship-router", description=__doc__)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--info", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock_path = args.info.with_name(LOCK_FILE)
    try:
        lock = hold_lock(lock_path)  # held until this process ends: one router daemon per state directory
    except LockHeld as held:
        holder = f"pid {held.pid}" if held.pid is not None else "another process"
        print(f"error: another router daemon ({holder}) holds {lock_path}, so this one does not start", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot open the router daemon's lock {lock_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(args.socket, args.info))
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
