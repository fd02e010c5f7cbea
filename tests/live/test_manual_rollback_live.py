"""Manual rollback by deployment id on the local world, through the seed's command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from livekit import REPO, ROUTE, SERVICE, Controller, Load, Setup, deploy, versions_in_ledger, wait_final, wait_for

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
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        ended = time.time()
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert (row["from_version"], row["to_version"], row["automatic"], row["success"]) == (
        "v1.4.0", "v1.2.0", False, True)
    assert "customer reports" in row["reason"]
    total, failed = load.window(started, ended)
    print(f"\nmanual rollback v1.4.0 -> v1.2.0: {failed} of {total} requests failed")
    assert failed == 0
    wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 20, "v1.4.0 to stop")
    assert client.environments()[0]["services"][0]["current_version"] == "v1.2.0"
    history = [d["version"] for d in client.history(SERVICE)["deployments"]]
    assert history[:2] == ["v1.4.0", "v1.2.0"]
