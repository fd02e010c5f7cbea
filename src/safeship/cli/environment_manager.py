"""environment-manager: --prepare, --validate, --cleanup (the seed's usage guide, section 3)."""

from __future__ import annotations

import argparse

from safeship.cli import output
from safeship.cli.common import EXIT_FAILED, EXIT_OK, add_common, emit, guarded, load, open_store, state_dir
from safeship.environments.manager import Check, EnvironmentManager, summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="environment-manager", description="Prepare, validate, clean up environments.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", action="store_true")
    action.add_argument("--validate", action="store_true")
    action.add_argument("--cleanup", action="store_true")
    p.add_argument("--environment", required=True)
    p.add_argument("--force", action="store_true", help="allow --cleanup of a production environment")
    add_common(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = load(args.config)
    manager = EnvironmentManager(config, state_dir(config, args.config))
    if args.prepare:
        checks = manager.prepare(args.environment)
    elif args.validate:
        checks = manager.validate(args.environment)
    else:
        store = open_store(config, args.config)
        try:
            checks = manager.cleanup(args.environment, force=args.force, ledger=store)
        finally:
            store.close()
    result = summary(checks)
    emit(result, as_json=args.json, text=lambda: _print(checks))
    return EXIT_OK if result["ok"] else EXIT_FAILED


def _print(checks: list[Check]) -> None:
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        output.console.print(f"{mark} {check.name}: {check.detail}")
