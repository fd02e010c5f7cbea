"""safeship: simulate a release, run the controller."""

from __future__ import annotations

import argparse
import json

from safeship.cli import output
from safeship.cli.common import EXIT_OK, guarded, policy_for
from safeship.config.models import DeploymentStrategy
from safeship.errors import InputError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safeship", description="Ship new versions of services safely.")
    sub = p.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run one release scenario on the simulated world")
    sim.add_argument("--scenario", required=True)
    sim.add_argument("--policy", default="safeship")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--strategy", default="canary")
    sim.add_argument("--json", action="store_true")
    server = sub.add_parser("server", help="run the controller daemon on 127.0.0.1")
    server.add_argument("--config", default="safeship.yaml")
    server.add_argument("--port", type=int, default=0)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "server":
        from safeship.api.server import serve

        serve(args.config, port=args.port)
        return EXIT_OK
    from safeship.config.scenario import load_scenario
    from safeship.engine.simulate import simulate

    scenario = load_scenario(args.scenario)
    try:
        strategy = DeploymentStrategy.parse(args.strategy)
    except ValueError as exc:
        raise InputError(f"--strategy: {exc}") from None
    policy_for(args.policy)
    result = simulate(scenario, policy=args.policy, policy_for=policy_for, seed=args.seed, strategy=strategy)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            output.console.print(f"[bold]{key:>26}[/bold]  {value}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main(None))
