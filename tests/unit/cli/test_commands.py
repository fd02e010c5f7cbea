"""The seed's command lines against the sim world: exit codes, one-line errors, rows in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safeship.cli import deployment_engine, environment_manager, rollback_manager
from safeship.store import Store


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def deploy(config: Path, version: str, capsys, *extra: str) -> tuple[int, dict]:
    code, out, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", version,
                                                   "--environment", "production", "--config", str(config),
                                                   "--json", *extra], capsys)
    return code, json.loads(out) if out.strip() else {"err": err}


def test_deploy_good_then_bad_then_history(config_file: Path, capsys) -> None:
    code, first = deploy(config_file, "v1.2.0", capsys)
    assert code == 0 and first["phase"] == "succeeded"
    code, second = deploy(config_file, "v1.3.0", capsys)
    assert code == 1 and second["phase"] == "rolled_back"
    assert second["from_version"] == "v1.2.0"
    code, out, _ = call(rollback_manager.main, ["--history", "--service", "user-service", "--config",
                                                str(config_file), "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1
    assert rows[0]["from_version"] == "v1.3.0" and rows[0]["to_version"] == "v1.2.0" and rows[0]["success"]
    code, out, _ = call(deployment_engine.main, ["--status", "--deployment-id", second["id"], "--config",
                                                 str(config_file), "--json"], capsys)
    status = json.loads(out)
    assert status["strategy_reason"] and any(e["kind"] == "trigger" for e in status["events"])


def test_manual_rollback_of_a_promoted_release_returns_to_the_stable_one(config_file: Path, capsys) -> None:
    assert deploy(config_file, "v1.2.0", capsys)[0] == 0
    code, second = deploy(config_file, "v1.4.0", capsys)
    assert code == 0
    code, out, err = call(rollback_manager.main, ["--rollback", "--deployment-id", second["id"], "--config",
                                                  str(config_file), "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["to_version"] == "v1.2.0" and row["automatic"] is False and row["success"]
    store = Store(f"sqlite:///{config_file.parent / '.safeship/state.db'}")
    assert store.current_version("user-service", "production") == "v1.2.0"


@pytest.mark.parametrize(("patch", "expected"), [
    ("services:\n  user-service:\n    replicaz: 2\n", "services.user-service.replicaz: unknown field"),
    ("intelligent_deployment:\n  strategies:\n    canary:\n      step_duration: \"5 minutes\"\n",
     "intelligent_deployment.strategies.canary.step_duration: expected a duration"),
    ("services:\n  user-service:\n    replicas: 0\n",
     "services.user-service.replicas: must be greater than or equal to 1, got 0"),
])
def test_config_errors_exit_2_with_one_line(tmp_path: Path, capsys, patch: str, expected: str) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text(patch)
    code, _, err = call(deployment_engine.main, ["--list", "--config", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and expected in err, err
    assert not (tmp_path / ".safeship").exists()  # nothing changed


def test_missing_service_is_bad_input(config_file: Path, capsys) -> None:
    code, _, err = call(deployment_engine.main, ["--deploy", "--service", "nope", "--version", "v1",
                                                   "--environment", "production", "--config", str(config_file)], capsys)
    assert code == 2 and "service 'nope' is not in the config" in err
    store = Store(f"sqlite:///{config_file.parent / '.safeship/state.db'}")
    assert store.list_deployments() == []


def test_unknown_version_and_environment_are_bad_input(config_file: Path, capsys) -> None:
    code, _, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", "v9",
                                                 "--environment", "production", "--config", str(config_file)], capsys)
    assert code == 2 and "'v9'" in err
    code, _, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", "v1.2.0",
                                                 "--environment", "moon", "--config", str(config_file)], capsys)
    assert code == 2 and "'moon'" in err


def test_rollback_configure_is_stored_and_used(config_file: Path, tmp_path: Path, capsys) -> None:
    settings = tmp_path / "rollback-config.yaml"
    settings.write_text("rollback:\n  auto_rollback: false\n  max_rollback_attempts: 2\n")
    code, _, err = call(rollback_manager.main, ["--configure", "--service", "user-service", "--config", str(settings),
                                                "--safeship-config", str(config_file)], capsys)
    assert code == 0, err
    deploy(config_file, "v1.2.0", capsys)
    code, result = deploy(config_file, "v1.3.0", capsys)
    assert code == 1 and result["phase"] == "failed"  # auto rollback is off now
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollback:\n  max_rollback_attempts: 0\n")
    code, _, err = call(rollback_manager.main, ["--configure", "--service", "user-service", "--config", str(bad),
                                                "--safeship-config", str(config_file)], capsys)
    assert code == 2 and "max_rollback_attempts" in err


def test_environment_lifecycle_and_production_guard(config_file: Path, capsys) -> None:
    base = ["--config", str(config_file), "--json"]
    code, out, _ = call(environment_manager.main, ["--prepare", "--environment", "staging", *base], capsys)
    assert code == 0 and json.loads(out)["ok"]
    assert (config_file.parent / ".safeship/environments/staging").is_dir()
    code, out, _ = call(environment_manager.main, ["--validate", "--environment", "staging", *base], capsys)
    assert code == 0, out
    code, _, err = call(environment_manager.main, ["--cleanup", "--environment", "production", *base], capsys)
    assert code == 2 and "--force" in err
    code, out, _ = call(environment_manager.main, ["--cleanup", "--environment", "staging", *base], capsys)
    assert code == 0 and not (config_file.parent / ".safeship/environments/staging").exists()


def test_console_script_runs_simulate(tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[3] / "scenarios" / "gross-failure-40pct.yaml"
    done = subprocess.run([sys.executable, "-m", "safeship.cli.main", "simulate", "--scenario", str(scenario),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == "rollback"
