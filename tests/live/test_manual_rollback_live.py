"""Manual rollback by deployment id on the local world, through the seed's command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit import (
    REPO,
    ROUTE,
    SERVICE,
    Controller,
    Load,
    Setup,
    controller_with,
    deploy,
    versions_in_ledger,
    wait_final,
    wait_for,
)

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live, pytest.mark.slow]


def test_rollback_manager_rolls_a_promoted_release_back_under_load(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    wait_final(client, deploy(client, "v1.2.0")["id"])
    with Load(client.routes()[ROUTE], rate=100) as load:
        promoted, _ = wait_final(client, deploy(client, "v1.4.0")["id"])
        assert promoted["phase"] == "succeeded"
        started = time.time()
        command = [str(Path(sys.executable).parent / "rollback-manager"), "--rollback", "--deployment-id",
                   promoted["id"], "--reason", "customer reports", "--config", str(setup.config), "--json"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
        ended = time.time()
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert (row["from_version"], row["to_version"], row["automatic"], row["success"]) == (
        "v1.4.0", "v1.2.0", False, True)
    assert "customer reports" in row["reason"]
    load.none_failed(started, ended, "the manual rollback v1.4.0 -> v1.2.0")
    wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 60, "v1.4.0 to stop")
    assert client.environments()[0]["services"][0]["current_version"] == "v1.2.0"
    history = [d["version"] for d in client.history(SERVICE)["deployments"]]
    assert history[:2] == ["v1.4.0", "v1.2.0"]


def cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "deployment-engine"), *args, "--config", str(setup.config), "--json"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)


def long_canary(config: str) -> str:
    """Canary steps of 120 s, so that two CLI runs on a busy machine always find it in progress."""
    return config.replace("step_duration: 3s, min_step_duration: 1s", "step_duration: 120s, min_step_duration: 120s")


def test_detach_status_and_cancel_from_another_terminal(tmp_path: Path) -> None:
    with controller_with(tmp_path, long_canary) as setup:
        detach_status_and_cancel(setup)


def detach_status_and_cancel(setup: Setup) -> None:
    client = ControllerClient(setup.state_dir)
    wait_final(client, deploy(client, "v1.2.0")["id"])
    with Load(client.routes()[ROUTE], rate=100) as load:
        started = time.time()
        detached = cli(setup, "--deploy", "--service", SERVICE, "--version", "v1.4.0", "--environment", "production",
                       "--strategy", "canary", "--detach")
        assert detached.returncode == 0, detached.stderr
        deployment_id = json.loads(detached.stdout)["id"]
        wait_for(lambda: client.get(deployment_id)["weights"].get("v1.4.0", 0) > 0, 120, "canary traffic")
        status = cli(setup, "--status", "--deployment-id", deployment_id)
        assert status.returncode == 0 and json.loads(status.stdout)["phase"] == "progressing"
        cancelled = cli(setup, "--cancel", "--deployment-id", deployment_id)
        assert cancelled.returncode == 0, cancelled.stderr
        final, _ = wait_final(client, deployment_id)
        ended = time.time()
    assert final["phase"] == "cancelled" and final["weights"] == {"v1.2.0": 100}
    assert client.rollbacks(SERVICE) == []  # a cancel is not a rollback
    load.none_failed(started, ended, "detach, status and cancel")
