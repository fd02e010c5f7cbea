"""What a user sees when a command gets bad input: one line, the documented exit code, no traceback,
and nothing recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_commands import call, deploy  # type: ignore[import-not-found]

from safeship.cli import deployment_engine, rollback_manager
from safeship.cli import main as safeship_main
from safeship.store import Store


def rows_in_store(config: Path) -> int:
    store = Store(f"sqlite:///{config.parent / '.safeship' / 'state.db'}")
    try:
        return len(store.list_deployments())
    finally:
        store.close()


@pytest.mark.parametrize("version", ["v1[/x]", "v1\nFAKE: ok", "v1\x1b[31mred", "v" + "9" * 100_000])
def test_a_bad_version_is_refused_before_anything_is_recorded(config_file: Path, capsys, version: str) -> None:
    config_file.write_text(config_file.read_text().replace("    versions: [v1.2.0, v1.3.0, v1.4.0]\n", ""))
    code, out, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", version,
                                                   "--environment", "production", "--config", str(config_file)],
                          capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: --version: version name must be")
    assert "\x1b" not in err and len(err) < 400
    assert rows_in_store(config_file) == 0
    code, out, _ = call(deployment_engine.main, ["--list", "--config", str(config_file)], capsys)
    assert code == 0 and out == ""


def test_names_from_old_rows_reach_the_terminal_escaped(config_file: Path, capsys) -> None:
    assert deploy(config_file, "v1.2.0", capsys)[0] == 0
    store = Store(f"sqlite:///{config_file.parent / '.safeship' / 'state.db'}")
    [record] = store.list_deployments()
    with store.engine.begin() as conn:  # a row written before names were checked
        conn.exec_driver_sql("UPDATE deployments SET reason = ? WHERE id = ?",
                             ("done [bold]x[/bold]\n\x1b[2Jgone", record.id))
    store.close()
    for argv in (["--status", "--deployment-id", record.id], ["--list"]):
        code, out, err = call(deployment_engine.main, [*argv, "--config", str(config_file)], capsys)
        assert code == 0, err
        assert "\x1b" not in out
    code, out, _ = call(deployment_engine.main, ["--status", "--deployment-id", record.id, "--config",
                                                 str(config_file)], capsys)
    assert "done [bold]x[/bold]\\n\\x1b[2Jgone" in out


def test_json_errors_are_one_object_on_stderr(config_file: Path, capsys) -> None:
    code, out, err = call(deployment_engine.main, ["--status", "--deployment-id", "deploy-nope", "--config",
                                                   str(config_file), "--json"], capsys)
    assert code == 2 and out == ""
    body = json.loads(err)
    assert body["exit_code"] == 2 and "deploy-nope" in body["error"]
    code, _, err = call(deployment_engine.main, ["--status", "--bogus", "--json"], capsys)
    assert code == 2 and json.loads(err)["exit_code"] == 2 and "--bogus" in json.loads(err)["error"]


def test_argument_errors_are_one_line(capsys) -> None:
    code, out, err = call(deployment_engine.main, ["--deploy", "--status"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: deployment-engine:")


@pytest.mark.parametrize("seed", ["-5", "x", str(2**40)])
def test_simulate_refuses_a_bad_seed(capsys, seed: str) -> None:
    code, _, err = call(safeship_main.main, ["simulate", "--scenario", "nope.yaml", "--seed", seed], capsys)
    assert code == 2 and "--seed" in err and err.count("\n") == 1


def test_status_exit_code_says_whether_the_release_is_live(config_file: Path, capsys) -> None:
    good = deploy(config_file, "v1.2.0", capsys)[1]
    bad = deploy(config_file, "v1.3.0", capsys)[1]
    assert bad["phase"] == "rolled_back"
    status = ["--status", "--config", str(config_file), "--deployment-id"]
    assert call(deployment_engine.main, [*status, good["id"]], capsys)[0] == 0
    assert call(deployment_engine.main, [*status, bad["id"]], capsys)[0] == 1


def test_unknown_service_is_named(config_file: Path, capsys) -> None:
    for main, argv in ((rollback_manager.main, ["--history"]), (deployment_engine.main, ["--list"])):
        code, out, err = call(main, [*argv, "--service", "ghost", "--config", str(config_file)], capsys)
        assert code == 2 and out == ""
        assert "no service 'ghost'" in err and "user-service" in err


def test_configure_needs_its_file(config_file: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SAFESHIP_CONFIG", str(config_file))
    code, _, err = call(rollback_manager.main, ["--configure", "--service", "user-service"], capsys)
    assert code == 2 and "--configure needs --config" in err


def test_configured_settings_can_be_shown_and_reset(config_file: Path, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    monkeypatch.setenv("SAFESHIP_CONFIG", str(config_file))
    settings = tmp_path / "rollback.yaml"
    settings.write_text("rollback:\n  auto_rollback: false\n  max_rollback_attempts: 7\n")
    show = ["--settings", "--service", "user-service", "--json"]
    code, out, _ = call(rollback_manager.main, show, capsys)
    assert code == 0 and json.loads(out)["source"] == str(config_file)
    assert json.loads(out)["rollback"]["auto_rollback"] is True
    code, _, err = call(rollback_manager.main, ["--configure", "--service", "user-service", "--config",
                                                str(settings)], capsys)
    assert code == 0, err
    body = json.loads(call(rollback_manager.main, show, capsys)[1])
    assert body["source"] == "rollback-manager --configure"
    assert body["rollback"]["auto_rollback"] is False and body["rollback"]["max_rollback_attempts"] == 7
    code, out, _ = call(rollback_manager.main, ["--reset", "--service", "user-service", "--json"], capsys)
    assert code == 0 and json.loads(out)["dropped"] is True
    body = json.loads(call(rollback_manager.main, show, capsys)[1])
    assert body["source"] == str(config_file) and body["rollback"]["auto_rollback"] is True


def test_unregistered_platform_is_refused_before_a_controller_starts(config_file: Path, capsys) -> None:
    config_file.write_text(config_file.read_text().replace("platform: sim\n    - name: \"production\"",
                                                           "platform: nomad\n    - name: \"production\""))
    code, out, err = call(deployment_engine.main, ["--deploy", "--service", "user-service", "--version", "v1.2.0",
                                                   "--environment", "staging", "--config", str(config_file)],
                          capsys)
    assert code == 2 and "platform 'nomad'" in err and "started" not in out
    assert not (config_file.parent / ".safeship" / "controller.json").exists()
    assert not list((config_file.parent / ".safeship").glob("*.pid")) if (config_file.parent / ".safeship").exists() \
        else True


def test_piped_output_is_not_wrapped_and_a_closed_pipe_is_quiet(config_file: Path, capsys) -> None:
    for version in ("v1.2.0", "v1.4.0"):
        assert deploy(config_file, version, capsys)[0] == 0
    env = {**os.environ, "COLUMNS": "40"}
    script = ("import sys; from safeship.cli.deployment_engine import main; "
              "sys.exit(main(sys.argv[1:]))")
    listing = subprocess.run([sys.executable, "-c", script, "--list", "--config", str(config_file)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("deploy-") and "user-service" in line for line in lines)
    history = f"{sys.executable} -c '{script}' --list --json --config {config_file} | head -c 10"
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {history}"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
    assert piped.stderr == ""


def test_init_writes_a_starter_that_loads(tmp_path: Path, capsys) -> None:
    target = tmp_path / "safeship.yaml"
    code, _, err = call(safeship_main.main, ["init", "--config", str(target)], capsys)
    assert code == 0 and target.exists(), err
    code, _, err = call(safeship_main.main, ["init", "--config", str(target)], capsys)
    assert code == 2 and str(target) in err
    code, _, err = call(deployment_engine.main, ["--list", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "safeship init" in err


def test_a_foreground_deployment_delivers_its_notifications_before_the_command_exits(config_file: Path,
                                                                                     capsys) -> None:
    assert deploy(config_file, "v1.2.0", capsys)[0] == 0
    assert deploy(config_file, "v1.3.0", capsys)[0] == 1
    store = Store(f"sqlite:///{config_file.parent / '.safeship' / 'state.db'}")
    try:
        last = store.last_event_id()
        assert last > 0 and store.cursor("notifications:log") == last  # nothing left pending
    finally:
        store.close()
