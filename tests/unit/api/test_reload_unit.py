"""Reloading the config, without processes: what `safeship server --reload` refuses before it signals
anything, which command lines count as a running controller, and what `Controller.reload` accepts,
refuses (the running config stays; an event says why) and adds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeship.api.controller import Controller, _digest
from safeship.api.daemons import is_controller_command
from safeship.api.server import reload_server
from safeship.errors import ConfigError, ControllerUnreachable, InputError
from safeship.routing.base import RouteKey

CONFIG = """\
state_dir: {state_dir}
environment_management:
  environments:
    - {{name: production, type: production, platform: local}}
services:
  user-service:
    command: [python, -m, examples.user_service, --port, "{{port}}"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG.format(state_dir=tmp_path / "state"))
    return path


def test_server_reload_is_not_a_controller_command_line() -> None:
    assert is_controller_command(["/venv/bin/safeship", "server", "--config", "x.yaml"])
    assert not is_controller_command(["/venv/bin/safeship", "server", "--reload", "--config", "x.yaml"])
    assert not is_controller_command(["/venv/bin/safeship", "server", "--stop"])


def test_server_reload_refuses_a_bad_config_before_anything(config: Path) -> None:
    config.write_text(config.read_text().replace("type: production", "type: prod"))
    with pytest.raises(ConfigError) as refused:
        reload_server(str(config))
    assert str(config) in str(refused.value) and "environments[0].type" in str(refused.value)
    assert "'prod'" in str(refused.value)
    assert refused.value.exit_code == 2
    assert not (config.parent / "state").exists()  # nothing made, nothing signalled


def test_server_reload_with_no_controller_says_so(config: Path) -> None:
    with pytest.raises(ControllerUnreachable, match=r"no safeship controller runs for .*nothing to reload"):
        reload_server(str(config))


def _events(controller: Controller, kind: str) -> list[str]:
    return [e.message for e in controller.store.events("controller") if e.kind == kind]


def test_controller_reload_refuses_what_it_cannot_change_and_keeps_its_config(config: Path) -> None:
    controller = Controller.from_config_file(config)
    try:
        running = controller.config
        original = config.read_text()
        for change, field in [
            (original.replace("platform: local}", "platform: local, router: haproxy}"),
             "environment_management.environments[0].router: changed from 'builtin' to 'haproxy'"),
            (original.replace(f"state_dir: {config.parent / 'state'}", f"state_dir: {config.parent / 'other'}"),
             "state_dir: changed from"),
            (original.replace("platform: local}",
                              "platform: local}\n    - {name: Bad_Env, type: staging, platform: local}"),
             "environments[1].name.*'Bad_Env'"),
        ]:
            config.write_text(change)
            with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]")):
                asyncio.run(controller.reload(why="test"))
            assert controller.config is running
            assert controller.environment_names == ["production"]
        refused = _events(controller, "config_reload_refused")
        assert len(refused) == 3 and all("keeps running the config it loaded before" in m for m in refused)
        assert _events(controller, "config_reloaded") == []
    finally:
        controller.store.close()


def test_a_request_naming_a_known_name_or_an_unchanged_file_does_not_reload(config: Path) -> None:
    controller = Controller.from_config_file(config)
    try:
        running = controller.config
        asyncio.run(controller.refresh_for(environment="production", service="user-service"))
        asyncio.run(controller.refresh_for(environment="edge"))  # unknown, but the file is the one it read
        assert controller.config is running
        assert controller._config_digest == _digest(config)
        assert controller.store.events("controller") == []
    finally:
        controller.store.close()


def test_the_plan_of_a_reload_adds_the_new_environments_routes(config: Path) -> None:
    controller = Controller.from_config_file(config)
    try:
        controller.routes[RouteKey("user-service", "production")] = 30765
        config.write_text(config.read_text().replace(
            "platform: local}", "platform: local}\n    - {name: edge, type: staging, platform: local}"))
        from safeship.config.loader import load_config

        assert controller._reload_plan(load_config(config)) == [RouteKey("user-service", "edge")]
        # a service whose route serves cannot disappear in a reload
        config.write_text(config.read_text().replace("user-service", "orders"))
        with pytest.raises(InputError, match="service 'user-service' is gone, but its route in production"):
            controller._reload_plan(load_config(config))
    finally:
        controller.store.close()


@contextlib.contextmanager
def stand_in(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process that plays the controller (its command line names the module); SIGHUP would end it,
    as it ends any process that does not handle it."""
    started = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert started.stdout is not None and started.stdout.readline() == b"ready\n"
        yield started
    finally:
        if started.poll() is None:
            started.kill()
        started.wait(10)
        if started.stdout is not None:
            started.stdout.close()


HUP_COUNTER = ("import signal, sys, time\n"
               "signal.signal(signal.SIGHUP, lambda *_: print('hup', flush=True))\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n")


def test_server_reload_signals_no_process_that_is_not_the_controller(config: Path) -> None:
    state = config.parent / "state"
    state.mkdir()
    with stand_in(sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(60)") as stranger:
        (state / "controller.json").write_text(json.dumps({"pid": stranger.pid, "port": 1}))
        with pytest.raises(ControllerUnreachable, match="no safeship controller runs"):
            reload_server(str(config))
        time.sleep(0.2)
        assert stranger.poll() is None  # never sent SIGHUP (it would have ended it)


def test_server_reload_refuses_a_config_the_controller_does_not_run(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    other = tmp_path / "other.yaml"
    with stand_in(sys.executable, "-c", HUP_COUNTER, "safeship.api.server") as controller:
        (state / "controller.json").write_text(json.dumps({"pid": controller.pid, "port": 1, "config": str(other)}))
        with pytest.raises(InputError, match=f"runs {other}, not {config.resolve()}") as refused:
            reload_server(str(config))
        assert refused.value.exit_code == 2
        time.sleep(0.2)
        assert controller.poll() is None


def test_server_reload_says_so_when_the_controller_records_no_reload(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with stand_in(sys.executable, "-c", HUP_COUNTER, "safeship.api.server") as controller:
        (state / "controller.json").write_text(json.dumps({"pid": controller.pid, "port": 1,
                                                           "config": str(config.resolve())}))
        with pytest.raises(ControllerUnreachable, match=r"was sent SIGHUP but recorded no reload within 0\.5s"):
            reload_server(str(config), timeout=0.5)
        assert controller.stdout is not None and controller.stdout.readline() == b"hup\n"  # it got exactly it


def test_a_bad_config_is_refused_and_the_controller_running_it_is_told(config: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with stand_in(sys.executable, "-c", HUP_COUNTER, "safeship.api.server") as controller:
        (state / "controller.json").write_text(json.dumps({"pid": controller.pid, "port": 1,
                                                           "config": str(config.resolve())}))
        config.write_text(config.read_text().replace("type: production", "type: prod"))
        with pytest.raises(InputError, match=rf"type.*'prod'.*the controller \(pid {controller.pid}\) keeps running"):
            reload_server(str(config))
        assert controller.stdout is not None and controller.stdout.readline() == b"hup\n"  # it refuses it itself
