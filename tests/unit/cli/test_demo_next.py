"""`make demo` ends with `next:` lines; each names a real command with flags its parser takes, and
the deploy it suggests names the service, version and environment `safeship init` writes."""

from __future__ import annotations

import shlex
from pathlib import Path

from safeship.cli import deployment_engine, environment_manager
from safeship.cli import main as safeship_main
from safeship.config.loader import load_config
from safeship.config.starter import write_starter
from safeship.demo import NEXT

PARSERS = {"safeship": safeship_main.parser, "deployment-engine": deployment_engine.parser,
           "environment-manager": environment_manager.parser}


def test_every_next_line_is_a_command_its_parser_takes(tmp_path: Path) -> None:
    commands = [shlex.split(line.split("#")[0]) for line in NEXT]
    assert commands[0][0] == "export" and ".venv/bin" in commands[0][1]
    assert ["make", "demo-sim"] in commands
    assert "demo-sim:" in (Path(__file__).resolve().parents[3] / "Makefile").read_text()
    starter = load_config(write_starter(tmp_path / "safeship.yaml"))
    for argv in commands:
        if argv[0] in PARSERS:
            args = PARSERS[argv[0]]().parse_args(argv[1:])  # an unknown flag exits 2 here
            if argv[0] == "deployment-engine":
                assert args.service in starter.services
                assert args.version in (starter.services[args.service].versions or [])
            if getattr(args, "environment", None) is not None:
                assert starter.environment(args.environment) is not None
    assert {argv[0] for argv in commands} >= set(PARSERS)
