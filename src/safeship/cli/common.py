"""What every command shares: --config/--json, loading, one-line errors with DESIGN.md's exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from safeship.config.loader import load_config
from safeship.config.models import SafeshipConfig
from safeship.config.paths import store_url
from safeship.errors import InputError, SafeshipError
from safeship.store import DeploymentRecord, Store

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("SAFESHIP_CONFIG", "safeship.yaml"),
                        help="safeship.yaml to use (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def die(message: str, code: int) -> NoReturn:
    from safeship.redaction import redactor

    print(f"error: {redactor().redact_text(message)}", file=sys.stderr)
    raise SystemExit(code)


def guarded(run: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn safeship errors into one sentence on stderr and the right exit code."""

    def main(argv: list[str] | None = None) -> int:
        try:
            return run(argv)
        except SafeshipError as exc:
            die(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            die("interrupted", 130)

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
    """Open the store and apply the rollback settings saved by `rollback-manager --configure`."""
    from safeship.config.models import RollbackConfiguration

    store = Store(store_url(config, config_path))
    for name, service in config.services.items():
        saved = store.service_rollback_settings(name)
        if saved is not None:
            service.rollback = RollbackConfiguration.model_validate(saved)
    return store


def policy_for(name: str) -> Any:
    from safeship.analysis.policies import get_policy

    return get_policy(name)


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
