"""The starter safeship.yaml and the shipped example files load, and the starter deploys on the sim world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeship.cli import deployment_engine, rollback_manager
from safeship.config.loader import load_config, load_rollback_settings
from safeship.config.starter import STARTER_YAML, write_starter
from safeship.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_starter_loads_with_one_local_service(tmp_path: Path) -> None:
    path = write_starter(tmp_path / "safeship.yaml")
    assert path.read_text() == STARTER_YAML
    config = load_config(path)
    assert [e.name for e in config.environment_management.environments] == ["development", "production"]
    assert all(e.platform == "local" for e in config.environment_management.environments)
    (service,) = config.services.values()
    assert "{port}" in " ".join(service.command) and "{version}" in " ".join(service.command)
    assert len(config.intelligent_deployment.rollback.triggers) == 3


def test_the_starter_is_not_written_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text("services: {}\n")
    with pytest.raises(InputError, match="already exists") as caught:
        write_starter(path)
    assert caught.value.exit_code == 2 and str(path) in str(caught.value)
    assert path.read_text() == "services: {}\n"
    write_starter(path, force=True)
    assert path.read_text() == STARTER_YAML


def test_the_starter_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_starter(tmp_path / "nope" / "safeship.yaml")
    assert not (tmp_path / "nope").exists()


def test_the_starter_deploys_on_the_sim_platform(tmp_path: Path, capsys) -> None:
    path = tmp_path / "safeship.yaml"
    path.write_text(STARTER_YAML.replace("platform: local", "platform: sim"))
    config = load_config(path)
    (name,) = config.services
    version = config.services[name].versions[0]
    code, out, err = call(deployment_engine.main, ["--deploy", "--service", name, "--version", version,
                                                   "--environment", "development", "--config", str(path),
                                                   "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["phase"] == "succeeded"


def test_the_example_rollback_config_loads() -> None:
    settings = load_rollback_settings(EXAMPLES / "rollback-config.yaml")
    assert settings.auto_rollback is True and settings.max_rollback_attempts == 3
    assert [t.type for t in settings.triggers] == ["health_check_failure", "error_rate_threshold",
                                                   "response_time_threshold"]
    assert settings.rollback_timeout == 300 and settings.monitoring.interval == 30


def test_the_example_rollback_config_is_accepted_by_rollback_manager(tmp_path: Path, capsys) -> None:
    main_config = tmp_path / "safeship.yaml"
    main_config.write_text(STARTER_YAML.replace("platform: local", "platform: sim"))
    code, out, err = call(rollback_manager.main, ["--configure", "--service", "web", "--config",
                                                  str(EXAMPLES / "rollback-config.yaml"), "--safeship-config",
                                                  str(main_config), "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["service"] == "web" and len(row["rollback"]["triggers"]) == 3


def test_a_rollback_config_with_an_empty_trigger_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rollback-config.yaml"
    path.write_text("rollback:\n  triggers: []\n")
    with pytest.raises(InputError, match="unguarded"):
        load_rollback_settings(path)


@pytest.mark.parametrize("name", ["safeship.yaml", "demo.yaml"])
def test_the_example_configs_load(name: str) -> None:
    assert load_config(EXAMPLES / name).services["user-service"].versions[0] == "v1.2.0"
