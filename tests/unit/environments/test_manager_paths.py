"""The environment manager never reads, writes or removes outside its own folders, whatever name
reaches it, and validate does not fail an environment that a deploy would set up by itself.

The configs here are built with the model and then given unsafe names with `model_copy`, which
skips validation: that is how a config that never went through the loader reaches the manager."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safeship.config.models import SafeshipConfig
from safeship.environments.manager import EnvironmentManager, configured_port
from safeship.errors import InputError
from safeship.store import Store

BASE: dict[str, Any] = {
    "environment_management": {
        "environments": [
            {"name": "development", "type": "development", "platform": "local"},
            {"name": "staging", "type": "staging", "platform": "local",
             "config_maps": {"app-settings": {"FEATURE_X": "on"}}, "variables": {"REGION": "loopback-1"}},
            {"name": "production", "type": "production", "platform": "local"},
        ]
    },
    "services": {
        "user-service": {
            "replicas": 1,
            "ports": {"development": 18080, "staging": 18180, "production": 18280},
            "command": ["python", "-m", "examples.user_service", "--port", "{port}", "--version", "{version}"],
        }
    },
}


def make_config(**service: Any) -> SafeshipConfig:
    data = {**BASE, "services": {"user-service": {**BASE["services"]["user-service"], **service}}}
    return SafeshipConfig.model_validate(data)


def rename(config: SafeshipConfig, index: int, name: str) -> SafeshipConfig:
    """The environment at `index` renamed to `name`, skipping every validator."""
    environments = config.environment_management.environments
    environments[index] = environments[index].model_copy(update={"name": name})
    return config


class Project:
    """A config folder with its state dir, store and a neighbour folder that must survive."""

    def __init__(self, root: Path, config: SafeshipConfig) -> None:
        self.root = root
        self.state_dir = root / ".safeship"
        self.state_dir.mkdir(parents=True)
        self.store = Store(f"sqlite:///{self.state_dir / 'state.db'}")
        self.manager = EnvironmentManager(config, state_dir=self.state_dir, root=root, store=self.store)
        self.victim = root / "victim"
        self.victim.mkdir()
        (self.victim / "keep.txt").write_text("precious")
        (self.state_dir / "environments").mkdir()
        (self.state_dir / "logs").mkdir()

    def untouched(self) -> bool:
        return (
            (self.victim / "keep.txt").read_text() == "precious"
            and (self.state_dir / "state.db").is_file()
            and (self.state_dir / "environments").is_dir()
            and sorted(p.name for p in self.root.iterdir()) == [".safeship", "victim"]
            and list(self.victim.iterdir()) == [self.victim / "keep.txt"]
            and list((self.state_dir / "environments").iterdir()) == []
        )


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path / "project", make_config())
    try:
        yield made
    finally:
        made.store.close()


UNSAFE = ["..", "../../victim", "../victim", "staging/../../../victim", ".", ""]


@pytest.mark.parametrize("name", UNSAFE)
def test_cleanup_of_an_unsafe_configured_name_is_refused_and_removes_nothing(project: Project, name: str) -> None:
    rename(project.manager.config, 0, name)
    with pytest.raises(InputError):
        project.manager.cleanup(name, force=True, controller_cleanup=None)
    assert project.untouched()


@pytest.mark.parametrize("name", UNSAFE)
@pytest.mark.parametrize("action", ["prepare", "validate"])
def test_prepare_and_validate_of_an_unsafe_configured_name_are_refused(
    project: Project, name: str, action: str
) -> None:
    rename(project.manager.config, 0, name)
    with pytest.raises(InputError):
        getattr(project.manager, action)(name)
    assert project.untouched()


def test_a_configured_name_that_differs_from_a_safe_request_is_still_refused(project: Project) -> None:
    """The store or a caller may ask by a good name while the config object holds a bad one."""
    config = project.manager.config
    rename(config, 0, "../../victim")
    environment = config.environment_management.environments[0]
    with pytest.raises(InputError):
        project.manager.paths(environment)
    assert project.untouched()


def test_cleanup_of_a_name_that_is_not_configured_is_refused(project: Project) -> None:
    with pytest.raises(InputError, match="not configured"):
        project.manager.cleanup("qa", force=True, controller_cleanup=None)
    assert project.untouched()


def test_cleanup_of_a_safe_name_removes_only_its_own_state(project: Project) -> None:
    project.manager.prepare("staging")
    assert (project.state_dir / "environments" / "staging" / "environment.env").is_file()
    checks = project.manager.cleanup("staging", force=False, controller_cleanup=None)
    assert all(check.ok for check in checks)
    assert not (project.state_dir / "environments" / "staging").exists()
    assert project.untouched()


@pytest.mark.parametrize(
    ("map_name", "key"),
    [("app-settings", "../../../../victim/keep.txt"), ("../../../victim", "keep.txt"), ("..", "state.db"),
     ("app-settings", "..")],
)
def test_config_map_names_and_keys_cannot_leave_the_config_folder(project: Project, map_name: str, key: str) -> None:
    staging = project.manager.config.environment_management.environments[1]
    project.manager.config.environment_management.environments[1] = staging.model_copy(
        update={"config_maps": {map_name: {key: "overwritten"}}}
    )
    with pytest.raises(InputError):
        project.manager.prepare("staging")
    assert project.untouched()  # nothing written, not even the environment's own folder


# ---------------------------------------------------------------- validate before the first prepare


def test_validate_before_prepare_passes_the_directory_checks(project: Project) -> None:
    checks = {check.name: check for check in project.manager.validate("staging")}
    for label in ("state directory", "logs directory"):
        assert checks[label].ok, checks[label].detail
        assert "will be created on first deploy" in checks[label].detail
    assert not (project.state_dir / "environments" / "staging").exists()  # validate changes nothing


def test_validate_fails_a_state_path_that_cannot_become_a_directory(project: Project) -> None:
    (project.state_dir / "environments" / "staging").write_text("a file where the folder should be")
    checks = {check.name: check for check in project.manager.validate("staging")}
    assert not checks["state directory"].ok
    assert "not a directory" in checks["state directory"].detail


# ---------------------------------------------------------------- where a route port comes from


def test_the_ports_written_are_the_ports() -> None:
    config = make_config()
    ports = [configured_port(config, "user-service", name) for name in ("development", "staging", "production")]
    assert ports == [18080, 18180, 18280]


def test_prepare_and_validate_say_where_the_port_comes_from(project: Project) -> None:
    checks = {check.name: check for check in project.manager.validate("production")}
    detail = checks["user-service port"].detail
    assert detail.startswith("127.0.0.1:18280 (services.user-service.ports.production) is ")
