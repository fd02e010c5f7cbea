"""`safeship logs --service S [--environment E] [--version V] [--lines N] [--follow]`: the service's
instance logs (`<state_dir>/logs/<environment>/<service>/<version>-<n>.log`, written by the local
platform) and the controller's (`<state_dir>/logs/controller.log`), last lines first, then, with
--follow, what each of them gets next (read once a second), until Ctrl-C."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from safeship.cli import output
from safeship.cli.common import EXIT_INTERRUPTED, EXIT_OK, known_environment, known_service, load
from safeship.config.models import SafeshipConfig
from safeship.config.names import check_name
from safeship.config.paths import state_dir
from safeship.errors import InputError

FOLLOW_POLL_S = 1.0


def add_parser(sub: Any) -> None:
    logs = sub.add_parser("logs", help="print a service's instance logs and the controller's log")
    logs.add_argument("--config", default="safeship.yaml", help="safeship.yaml to use (default: %(default)s)")
    logs.add_argument("--service", required=True, help="the service, as named under services: in the config")
    logs.add_argument("--environment", help="only this environment's instances (default: every environment)")
    logs.add_argument("--version", help="only this version's instances, e.g. v1.3.0")
    logs.add_argument("--lines", type=int, default=50, metavar="N",
                      help="how many last lines of each log to print (default: %(default)s)")
    logs.add_argument("--follow", action="store_true", help="then print what the logs get next, until Ctrl-C")


def log_files(config: SafeshipConfig, config_path: str, service: str, environment: str | None,
              version: str | None) -> list[tuple[str, Path]]:
    """(label, path) of each instance log of `service` (in `environment`, of `version`), then the
    controller's log."""
    state = state_dir(config, config_path)
    names = [environment] if environment else [e.name for e in config.environment_management.environments]
    found: list[tuple[str, Path]] = []
    for name in names:
        for path in sorted((state / "logs" / name / service).glob("*.log")):
            if version is None or path.stem.rpartition("-")[0] == version:
                found.append((f"{name}/{service}/{path.stem}", path))
    found.append(("controller", state / "logs" / "controller.log"))
    return found


def main(args: argparse.Namespace) -> int:
    config = load(args.config)
    known_service(config, args.service, args.config)
    if args.environment is not None:
        known_environment(config, args.environment, args.config)
    if args.version is not None:
        check_name("version", args.version, field="--version")
    if not 0 <= args.lines <= 100_000:
        raise InputError(f"--lines: must be 0 to 100000, got {args.lines}")
    files = log_files(config, args.config, args.service, args.environment, args.version)
    if len(files) == 1:
        where = f" in {args.environment}" if args.environment else ""
        of = f" of {args.version}" if args.version else ""
        output.console.print(f"no instance logs of {args.service}{of}{where} yet "
                             f"(under {state_dir(config, args.config) / 'logs'})")
    offsets: dict[Path, int] = {}
    for label, path in files:
        offsets[path] = _print_tail(label, path, args.lines)
    if not args.follow:
        return EXIT_OK
    try:
        while True:
            time.sleep(FOLLOW_POLL_S)
            for label, path in log_files(config, args.config, args.service, args.environment, args.version):
                offsets[path] = _print_new(label, path, offsets.get(path, 0))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _print_tail(label: str, path: Path, count: int) -> int:
    """Print the header and last `count` lines of `path`; returns where following goes on from."""
    try:
        data = path.read_bytes()
    except OSError:
        output.console.print(f"==> {label}: no log yet ({path}) <==")
        return 0
    output.console.print(f"==> {label} ({path}) <==")
    lines = data.decode(errors="replace").splitlines()
    for line in lines[len(lines) - count:] if count else []:
        output.console.print(line)
    return len(data)


def _print_new(label: str, path: Path, offset: int) -> int:
    """Print the whole lines `path` got after `offset`, each prefixed with its label."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            if size < offset:
                offset = 0  # the log was replaced: start it again
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        output.console.print(f"[{label}] {line}")
    return offset + len(complete)
