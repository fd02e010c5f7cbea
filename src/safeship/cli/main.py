"""safeship: write a starter config, simulate a release, run or stop the controller, run a pipeline,
print logs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from safeship.cli import output
from safeship.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    guarded,
    known_environment,
    known_service,
    load,
    policy_for,
    require,
)
from safeship.config.models import DeploymentStrategy, SafeshipConfig
from safeship.errors import InputError


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and {2**32 - 1}, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="safeship", description="Ship new versions of services safely.")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a commented starter safeship.yaml")
    init.add_argument("--config", default="safeship.yaml", help="where to write it (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    sim = sub.add_parser("simulate", help="run one release scenario on the simulated world")
    sim.add_argument("--scenario", required=True, help="a release scenario file (YAML)")
    sim.add_argument("--policy", default="safeship",
                     help="analysis policy: safeship, seed, flagger, argo, kayenta (default: %(default)s)")
    sim.add_argument("--seed", type=_seed, default=None,
                     help="random seed for the simulated traffic, 0 to 2^32-1 (default: the scenario's)")
    sim.add_argument("--strategy", default=None,
                     help="blue_green | canary | rolling | recreate (default: the scenario's strategy, else canary)")
    sim.add_argument("--horizon-after-promotion", type=float, default=0.0, metavar="SECONDS",
                     help="charge a promoted candidate's failed requests for at least this long after its "
                          "promotion, as the analysis benchmark does with 3600 (default: the scenario's duration_s)")
    sim.add_argument("--config", default=None,
                     help="run as --service in --environment of this safeship.yaml: its strategy selection, steps, "
                          "triggers and tolerances (default: safeship's defaults)")
    sim.add_argument("--service", help="with --config: the service whose settings the scenario runs with")
    sim.add_argument("--environment", help="with --config: the environment whose settings the scenario runs with")
    sim.add_argument("--check", action="store_true",
                     help="exit 1 when the decision differs from the scenario's expect")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    server = sub.add_parser("server", help="run the controller daemon on 127.0.0.1, or stop it with --stop")
    server.add_argument("--config", default="safeship.yaml", help="safeship.yaml to use (default: %(default)s)")
    server.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    what = server.add_mutually_exclusive_group()
    what.add_argument("--stop", action="store_true",
                      help="stop the running controller and its router daemon; service instances keep running")
    what.add_argument("--reload", action="store_true",
                      help="make the running controller read the config again (SIGHUP); routes keep serving")
    from safeship.cli.access import add_parser as add_access
    from safeship.cli.logs import add_parser as add_logs
    from safeship.cli.operator import add_parser as add_operator
    from safeship.cli.pipeline import add_parser as add_pipeline

    add_operator(sub)
    add_pipeline(sub)
    add_logs(sub)
    add_access(sub)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "init":
        from safeship.config.starter import write_starter

        written = write_starter(Path(args.config), force=args.force)
        output.console.print(f"wrote {written}; try `environment-manager --validate --environment development "
                             f"--config {args.config}`")
        return EXIT_OK
    if args.command == "pipeline":
        from safeship.cli.pipeline import main as pipeline_main

        return pipeline_main(args)
    if args.command == "logs":
        from safeship.cli.logs import main as logs_main

        return logs_main(args)
    if args.command == "operator":
        from safeship.cli.operator import main as operator_main

        return operator_main(args)
    if args.command in ("token", "audit"):
        from safeship.cli.access import main as access_main

        return access_main(args)
    if args.command == "server":
        from safeship.api.server import reload_server, serve, stop_server

        if args.reload:
            output.console.print(reload_server(args.config))
            return EXIT_OK
        if args.stop:
            for line in stop_server(args.config):
                output.console.print(line)
            return EXIT_OK
        logger = logging.getLogger("safeship")  # the daemon logs everything, to its own log file
        logger.handlers.clear()
        logger.propagate = True
        serve(args.config, port=args.port, on_listen=lambda info: _listening(info, args.config))
        return EXIT_OK
    from safeship.config.scenario import load_scenario
    from safeship.engine.simulate import simulate

    config, target = _simulated_target(args)
    scenario = load_scenario(args.scenario)
    try:
        strategy = None if args.strategy is None else DeploymentStrategy.parse(args.strategy)
    except ValueError as exc:
        raise InputError(f"--strategy: {exc}") from None
    policy_for(args.policy)
    horizon = args.horizon_after_promotion
    if not 0 <= horizon <= 7 * 86400:
        raise InputError(f"--horizon-after-promotion: must be 0 to 604800 seconds, got {horizon:g}")
    result = simulate(scenario, policy=args.policy, policy_for=policy_for, seed=args.seed, strategy=strategy,
                      horizon_after_promotion_s=horizon, config=config, target=target)
    if target is not None:
        result["service"], result["environment"] = target
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():  # nothing to say (no rollback, no promotion) is "-", never "None"
            output.console.print(output.styled(f"{key:>26}", "bold"), f" {'-' if value is None else value}")
    if args.check and not result["correct"]:
        if not args.json:
            output.console.print(f"check failed: the decision was {result['decision']}, the scenario expects "
                                 f"{result['expected']}")
        return EXIT_FAILED
    return EXIT_OK


def _listening(info: dict[str, object], config_path: str) -> None:
    """What `safeship server` prints once it listens: where, the token file, its PID, how to restart it
    without an outage and how to stop it with its routes."""
    from safeship.tokens import TOKEN_FILE

    state = Path(str(info["state_dir"]))
    output.console.print(f"safeship controller listening on http://{info['host']}:{info['port']} (pid {info['pid']})")
    output.console.print(f"token: {state / TOKEN_FILE}")
    output.console.print(f"restart it with no outage: Ctrl-C here (or SIGTERM to pid {info['pid']}), then `safeship "
                         f"server` again; the routes and instances keep serving meanwhile")
    output.console.print(f"stop it and its routes (they then no longer listen): `safeship server --stop --config "
                         f"{config_path}`")
    sys.stdout.flush()


def _simulated_target(args: argparse.Namespace) -> tuple[SafeshipConfig | None, tuple[str, str] | None]:
    """The config and (service, environment) `--config --service --environment` name, each checked
    before anything runs; (None, None) without --config."""
    if args.config is None:
        if args.service is not None or args.environment is not None:
            raise InputError("--service and --environment go with --config (the safeship.yaml they are in)")
        return None, None
    service = require(args.service, "--service", "simulate --config")
    environment = require(args.environment, "--environment", "simulate --config")
    config = load(args.config)
    known_service(config, service, args.config)
    known_environment(config, environment, args.config)
    return config, (service, environment)


if __name__ == "__main__":
    raise SystemExit(main(None))
