"""The audit rows of CLI commands that change something: `deployment-engine --deploy`, `--cancel`,
`--approve`, `--promote`; `rollback-manager --configure`, `--rollback`, `--reset`;
`environment-manager --prepare`, `--cleanup`; `safeship pipeline run`. Each is one row once the
command has ended, whatever its exit code: actor `cli: <user>`, the command and its flag, the
service, environment, version or deployment id it named, `cli pid N`, the exit code and the error's
sentence. (A command that reaches the controller is also the controller's own row, as the local
admin from 127.0.0.1; `safeship token` writes its rows itself.)

Nothing is written when there is no store yet (nothing was done to one), when the command failed
because the store cannot be used (exit 4), or when the arguments or the config cannot even be read
(the command changed nothing, and names no store). A row that cannot be written is logged at debug
level and never changes the command's outcome or output.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# program (the CLI module's name) -> the flags or subcommands that change something
MUTATING: dict[str, tuple[str, ...]] = {
    "deployment_engine": ("--deploy", "--cancel", "--approve", "--promote"),
    "rollback_manager": ("--configure", "--rollback", "--reset"),
    "environment_manager": ("--prepare", "--cleanup"),
    "main": ("pipeline run",),
}
PROGRAMS = {"deployment_engine": "deployment-engine", "rollback_manager": "rollback-manager",
            "environment_manager": "environment-manager", "main": "safeship"}
EXIT_STORE = 4


def _value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `flag` (`--flag value` or `--flag=value`), the last one given; None if absent."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def mutating_action(module: str, argv: Sequence[str]) -> str | None:
    """`deployment-engine --deploy`, `safeship pipeline run`: what the command changes; None if it
    changes nothing the audit table records."""
    program = module.rsplit(".", 1)[-1]
    for action in MUTATING.get(program, ()):
        if " " in action:
            if list(argv[: len(action.split())]) == action.split():
                return f"{PROGRAMS[program]} {action}"
        elif action in argv:
            return f"{PROGRAMS[program]} {action}"
    return None


def _config_path(action: str, argv: Sequence[str]) -> str:
    default = os.environ.get("SAFESHIP_CONFIG", "safeship.yaml")
    if action == "rollback-manager --configure":
        return _value(argv, "--safeship-config") or default
    return _value(argv, "--config") or default


def _target(argv: Sequence[str]) -> str:
    deployment = _value(argv, "--deployment-id")
    if deployment:
        return deployment
    where = "/".join(v for v in (_value(argv, "--service"), _value(argv, "--environment")) if v)
    version = _value(argv, "--version")
    return f"{where} {version}" if where and version else where or (version or "")


def actor() -> str:
    try:
        return f"cli: {getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli: uid {os.getuid()}"


def record(module: str, argv: Sequence[str], exit_code: int, message: str) -> None:
    """Write the audit row of one ended command, if it is one that changes something."""
    action = mutating_action(module, argv)
    if action is None or exit_code == EXIT_STORE:
        return
    try:
        _write(action, argv, exit_code, message)
    except Exception as exc:  # the command's outcome stands; the row is lost, and said so at debug level
        log.debug("audit row of %s not written: %s: %s", action, type(exc).__name__, exc)


def _write(action: str, argv: Sequence[str], exit_code: int, message: str) -> None:
    from safeship.config.loader import load_config
    from safeship.config.paths import store_url
    from safeship.store import AuditRecord, Store
    from safeship.store.edge import parse

    config_path = _config_path(action, argv)
    url = store_url(load_config(config_path), config_path)
    target = parse(url)
    if target.is_sqlite and (target.sqlite_path is None or not Path(target.sqlite_path).exists()):
        return  # an in-memory store, or none yet: nothing was done to one
    store = Store(url)
    try:
        store.append_audit(AuditRecord(at=time.time(), actor=actor(), role="admin", action=action,
                                       target=_target(argv), source=f"cli pid {os.getpid()}",
                                       status=exit_code,
                                       outcome=message or ("ok" if exit_code == 0 else f"exit code {exit_code}")))
    finally:
        store.close()
