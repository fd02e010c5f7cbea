"""What every command shares: --config/--json, loading, and one-line errors with fixed exit codes.

Exit codes, the same for every command:

    0   success (for --status: the deployment succeeded or is still running)
    1   the deployment failed, was rolled back or was cancelled
    2   bad input: config, arguments or request; one sentence naming file, field and value; nothing changed
    3   the controller cannot be reached
    4   the store cannot be used (corrupt, locked, read-only, unreachable); nothing changed
    70  a bug in safeship: one sentence; SAFESHIP_DEBUG=1 shows the traceback
    130 interrupted (Ctrl-C)

With --json an error is one JSON object on stderr: {"error": "...", "exit_code": N}. Output cut
short by a closed pipe (`| head`) ends quietly with the exit code the command had reached (0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from safeship.config.loader import load_config
from safeship.config.models import Environment, SafeshipConfig
from safeship.config.names import check_name
from safeship.engine.policies import policy_for as policy_for
from safeship.errors import InputError, NotFoundError, SafeshipError
from safeship.store import DeploymentRecord, Store

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE, EXIT_STORE, EXIT_BUG = 0, 1, 2, 3, 4, 70
EXIT_INTERRUPTED = 130  # Ctrl-C

# C0 and C1 controls (newline and ANSI escapes among them) and the bidi overrides that reorder a
# terminal line; \t is harmless and kept
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`), so that a
    name or reason a user wrote cannot break a line or drive the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class Parser(argparse.ArgumentParser):
    """argparse with safeship's error contract: one line on stderr (JSON with --json), exit 2."""

    def error(self, message: str) -> NoReturn:
        die(f"{self.prog}: {message} (see {self.prog} --help)", EXIT_INPUT, as_json=_json_errors[-1])


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("SAFESHIP_CONFIG", "safeship.yaml"),
                        help="safeship.yaml to use (default: %(default)s, or $SAFESHIP_CONFIG)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also log notifications, engine messages and, while a command watches a deployment, "
                             "the controller's events for it to stderr")


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


_json_errors: list[bool] = [False]  # whether the command running now was given --json


def die(message: str, code: int, *, as_json: bool = False) -> NoReturn:
    from safeship.redaction import redactor

    text = clean(redactor().redact_text(message))
    with contextlib.suppress(OSError):
        if as_json:
            print(json.dumps({"error": text, "exit_code": code}), file=sys.stderr)
        else:
            print(f"error: {text}", file=sys.stderr)
    raise SystemExit(code)


def _configure_logging(argv: list[str]) -> None:
    """Log lines (notifications among them) reach stderr only with --verbose; without it they are
    dropped here, since the outcome is printed anyway and the history keeps every event."""
    logger = logging.getLogger("safeship")
    logger.handlers.clear()
    if "-v" in argv or "--verbose" in argv:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def guarded(run: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn every error into one sentence on stderr (a JSON object with --json) and its exit code."""

    def main(argv: list[str] | None = None) -> int:
        args = sys.argv[1:] if argv is None else list(argv)
        as_json = _wants_json(args)
        _configure_logging(args)
        _json_errors.append(as_json)
        ended: tuple[int, str] | None = None  # exit code and sentence, for the audit row
        try:
            code = run(argv)
            ended = (code, "")
            return code
        except SafeshipError as exc:
            ended = (exc.exit_code, str(exc))
            die(str(exc), exc.exit_code, as_json=as_json)
        except KeyboardInterrupt:
            ended = (EXIT_INTERRUPTED, "interrupted")
            die("interrupted", 130, as_json=as_json)
        except BrokenPipeError:
            ended = (EXIT_OK, "")
            _silence_stdout()
            raise SystemExit(EXIT_OK) from None
        except Exception as exc:
            ended = (EXIT_BUG, f"internal error ({type(exc).__name__})")
            if os.environ.get("SAFESHIP_DEBUG") == "1":
                traceback.print_exc()
            die(f"internal error ({type(exc).__name__}: {exc}); this is a bug in safeship, "
                "run again with SAFESHIP_DEBUG=1 to see the traceback", EXIT_BUG, as_json=as_json)
        finally:
            _json_errors.pop()
            if ended is not None:  # a command that changes something leaves an audit row (cli/audit_trail.py)
                from safeship.cli.audit_trail import record

                record(run.__module__, args, *ended)

    return main


def load(config_path: str) -> SafeshipConfig:
    """The config, with the secrets it names registered for redaction: whatever this command
    prints (events, reasons, history) shows *** where a secret value would stand."""
    from safeship.environments.secrets import load_secrets, register

    config = load_config(config_path)
    names = sorted({name for service in config.services.values() for name in service.secrets})
    if names:
        root = Path(config_path).resolve().parent
        for environment in config.environment_management.environments:
            with contextlib.suppress(SafeshipError):  # unsafe or missing secrets are reported elsewhere
                register(load_secrets(root, environment.name, names).values())
    return config


def open_store(config: SafeshipConfig, config_path: str) -> Store:
    """Open the store and apply the rollback settings saved by `rollback-manager --configure`
    (the one implementation the controller uses too)."""
    from safeship.api.store_setup import open_store as open_configured_store

    return open_configured_store(config, config_path)


def known_service(config: SafeshipConfig, name: str | None, config_path: str) -> str | None:
    """`name` when it is None or a service of the config; otherwise a NotFoundError listing them."""
    if name is None or name in config.services:
        return name
    check_name("service", name, field="--service")
    known = ", ".join(sorted(config.services)) or "none"
    raise NotFoundError(f"{config_path}: there is no service {name!r} under services: (known: {known})")


def known_environment(config: SafeshipConfig, name: str, config_path: str) -> Environment:
    """The environment called `name`; otherwise a NotFoundError listing the configured ones."""
    check_name("environment", name, field="--environment")
    environment = config.environment(name)
    if environment is None:
        known = ", ".join(e.name for e in config.environment_management.environments) or "none"
        raise NotFoundError(f"{config_path}: environment {name!r} is not configured (known: {known})")
    return environment


def check_platform(environment: Environment, config_path: str) -> None:
    """Refuse, before anything starts, an environment whose platform this installation cannot run."""
    from safeship.platforms import PLATFORMS

    if environment.platform not in PLATFORMS:
        raise InputError(
            f"{config_path}: environment {environment.name!r} uses platform {environment.platform!r}, which "
            f"this safeship cannot run (it runs: {', '.join(sorted(PLATFORMS))}); nothing was started")


FLUSH_WAIT_S = 10.0  # how long a foreground command goes on retrying a sink that is down


def flush_notifications(store: Store, config: SafeshipConfig | None = None,
                        config_path: str | Path | None = None, *, wait: float = FLUSH_WAIT_S,
                        new_from: int | None = None) -> None:
    """Deliver the notifications of what this command ran in the foreground (a simulated
    environment) before it exits, to the sinks `config` declares (read from `config_path` when
    only that is given; the log sink alone without either). A failed delivery is retried for up
    to `wait` seconds more than one delivery's timeout; what is still undelivered then (a
    receiver that is down), or a store that cannot be written, is left for the next command or
    the controller, with a `notification_failed` event. `new_from`: the last event id before this
    command wrote any; a sink new to the store starts after it (unless `since: start`), so it is
    told what this command did and not the backlog."""
    from safeship.engine.notify import LogSink, NotificationSink
    from safeship.engine.outbox import Outbox
    from safeship.engine.sinks import sinks_from_config

    sinks: list[NotificationSink] = [LogSink()]
    if config is not None or config_path is not None:
        folder = Path(config_path).resolve().parent if config_path is not None else Path.cwd()
        try:
            if config is None:
                config = load_config(str(config_path))
            sinks = sinks_from_config(config, folder, source=str(config_path or "safeship.yaml"))
        except SafeshipError as exc:
            # The deployment has run; its notifications stay pending until the config is fixed.
            with contextlib.suppress(OSError):
                print(f"warning: notifications not sent: {clean(str(exc))}", file=sys.stderr)
            return
    replay = {s.name for s in config.notifications if s.since == "start"} if config is not None else set()
    with contextlib.suppress(SafeshipError):
        Outbox(store, sinks, new_sinks_from=new_from, replay=replay).flush(wait)


def emit(data: Any, *, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        from safeship.environments.secrets import redactor

        print(redactor().redact_text(json.dumps(data, indent=2, default=str)))
    else:
        text()


def require(value: Any, flag: str, action: str) -> Any:
    if value in (None, ""):
        raise InputError(f"{action} needs {flag}")
    return value


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def deployment_json(record: DeploymentRecord, events: list[Any] | None = None) -> dict[str, Any]:
    from safeship.engine.views import deployment_view

    return deployment_view(record, events=events)


def format_weights(weights: Mapping[str, Any]) -> str:
    return " ".join(f"{v}={w}%" for v, w in weights.items()) or "-"
