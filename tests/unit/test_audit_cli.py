"""CLI commands that change something without the controller (`rollback-manager --configure` and
`--reset`, `deployment-engine --cancel` of what does not exist) leave one audit row each, allowed or
refused, with the exit code and the error's sentence; commands that only read leave none, and a
config that cannot be read leaves no row (and makes no store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from roleskit import run_cli

from safeship.cli import deployment_engine, rollback_manager
from safeship.cli.audit_trail import mutating_action

pytest_plugins = ("rolesfixtures",)  # the fixture config_file


def _call(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)  # type: ignore[operator]
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _rows(config_file: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    code, out, err = run_cli(["audit", "--json", "--config", str(config_file)], capsys)
    assert code == 0, err
    return [r for r in reversed(json.loads(out)["audit"]) if not str(r["action"]).startswith("safeship token")]


def test_store_only_commands_leave_rows_allowed_and_refused(
        config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFESHIP_CONFIG", str(config_file))
    assert run_cli(["token", "create", "--role", "viewer", "--config", str(config_file)], capsys)[0] == 0  # a store
    settings = tmp_path / "rollback.yaml"
    settings.write_text("rollback:\n  auto_rollback: false\n")

    configured = _call(rollback_manager.main, ["--configure", "--service", "user-service", "--config",
                                               str(settings)], capsys)
    shown = _call(rollback_manager.main, ["--settings", "--service", "user-service"], capsys)
    refused = _call(deployment_engine.main, ["--cancel", "--deployment-id", "deploy-0000000000"], capsys)
    reset = _call(rollback_manager.main, ["--reset", "--service", "user-service", "--json"], capsys)

    assert [configured[0], shown[0], refused[0], reset[0]] == [0, 0, 2, 0], refused[2]
    assert refused[2].count("\n") == 1  # the command's own one sentence, nothing from the audit row
    rows = _rows(config_file, capsys)
    assert [(r["action"], r["target"], r["status"]) for r in rows] == [
        ("rollback-manager --configure", "user-service", 0),
        ("deployment-engine --cancel", "deploy-0000000000", 2),
        ("rollback-manager --reset", "user-service", 0),
    ]
    assert rows[0]["outcome"] == "ok"
    assert rows[1]["outcome"] == refused[2].removeprefix("error: ").strip()
    assert all(str(r["actor"]).startswith("cli: ") and str(r["source"]).startswith("cli pid ") for r in rows)


def test_a_config_that_cannot_be_read_means_no_row_and_no_store(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = config_file.parent / "missing.yaml"
    code, _out, err = _call(deployment_engine.main, ["--cancel", "--deployment-id", "deploy-0000000000",
                                                     "--config", str(missing)], capsys)
    assert code == 2 and err.count("\n") == 1 and "missing.yaml" in err
    assert not (config_file.parent / "state").exists()


@pytest.mark.parametrize(("module", "argv", "action"), [
    ("safeship.cli.deployment_engine", ["--deploy", "--service", "s"], "deployment-engine --deploy"),
    ("safeship.cli.deployment_engine", ["--status", "--deployment-id", "d"], None),
    ("safeship.cli.environment_manager", ["--cleanup", "--environment", "e"], "environment-manager --cleanup"),
    ("safeship.cli.environment_manager", ["--validate", "--environment", "e"], None),
    ("safeship.cli.main", ["pipeline", "run", "--service", "s"], "safeship pipeline run"),
    ("safeship.cli.main", ["pipeline", "history"], None),
    ("safeship.cli.main", ["token", "create", "--role", "viewer"], None),  # it writes its own rows
])
def test_which_commands_are_audited(module: str, argv: list[str], action: str | None) -> None:
    assert mutating_action(module, argv) == action
