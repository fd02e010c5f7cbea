"""`safeship simulate --config --service --environment` runs the scenario with the user's own
settings, and `--check` exits 1 when the decision differs from the scenario's `expect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_commands import call

from safeship.cli import main as safeship

SCENARIO = """\
name: canary-4x
seed: 7
duration_s: 1800
strategy: canary
traffic: {rps: 200, pattern: constant}
baseline: {error_rate: 0.004, latency_ms: {p50: 45, p99: 220}}
candidate: {error_rate: 0.016}
expect: rollback
"""

CONFIG = """\
intelligent_deployment:
  analysis: {error_tolerance: 10}   # this service accepts ten times the old failure rate
environment_management:
  environments:
    - {name: production, type: production, platform: local}
services:
  user-service:
    criticality: high
    replicas: 3
    command: [python, -m, examples.user_service, --port, "{port}"]
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    scenario, config = tmp_path / "scenario.yaml", tmp_path / "safeship.yaml"
    scenario.write_text(SCENARIO)
    config.write_text(CONFIG)
    return scenario, config


def test_check_passes_on_the_defaults_and_fails_on_the_users_tolerance(files: tuple[Path, Path], capsys) -> None:
    scenario, config = files
    code, out, _ = call(safeship.main, ["simulate", "--scenario", str(scenario), "--check", "--json"], capsys)
    assert code == 0 and json.loads(out)["decision"] == "rollback"

    argv = ["simulate", "--scenario", str(scenario), "--config", str(config), "--service", "user-service",
            "--environment", "production", "--check"]
    code, out, _ = call(safeship.main, [*argv, "--json"], capsys)
    result = json.loads(out)
    assert code == 1
    assert result["decision"] == "promote" and result["correct"] is False  # 4x is within the declared 10x
    assert result["strategy"] == "blue_green"  # selected for a high-criticality service in production
    assert (result["service"], result["environment"]) == ("user-service", "production")
    code, out, _ = call(safeship.main, argv, capsys)
    assert code == 1
    assert "check failed: the decision was promote, the scenario expects rollback" in out
    assert "None" not in out


def test_without_check_a_wrong_decision_still_exits_0(files: tuple[Path, Path], capsys) -> None:
    scenario, config = files
    code, out, _ = call(safeship.main, ["simulate", "--scenario", str(scenario), "--config", str(config),
                                        "--service", "user-service", "--environment", "production", "--json"], capsys)
    assert code == 0 and json.loads(out)["correct"] is False


@pytest.mark.parametrize(("extra", "named"), [
    (["--service", "billing", "--environment", "production"], "'billing'"),
    (["--service", "user-service", "--environment", "staging"], "'staging'"),
    (["--environment", "production"], "--service"),
])
def test_bad_input_is_one_sentence_and_exit_2(files: tuple[Path, Path], capsys, extra: list[str],
                                              named: str) -> None:
    scenario, config = files
    code, out, err = call(safeship.main, ["simulate", "--scenario", str(scenario), "--config", str(config), *extra],
                          capsys)
    assert code == 2 and out == ""
    assert named in err and len(err.strip().splitlines()) == 1


def test_a_missing_config_or_scenario_is_named(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    scenario, _ = files
    missing = tmp_path / "nope.yaml"
    code, _, err = call(safeship.main, ["simulate", "--scenario", str(scenario), "--config", str(missing),
                                        "--service", "user-service", "--environment", "production"], capsys)
    assert code == 2 and str(missing) in err and "file not found" in err
    code, _, err = call(safeship.main, ["simulate", "--scenario", str(missing)], capsys)
    assert code == 2 and str(missing) in err and "file not found" in err
    code, _, err = call(safeship.main, ["simulate", "--scenario", str(scenario), "--service", "user-service"], capsys)
    assert code == 2 and "--config" in err
