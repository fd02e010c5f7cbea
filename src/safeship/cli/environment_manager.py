"""environment-manager: --prepare, --validate, --cleanup (the seed's usage guide, section 3)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safeship.cli import output
from safeship.cli.common import EXIT_FAILED, EXIT_OK, Parser, add_common, emit, guarded, load, open_store
from safeship.config.paths import state_dir
from safeship.environments.manager import Check, EnvironmentManager, summary


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="environment-manager", description="Prepare, validate, clean up environments.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", action="store_true", help="create directories, reserve ports, load secrets")
    action.add_argument("--validate", action="store_true", help="check ports, directories, secrets, quota, disk")
    action.add_argument("--cleanup", action="store_true", help="stop instances, release ports, remove state")
    p.add_argument("--environment", required=True, help="the environment, as named under environment_management")
    p.add_argument("--force", action="store_true", help="allow --cleanup of a production environment")
    add_common(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = load(args.config)
    store = open_store(config, args.config)
    try:
        manager = EnvironmentManager(config, state_dir=state_dir(config, args.config),
                                     root=Path(args.config).resolve().parent, store=store)
        if args.prepare:
            checks = manager.prepare(args.environment)
        elif args.validate:
            checks = manager.validate(args.environment)
        else:
            checks = manager.cleanup(args.environment, force=args.force,
                                     controller_cleanup=_controller_cleanup(state_dir(config, args.config)))
    finally:
        store.close()
    result = summary(checks)
    emit(result, as_json=args.json, text=lambda: _print(checks))
    return EXIT_OK if result["ok"] else EXIT_FAILED


def _controller_cleanup(directory: Path) -> Callable[[str], Mapping[str, Any]] | None:
    from safeship.api.client import ControllerClient

    client = ControllerClient(directory)
    if not client.is_running():
        return None
    return client.cleanup_environment


def _print(checks: list[Check]) -> None:
    for check in checks:
        mark = output.styled("ok  ", "green") if check.ok else output.styled("FAIL", "red")
        output.console.print(mark, f"{check.name}: {check.detail}")
