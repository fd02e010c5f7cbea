"""Deployments that get stuck or go in circles, through the engine API the commands use.

The config is the example safeship.yaml with every environment on the sim platform and v1.3.0
simulated with 8% failed requests (above the 5% trigger)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from safeship.analysis.policies import get_policy
from safeship.config.loader import load_config
from safeship.config.models import DeploymentRequest, SafeshipConfig
from safeship.engine.engine import validate_request
from safeship.engine.phases import Phase, status_exit_code
from safeship.engine.process_mark import DriverMark, is_alive
from safeship.engine.simulate import inert_engine, sim_engine
from safeship.engine.views import deployment_view
from safeship.errors import ConflictError, InputError
from safeship.store import DeploymentRecord, Store

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "safeship.yaml"
SERVICE = "user-service"


def sim_config(tmp_path: Path, *, approval: bool = False, versions: bool = True) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    for environment in data["environment_management"]["environments"]:
        environment["platform"] = "sim"
        if approval and environment["name"] == "production":
            environment["approval"] = "required"
    service = data["services"][SERVICE]
    service["simulate"] = {"v1.3.0": {"error_rate": 0.08}}
    if not versions:
        service.pop("versions")
    path = tmp_path / "safeship.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class World:
    """What `deployment-engine` and `rollback-manager` do for a sim environment, minus printing."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.config: SafeshipConfig = load_config(str(sim_config(tmp_path, **options)))
        self.store = Store(f"sqlite:///{tmp_path / 'state.db'}")

    def request(self, version: str, environment: str = "production") -> DeploymentRequest:
        return DeploymentRequest(service_name=SERVICE, version=version, environment=environment)

    def deploy(self, version: str) -> DeploymentRecord:
        request = self.request(version)
        validate_request(self.config, self.store, request)
        return asyncio.run(self._deploy(request))

    async def _deploy(self, request: DeploymentRequest) -> DeploymentRecord:
        engine, _ = await sim_engine(self.config, self.store, service=SERVICE, environment=request.environment,
                                     candidate=request.version, policy_for=get_policy, start=self._start())
        record = engine.submit(request, policy="safeship")
        return await engine.run(record.id, return_when_awaiting=True)

    def rollback(self, deployment_id: str, **options: Any) -> DeploymentRecord:
        return asyncio.run(self._rollback(deployment_id, **options))

    async def _rollback(self, deployment_id: str, **options: Any) -> DeploymentRecord:
        record = self.store.get_deployment(deployment_id)
        engine, _ = await sim_engine(self.config, self.store, service=SERVICE, environment=record.environment,
                                     candidate=record.version, policy_for=get_policy,
                                     start=max(time.time(), record.updated_at + 1))
        engine.request_rollback(deployment_id, reason="manual rollback", **options)
        return await engine.run(deployment_id)

    def bookkeeper(self) -> Any:
        """The engine `--cancel` and `--approve` use for a sim environment."""
        return inert_engine(self.config, self.store, policy_for=get_policy)

    def _start(self) -> float:
        latest = max((d.updated_at for d in self.store.list_deployments(limit=1)), default=0.0)
        return max(time.time(), latest + 1)

    def phase(self, deployment_id: str) -> str:
        return self.store.get_deployment(deployment_id).phase

    def leave_without_driver(self, deployment_id: str, driver: Any = None) -> None:
        """As an older safeship that crashed (or a process since gone) leaves a deployment."""
        record = self.store.get_deployment(deployment_id)
        status = {k: v for k, v in record.status.items() if k != "driver"}
        if driver is not None:
            status["driver"] = driver
        self.store.save_transition(record, record.replace(status=status))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def gated(tmp_path: Path) -> World:
    return World(tmp_path, approval=True)


# ------------------------------------------------------------------ case 3: no phase without a way out


def test_cancel_of_a_deployment_awaiting_approval_ends_it(gated: World) -> None:
    waiting = gated.deploy("v1.2.0")
    assert waiting.phase == "awaiting_approval"
    returned = gated.bookkeeper().cancel(waiting.id, by="test")
    assert returned.phase == "cancelled"
    assert gated.phase(waiting.id) == "cancelled"
    assert gated.store.active_deployment(SERVICE, "production") is None
    again = gated.deploy("v1.2.0")  # the service is not blocked
    assert again.phase == "awaiting_approval" and again.id != waiting.id


def test_approve_runs_a_sim_deployment_to_its_end(gated: World) -> None:
    waiting = gated.deploy("v1.2.0")
    returned = gated.bookkeeper().approve(waiting.id, by="test")
    assert returned.phase == "succeeded"
    assert gated.store.current_version(SERVICE, "production") == "v1.2.0"
    assert gated.store.get_deployment(waiting.id).status["approval"]["by"] == "test"


def test_cancel_of_a_sim_deployment_left_mid_flight_ends_it(world: World) -> None:
    assert world.deploy("v1.2.0").phase == "succeeded"
    record = asyncio.run(_start_only(world, "v1.4.0"))
    assert world.phase(record.id) == "progressing"
    world.leave_without_driver(record.id)  # the command that drove it is gone
    returned = world.bookkeeper().cancel(record.id, by="test")
    assert returned.phase == "cancelled"
    assert world.phase(record.id) == "cancelled"
    assert world.store.current_version(SERVICE, "production") == "v1.2.0"


async def _start_only(world: World, version: str) -> DeploymentRecord:
    engine, _ = await sim_engine(world.config, world.store, service=SERVICE, environment="production",
                                 candidate=version, policy_for=get_policy, start=world._start())
    record = engine.submit(world.request(version), policy="safeship")
    for _ in range(3):  # pending -> preparing -> progressing
        await engine.step(record.id)
    return world.store.get_deployment(record.id)


def _stuck_rolling_back(gated: World, driver: Any = None) -> str:
    """A cancelled deployment left in rolling_back with nobody driving it."""
    waiting = gated.deploy("v1.2.0")
    plain, _ = asyncio.run(sim_engine(gated.config, gated.store, service=SERVICE, environment="production",
                                      candidate="v1.2.0", policy_for=get_policy, start=time.time()))
    plain.cancel(waiting.id, by="test")  # the transition alone, as older versions did
    gated.leave_without_driver(waiting.id, driver)
    assert gated.phase(waiting.id) == "rolling_back"
    return waiting.id


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("driver", [None, "dead"])
def test_a_stuck_sim_deployment_is_finished_by_the_next_deploy(gated: World, driver: Any) -> None:
    mark = {"pid": _dead_pid(), "host": socket.gethostname()} if driver == "dead" else None
    stuck = _stuck_rolling_back(gated, mark)
    again = gated.deploy("v1.2.0")
    assert gated.phase(stuck) == "cancelled"
    assert "taken_over" in [e.kind for e in gated.store.events(stuck)]
    assert again.phase == "awaiting_approval"


def test_a_stuck_sim_deployment_is_finished_by_a_submit_inside_an_event_loop(gated: World) -> None:
    stuck = _stuck_rolling_back(gated)
    again = asyncio.run(gated._deploy(gated.request("v1.2.0")))  # submit's own check, in a running loop
    assert gated.phase(stuck) == "cancelled"
    assert again.phase == "awaiting_approval"


def test_a_reused_pid_is_not_a_live_driver() -> None:
    parent = os.getppid()
    mark = {"host": socket.gethostname(), "pid": parent}
    assert is_alive(DriverMark.from_json({**mark, "started": _started(parent)}))
    assert not is_alive(DriverMark.from_json({**mark, "started": "1"}))  # same pid, another process
    assert not is_alive(DriverMark.from_json({**mark, "host": "elsewhere", "started": _started(parent)}))
    assert not is_alive(DriverMark.from_json({**mark, "pid": _dead_pid()}))
    assert not is_alive(DriverMark.from_json({**mark, "pid": "1"}))  # not a mark at all
    assert not is_alive(None)


def _started(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2:].split()[19]


def test_a_stuck_sim_deployment_is_finished_by_cancel_and_rollback(gated: World) -> None:
    stuck = _stuck_rolling_back(gated)
    assert gated.bookkeeper().cancel(stuck, by="test").phase == "cancelled"
    stuck_again = _stuck_rolling_back(gated)
    with pytest.raises(ConflictError, match="cancelled; nothing to roll back"):
        gated.bookkeeper().request_rollback(stuck_again)
    assert gated.phase(stuck_again) == "cancelled"


def test_a_deployment_driven_by_a_live_process_is_left_to_it(gated: World) -> None:
    stuck = _stuck_rolling_back(gated, {"pid": os.getpid(),
                                        "host": socket.gethostname()})
    with pytest.raises(ConflictError, match="already has deployment"):
        validate_request(gated.config, gated.store, gated.request("v1.2.0"))
    assert gated.phase(stuck) == "rolling_back"


# ------------------------------------------------------------------ case 4: no circle


def test_the_live_release_can_be_rolled_back_past_a_newer_rolled_back_one(world: World) -> None:
    assert world.deploy("v1.2.0").phase == "succeeded"
    live = world.deploy("v1.4.0")
    assert live.phase == "succeeded"
    bad = world.deploy("v1.3.0")
    assert bad.phase == "rolled_back"
    assert world.store.current_version(SERVICE, "production") == "v1.4.0"
    with pytest.raises(ConflictError, match=f"v1.4.0 serves.*{live.id}"):
        world.rollback(bad.id)
    final = world.rollback(live.id)
    assert final.phase == "rolled_back"
    assert world.store.current_version(SERVICE, "production") == "v1.2.0"
    assert final.status["weights"] == {"v1.2.0": 100}
    [row] = world.store.rollbacks(deployment_id=live.id)
    assert row.to_version == "v1.2.0" and row.success and not row.automatic


def test_a_newer_live_release_still_blocks_rolling_back_an_older_one(world: World) -> None:
    first = world.deploy("v1.2.0")
    assert world.deploy("v1.4.0").phase == "succeeded"
    with pytest.raises(ConflictError, match="roll that one back instead"):
        world.rollback(first.id)
    assert world.phase(first.id) == "succeeded"


# ------------------------------------------------------------------ case 5: the first deployment


def test_rolling_back_the_first_release_is_refused_without_force(world: World) -> None:
    first = world.deploy("v1.2.0")
    with pytest.raises(InputError) as refused:
        world.rollback(first.id)
    message = str(refused.value)
    assert refused.value.exit_code == 2 and "\n" not in message
    assert "has no earlier stable version to return to; rolling back would stop the service; " \
           "pass --force to do it anyway" in message
    assert world.phase(first.id) == "succeeded"
    assert world.store.rollbacks(deployment_id=first.id) == []
    assert world.store.current_version(SERVICE, "production") == "v1.2.0"


def test_forced_rollback_of_the_first_release_says_nothing_serves(world: World) -> None:
    first = world.deploy("v1.2.0")
    final = world.rollback(first.id, force=True)
    assert final.phase == "rolled_back"
    view = deployment_view(world.store.get_deployment(first.id))
    assert not any(view["weights"].values())
    assert world.store.current_version(SERVICE, "production") is None
    [row] = world.store.rollbacks(deployment_id=first.id)
    assert row.to_version is None and row.success


# ------------------------------------------------------------------ names are checked before anything


@pytest.mark.parametrize(("field", "value"), [
    ("version", "v1[/x]"),
    ("version", "v" * 100_000),
    ("service_name", "User_Service"),
    ("environment", "../production"),
])
def test_bad_names_are_refused_before_anything_is_recorded(tmp_path: Path, field: str, value: str) -> None:
    world = World(tmp_path, versions=False)
    request = world.request("v9.9.9").model_copy(update={field: value})
    flag = {"version": "--version", "service_name": "--service", "environment": "--environment"}[field]
    with pytest.raises(InputError, match=f"^{flag}: "):
        validate_request(world.config, world.store, request)
    engine = world.bookkeeper()
    with pytest.raises(InputError, match=f"^{flag}: "):
        engine.submit(request)
    assert world.store.list_deployments() == []


def test_a_good_unlisted_version_is_accepted_when_no_versions_are_listed(tmp_path: Path) -> None:
    world = World(tmp_path, versions=False)
    assert world.deploy("v9.9.9").phase == "succeeded"


# ------------------------------------------------------------------ --status exit code


@pytest.mark.parametrize(("phase", "code"), [
    ("pending", 0), ("awaiting_approval", 0), ("preparing", 0), ("progressing", 0), ("monitoring", 0),
    ("rolling_back", 0), ("succeeded", 0), ("rolled_back", 1), ("failed", 1), ("cancelled", 1),
])
def test_status_exit_code(phase: str, code: int) -> None:
    assert status_exit_code(phase) == code
    assert status_exit_code(Phase(phase)) == code
