"""The controller daemon: `python -m safeship.api.server --config FILE [--port N]`.

It binds loopback only, takes an exclusive lock on `<state_dir>/controller.lock` (two controllers
adopting the same processes would fight over them), writes `<state_dir>/controller.json`
{pid, port, started_at} once it listens, and removes it on a clean exit. SIGTERM and SIGINT stop
it gracefully: the routers close, the service processes keep running for the next controller.

`stop_server(config_path)` (`safeship server --stop`) stops it, and the router daemon it started,
from another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from pathlib import Path
from typing import IO, Any

import uvicorn

from safeship.api.app import create_app, load_or_create_token
from safeship.api.controller import Controller, write_json_atomically
from safeship.api.daemons import (
    CONTROLLER_LOCK,
    ROUTER_LOCK,
    SERVER_MODULE,
    LockHeld,
    alive,
    cmdline,
    hold_lock,
    is_controller,
    is_router_command,
    lock_holder,
)
from safeship.config.models import SafeshipConfig
from safeship.environments.secrets import install, redactor
from safeship.errors import ConflictError, InputError, SafeshipError
from safeship.tokens import tighten_dir

log = logging.getLogger(__name__)

CONTROLLER_FILE = "controller.json"


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


def _lock(state_dir: Path, config_path: str) -> IO[str]:
    """The controller's lock on `<state_dir>/controller.lock`, held for the process's life: one
    controller per state directory. A second one is refused (exit 2), naming the holder."""
    tighten_dir(state_dir)  # 0700: the token, the store and the logs are this user's alone
    try:
        return hold_lock(state_dir / CONTROLLER_LOCK)
    except LockHeld as held:
        holder = f"pid {held.pid}" if held.pid is not None else "another process"
        raise ConflictError(
            f"another safeship controller ({holder}) holds {state_dir / CONTROLLER_LOCK}, so this one does not "
            f"start; stop it with `safeship server --stop --config {config_path}`"
        ) from None


def listen_socket(host: str, port: int, *, flag: str = "") -> socket.socket:
    """A non-blocking listening socket on host:port for uvicorn; InputError (naming `flag`, when
    given) if it cannot be bound."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{flag}: " if flag else ""
        raise InputError(f"{where}cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve(config_path: str, host: str, port: int, on_listen: Callable[[dict[str, Any]], None]) -> None:
    from safeship.config.loader import load_config
    from safeship.config.paths import state_dir as state_dir_of

    state_dir = state_dir_of(load_config(config_path), config_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(state_dir, config_path)  # before anything is opened, adopted or started
    info_path = state_dir / CONTROLLER_FILE
    try:
        controller = Controller.from_config_file(config_path)
        install(redactor())  # secret values never reach the controller's log
        token = load_or_create_token(state_dir)
        await controller.start()
        loop = asyncio.get_running_loop()
        # `safeship server --reload` sends SIGHUP: read the config again, without stopping anything
        loop.add_signal_handler(signal.SIGHUP, controller.reload_soon, "SIGHUP, from `safeship server --reload`")
        try:
            sock = listen_socket(host, port)
            config = uvicorn.Config(
                create_app(controller, token, listen_host=host),
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
                "state_dir": str(state_dir),
            }
            write_json_atomically(info_path, info)
            on_listen(info)
            log.info(
                "safeship controller listening on http://%s:%d (pid %d)", host, bound, os.getpid()
            )
            await _Server(config).serve(sockets=[sock])
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
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


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 0,
          on_listen: Callable[[dict[str, Any]], None] = lambda info: None) -> None:
    """Run the controller until SIGTERM or SIGINT; `on_listen` is told controller.json's record once
    it listens."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(f"the controller listens on loopback only, got --host {host!r}")
    _run(_serve(config_path, host, port, on_listen))


# ---------------------------------------------------------------- stopping


STOP_TIMEOUT = 20.0  # SIGTERM grace: uvicorn drains for 5 s, then the controller closes its router
KILL_TIMEOUT = 5.0


def _recorded_pid(path: Path) -> int | None:
    """The `pid` a daemon recorded in its JSON file, or None when there is no usable record."""
    try:
        data = json.loads(path.read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid > 0 else None


def _is_router(pid: int, state: Path) -> bool:
    return alive(pid) and (lock_holder(state / ROUTER_LOCK) == pid or is_router_command(cmdline(pid)))


def _find(record: Path, lock: Path, state: Path, is_it: Callable[[int, Path], bool]) -> int | None:
    """The daemon's PID: the one its record names, when that PID really is it; else whoever holds
    its lock (a daemon whose record is gone or was overwritten)."""
    recorded = _recorded_pid(record)
    if recorded is not None and is_it(recorded, state):
        return recorded
    holder = lock_holder(lock)
    if holder is not None and holder != os.getpid() and alive(holder):
        return holder
    return None


def _wait_gone(pid: int, still: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while still():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_pid(pid: int, still: Callable[[], bool], timeout: float) -> str | None:
    """SIGTERM, then SIGKILL after `timeout`; how it went, or None if it would not die.
    Each signal goes only to a PID `still` says is still the daemon."""
    if still():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, still, timeout):
        return "stopped"
    if still():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if _wait_gone(pid, still, KILL_TIMEOUT):
        return f"killed (it did not stop within {timeout:g}s of SIGTERM)"
    return None


def _stop_daemon(state: Path, record: Path, lock: Path, is_it: Callable[[int, Path], bool], what: str,
                 extra: Sequence[Path] = ()) -> tuple[bool, list[str]]:
    """Stop the daemon of `state` (the PID its record names or its lock's holder, and only while
    /proc says it is that daemon); remove the record (and `extra` files) once it is gone.
    Returns whether a running daemon was found, and what happened, in human lines."""
    pid = _find(record, lock, state, is_it)
    if pid is None:
        if not record.exists():
            return False, []
        recorded = _recorded_pid(record)
        for path in (record, *extra):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        why = f"pid {recorded} no longer runs it" if recorded is not None else "it names no pid"
        return False, [f"removed the stale {record} ({why})"]
    outcome = _stop_pid(pid, lambda: alive(pid) and (is_it(pid, state) or lock_holder(lock) == pid), STOP_TIMEOUT)
    if outcome is None:
        return True, [f"the {what} (pid {pid}) still runs after SIGKILL; see `ps -p {pid}`"]
    for path in (record, *extra):
        if path == record and _recorded_pid(path) not in (None, pid):
            continue  # a new daemon already wrote its own record: leave it
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return True, [f"{outcome} the {what} (pid {pid})" if outcome == "stopped" else f"the {what} (pid {pid}): {outcome}"]


def _instances_left(config: SafeshipConfig, config_path: str) -> list[str]:
    """What keeps running by design: the service instances the ledger records and /proc shows."""
    from safeship.config.paths import store_url
    from safeship.store import Store

    url = store_url(config, config_path)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []  # no store yet: nothing was ever started here (and reading must not create one)
    try:
        store = Store(url)
    except Exception as exc:  # the store is only read to report; stopping does not depend on it
        return [f"service instances: could not read the store ({exc}); they were not touched"]
    try:
        records = store.load_instances()
    except Exception as exc:
        return [f"service instances: could not read the store ({exc}); they were not touched"]
    finally:
        store.close()
    running: list[str] = []
    for record in records:
        pid = record.get("pid")
        if isinstance(pid, int) and pid > 0 and alive(pid):
            running.append(f"{record.get('id', '?')} (pid {pid})")
    if not running:
        return []
    return [
        f"keeps running: {len(running)} service instance{'s' if len(running) != 1 else ''} "
        f"({', '.join(sorted(running))}); the next controller adopts them"
    ]


def stop_server(config_path: str) -> list[str]:
    """Stop the controller daemon of `config_path` and then its router daemon, by the PIDs they
    recorded in `<state_dir>/controller.json` and `<state_dir>/router.json`: SIGTERM, SIGKILL after a
    bounded wait, and only PIDs whose command line is really that daemon. Stale records are removed.

    Returns one human line per thing stopped, removed or left running. Nothing running is not an
    error. The service instances keep running: the next controller adopts them."""
    from safeship.config.loader import load_config
    from safeship.config.paths import state_dir as state_dir_of
    from safeship.routing.remote import INFO_FILE, socket_path

    config = load_config(config_path)
    state = state_dir_of(config, config_path)
    controller_lock = state / CONTROLLER_LOCK
    ran, lines = _stop_daemon(state, state / CONTROLLER_FILE, controller_lock, is_controller, "controller")
    if not ran:
        lines.append(f"no safeship controller runs for {state}")
    # The router goes second, and only once no controller runs: a running one would start another.
    still = lock_holder(controller_lock)
    router_pid = _find(state / INFO_FILE, state / ROUTER_LOCK, state, _is_router)
    if still is not None and alive(still):
        if router_pid is not None:
            lines.append(f"left the router daemon (pid {router_pid}) running: the controller (pid {still}) "
                         "still runs, and the routes are its")
        return lines + _instances_left(config, config_path)
    ran, router = _stop_daemon(state, state / INFO_FILE, state / ROUTER_LOCK, _is_router, "router daemon",
                               [socket_path(state)])
    lines += router
    if ran:
        lines.append("the routes no longer listen; the next controller opens them again on the same ports")
    else:
        lines.append(f"no router daemon runs for {state}")
    from safeship.routing.haproxy import haproxy_pid, stop_haproxy

    haproxy = haproxy_pid(state)
    if haproxy is not None and stop_haproxy(state):
        lines.append(f"stopped haproxy (pid {haproxy}); its routes no longer listen")
    return lines + _instances_left(config, config_path)


RELOAD_TIMEOUT = 15.0
RELOAD_KINDS = ("config_reloaded", "config_reload_refused", "config_reload_failed")


def reload_server(config_path: str, *, timeout: float = RELOAD_TIMEOUT) -> str:
    """`safeship server --reload`: check the config, then SIGHUP the running controller of its state
    folder (only a PID /proc shows is that controller) and wait for the `config_reloaded` or
    `config_reload_refused` event it records. Returns the controller's sentence; InputError (exit 2)
    for a config that does not load or that the controller refused (it keeps its running config),
    ControllerUnreachable (exit 3) when no controller runs or none answered."""
    from safeship.api.controller import CONTROLLER_EVENTS
    from safeship.config.loader import load_config
    from safeship.config.paths import state_dir as state_dir_of
    from safeship.config.paths import store_url
    from safeship.errors import ControllerUnreachable
    from safeship.store import Store

    try:
        config = load_config(config_path)
    except InputError as exc:  # refused here; a controller running this file is told, so its log says so too
        told = _tell_about_bad_config(config_path)
        if told is None:
            raise
        raise InputError(f"{exc}; the controller (pid {told}) keeps running the config it loaded before (its "
                         "log and a config_reload_refused event say so)") from None
    state = state_dir_of(config, config_path)
    pid = _find(state / CONTROLLER_FILE, state / CONTROLLER_LOCK, state, is_controller)
    if pid is None or not is_controller(pid, state):
        raise ControllerUnreachable(f"no safeship controller runs for {state}, so there is nothing to reload; the "
                                    "next controller reads the config when it starts")
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        runs = json.loads((state / CONTROLLER_FILE).read_text()).get("config")
        if runs and Path(runs) != Path(config_path).resolve():
            raise InputError(f"the controller of {state} (pid {pid}) runs {runs}, not {Path(config_path).resolve()}; "
                             f"edit and reload that file (`safeship server --reload --config {runs}`), or stop the "
                             "controller and start it with this one")
    store = Store(store_url(config, config_path))
    try:
        after = store.last_event_id()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in store.events_since(after, deployment_id=CONTROLLER_EVENTS):
                after = event.id or after
                if event.kind in RELOAD_KINDS and "SIGHUP" in str(event.data.get("why", "")):
                    if event.kind == "config_reload_refused":
                        raise InputError(f"the controller (pid {pid}) refused the reload and keeps its running "
                                         f"config: {event.data.get('error')}")
                    if event.kind == "config_reload_failed":
                        raise SafeshipError(event.message)
                    return event.message
            if not alive(pid):
                break
            time.sleep(0.1)
    finally:
        store.close()
    raise ControllerUnreachable(f"the controller (pid {pid}) was sent SIGHUP but recorded no reload within "
                                f"{timeout:g}s; see {state / 'logs' / 'controller.log'}")


def _tell_about_bad_config(config_path: str) -> int | None:
    """SIGHUP the controller that runs `config_path` when the file no longer loads, so that the
    controller refuses it in its own log and events; its PID, or None when none is found. The state
    folder comes from the file's `state_dir` when that still reads as text, else the default."""
    import yaml

    from safeship.config.models import SafeshipConfig

    candidates: list[str] = []
    with contextlib.suppress(Exception):
        raw = yaml.safe_load(Path(config_path).read_text())
        if isinstance(raw, dict) and isinstance(raw.get("state_dir"), str):
            candidates.append(raw["state_dir"])
    candidates.append(str(SafeshipConfig.model_fields["state_dir"].default))
    for candidate in dict.fromkeys(candidates):
        state = Path(candidate).expanduser()
        state = state if state.is_absolute() else Path(config_path).resolve().parent / state
        pid = _find(state / CONTROLLER_FILE, state / CONTROLLER_LOCK, state, is_controller)
        if pid is None or not is_controller(pid, state):
            continue
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            if json.loads((state / CONTROLLER_FILE).read_text()).get("config") == str(Path(config_path).resolve()):
                os.kill(pid, signal.SIGHUP)
                return pid
    return None


def quiet_http_clients() -> None:
    """httpx and httpcore log every request at INFO with its whole URL, so a webhook's or gate's
    credential (`?token=...`) would reach the controller's log: they log warnings only."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    quiet_http_clients()
    try:
        serve(args.config, port=args.port)
    except SafeshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
