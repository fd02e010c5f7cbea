"""environment-manager: --prepare, --validate, --cleanup (the seed's usage guide, section 3)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safeship.cli import output
from safeship.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    add_common,
    emit,
    guarded,
    known_environment,
    load,
    open_store,
)
from safeship.config.models import SafeshipConfig
from safeship.config.paths import state_dir
from safeship.environments.manager import Check, EnvironmentManager, summary
from safeship.errors import InputError


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="environment-manager", description="Prepare, validate, clean up environments.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", action="store_true", help="create directories, reserve ports, load secrets")
    action.add_argument("--validate", action="store_true", help="check ports, directories, secrets, quota, disk")
    action.add_argument("--cleanup", action="store_true", help="stop instances, release ports, remove state")
    p.add_argument("--environment", required=True, help="the environment, as named under environment_management")
    p.add_argument("--force", action="store_true", help="allow --cleanup of a production environment")
    p.add_argument("--render", action="store_true",
                   help="with --prepare on a kubernetes environment: print the manifests it would apply "
                        "as YAML (secrets redacted) and contact no cluster")
    add_common(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.render and not args.prepare:
        raise InputError("--render goes with --prepare (it prints what --prepare would apply)")
    config = load(args.config)
    if args.render:
        return _render(args, config)
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


def _render(args: argparse.Namespace, config: SafeshipConfig) -> int:
    """--prepare --render: the environment's manifests, from the config alone."""
    from safeship.kube.environment import environment_objects, manifests, require_kubernetes

    environment = known_environment(config, args.environment, args.config)
    require_kubernetes(environment, args.config)
    objects = environment_objects(config, environment)  # secret values are never read here
    emit(objects, as_json=args.json, text=lambda: print(manifests(objects), end=""))
    return EXIT_OK


def _controller_cleanup(directory: Path) -> Callable[[str], Mapping[str, Any]] | None:
    from safeship.api.client import ControllerClient

    client = ControllerClient(directory)
    if not client.is_running():
        return None
    return client.cleanup_environment


def _print(checks: list[Check]) -> None:
    for check in checks:
        if not check.ok:
            mark = output.styled("FAIL", "red")
        else:
            mark = output.styled("warn", "yellow") if check.warning else output.styled("ok  ", "green")
        output.console.print(mark, f"{check.name}: {check.detail}")
