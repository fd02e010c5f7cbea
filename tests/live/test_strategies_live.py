"""Each strategy ships a healthy release under steady open-loop load with zero failed requests.

Real controller, real service processes, real HTTP through the builtin router. Recreate gets there
through the router's hold: requests that arrive while no version is up wait instead of failing."""

from __future__ import annotations

import time

import pytest
from livekit import ROUTE, Controller, Load, Setup, deploy, wait_final

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live, pytest.mark.slow]

RATE = 200.0  # asked of the generator; the test counts what it really sent, whatever the machine's speed


@pytest.mark.parametrize("strategy", ["canary", "blue_green", "rolling", "recreate"])
def test_healthy_deploy_drops_no_request(setup: Setup, controller: Controller, strategy: str) -> None:
    client = ControllerClient(setup.state_dir)
    first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert first["phase"] == "succeeded", first["reason"]
    with Load(client.routes()[ROUTE], rate=RATE) as load:
        time.sleep(1.0)  # traffic flows before the deployment starts
        started = time.time()
        record, phases = wait_final(client, deploy(client, "v1.4.0", deployment_strategy=strategy)["id"])
        ended = time.time()
        time.sleep(0.5)
    assert record["phase"] == "succeeded", record["reason"]
    assert record["strategy"] == strategy
    load.none_failed(started, ended, f"the {strategy} switch to v1.4.0 ({phases})")
    assert record["metrics"]["v1.4.0"]["requests"] > 0  # the new version did serve users


def test_a_never_ready_release_gets_no_user_request(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    wait_final(client, deploy(client, "v1.2.0")["id"])
    with Load(client.routes()[ROUTE], rate=100) as load:
        started = time.time()
        record, _ = wait_final(client, deploy(client, "v1.5.0")["id"])
        ended = time.time()
    assert record["phase"] == "rolled_back"
    assert record["evidence"]["trigger"] == "health_check_failure"
    assert record["metrics"].get("v1.5.0", {"requests": 0})["requests"] == 0
    load.none_failed(started, ended, "the never-ready v1.5.0 deployment")
