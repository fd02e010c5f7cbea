"""Any command line either works or is refused with one line and a documented exit code.

hypothesis builds argument lists from each command's real flags, mixed with arbitrary text
(unicode, control characters, huge numbers), and runs the command in-process against a config
whose environments are all simulated, so nothing outside the test's folder is touched."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from safeship.cli import deployment_engine, environment_manager, rollback_manager
from safeship.cli import main as safeship_main

CONFIG = """
intelligent_deployment:
  strategies:
    canary: {traffic_percentages: [10, 50, 100], step_duration: "30s"}
  rollback:
    auto_rollback: true
    triggers:
      - {type: error_rate_threshold, threshold: 0.05, duration: "1m"}
environment_management:
  environments:
    - {name: staging, type: staging, platform: sim}
    - {name: production, type: production, platform: sim}
services:
  user-service:
    replicas: 2
    versions: [v1.2.0, v1.3.0]
    simulate: {v1.3.0: {error_rate: 0.2}}
"""

DOCUMENTED_EXIT_CODES = {0, 1, 2, 4}

weird_text = st.text(max_size=40) | st.sampled_from(
    ["", "..", "../../victim", "v1[/x]", "-5", "1e309", "99999999999999999999", "\x1b[2J", "a\nb", "%s", "\u202e"])

COMMANDS: dict[str, tuple[Callable[[list[str] | None], int], list[str], list[str]]] = {
    # name: (main, action flags, flags that take a value)
    "deployment-engine": (deployment_engine.main, ["--deploy", "--status", "--cancel", "--list", "--approve"],
                          ["--service", "--version", "--environment", "--deployment-id", "--strategy", "--policy",
                           "--override-freeze", "--approved-by"]),
    "rollback-manager": (rollback_manager.main, ["--configure", "--rollback", "--history", "--settings", "--reset"],
                         ["--service", "--deployment-id", "--reason", "--safeship-config"]),
    "environment-manager": (environment_manager.main, ["--prepare", "--validate", "--cleanup"], ["--environment"]),
}

known_values = st.sampled_from(["user-service", "production", "staging", "v1.2.0", "v1.3.0", "canary",
                                "safeship", "deploy-00000000"])


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(sorted(COMMANDS)))
    _, actions, valued = COMMANDS[name]
    argv = draw(st.lists(st.sampled_from(actions), min_size=0, max_size=2))
    for flag in draw(st.lists(st.sampled_from(valued), max_size=4)):
        argv += [flag, draw(known_values | weird_text)]
    argv += draw(st.lists(st.sampled_from(["--json", "--force", "--detach", "-v", "--bogus"]) | weird_text,
                          max_size=2))
    return name, argv


def run(main: Callable[[list[str] | None], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "safeship.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAFESHIP_CONFIG", raising=False)
    return tmp_path


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=command_lines())
def test_any_command_line_works_or_is_refused_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                          line: tuple[str, list[str]]) -> None:
    name, argv = line
    code = run(COMMANDS[name][0], argv)
    _, err = capsys.readouterr()
    assert code in DOCUMENTED_EXIT_CODES, (name, argv, err)
    assert "Traceback" not in err and "internal error" not in err, (name, argv, err)
    if code == 2:
        assert err.count("\n") == 1, (name, argv, err)
    assert not (workdir.parent / "victim").exists()
    event(f"exit {code}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(["simulate", "--scenario", "--policy", "--seed", "--strategy", "--json"])
                     | weird_text, max_size=6))
def test_simulate_arguments_work_or_are_refused_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                           argv: list[str]) -> None:
    if argv and argv[0] in ("server", "init"):
        return  # a server runs until stopped; init is tested on its own
    code = run(safeship_main.main, argv)
    _, err = capsys.readouterr()
    assert code in DOCUMENTED_EXIT_CODES, (argv, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if code != 0:
        assert err.count("\n") == 1, (argv, err)
    assert os.getcwd() == str(workdir)
