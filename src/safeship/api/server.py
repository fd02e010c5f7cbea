"""The controller daemon: `python -m safeship.api.server --config FILE [--port N]`.

It binds loopback only, takes an exclusive lock on `<state_dir>/controller.lock` (two controllers
adopting the same processes would fight over them), writes `<state_dir>/controller.json`
{pid, port, started_at} once it listens, and removes it on a clean exit. SIGTERM and SIGINT stop
it gracefully: the routers close, the service processes keep running for the next controller.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Generator, Sequence
from pathlib import Path
from typing import IO, Any

import uvicorn

from safeship.api.app import create_app, load_or_create_token
from safeship.api.controller import Controller, write_json_atomically
from safeship.environments.secrets import install, redactor
from safeship.errors import ConflictError, InputError, SafeshipError

log = logging.getLogger(__name__)

CONTROLLER_FILE = "controller.json"
LOCK_FILE = "controller.lock"
SERVER_MODULE = "safeship.api.server"


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after shutting down, which would kill the process
    before the controller is stopped; this one only records it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _lock(state_dir: Path) -> IO[str]:
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConflictError(
            f"another safeship controller already runs on {state_dir} "
            f"(see {state_dir / CONTROLLER_FILE})"
        ) from None
    return handle


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve(config_path: str, host: str, port: int) -> None:
    controller = Controller.from_config_file(config_path)
    install(redactor())  # secret values never reach the controller's log
    state_dir = controller.state_dir
    lock = _lock(state_dir)
    info_path = state_dir / CONTROLLER_FILE
    try:
        token = load_or_create_token(state_dir)
        await controller.start()
        try:
            sock = _listen(host, port)
            config = uvicorn.Config(
                create_app(controller, token),
                host=host,
                port=port,
                loop="uvloop" if _uvloop_available() else "asyncio",
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
            bound = int(sock.getsockname()[1])
            info = {
                "pid": os.getpid(),
                "host": host,
                "port": bound,
                "started_at": time.time(),
                "config": str(Path(config_path).resolve()),
            }
            write_json_atomically(info_path, info)
            log.info(
                "safeship controller listening on http://%s:%d (pid %d)", host, bound, os.getpid()
            )
            await _Server(config).serve(sockets=[sock])
        finally:
            await controller.stop()
    finally:
        with contextlib.suppress(FileNotFoundError):
            info_path.unlink()
        lock.close()
        log.info("safeship controller stopped; service processes left running")


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    if _uvloop_available():
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coroutine)
    else:
        asyncio.run(coroutine)


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(f"the controller listens on loopback only, got --host {host!r}")
    _run(_serve(config_path, host, port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SERVER_MODULE}", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("SAFESHIP_CONFIG", "safeship.yaml"))
    parser.add_argument("--port", type=int, default=0, help="API port (default: any free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        serve(args.config, port=args.port)
    except SafeshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
