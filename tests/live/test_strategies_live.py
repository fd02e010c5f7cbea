"""Each strategy ships a healthy release under steady load (>= 200 req/s) with zero failed requests.

Real controller, real service processes, real HTTP through the builtin router. Recreate gets there
through the router's hold: requests that arrive while no version is up wait instead of failing."""

from __future__ import annotations

import time

import pytest
from livekit import ROUTE, Controller, Load, Setup, deploy, wait_final

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live, pytest.mark.slow]

RATE = 260.0  # asked of the generator; the test checks what it really sent


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
    total, failed = load.window(started, ended)
    rate = total / (ended - started)
    print(f"\n{strategy}: {total} requests in {ended - started:.1f}s ({rate:.0f}/s), {failed} failed; {phases}")
    assert record["phase"] == "succeeded", record["reason"]
    assert record["strategy"] == strategy
    assert rate >= 200, f"the load generator only reached {rate:.0f} req/s"
    assert failed == 0
    assert record["metrics"]["v1.4.0"]["requests"] > 0


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
    total, failed = load.window(started, ended)
    assert total > 0 and failed == 0
