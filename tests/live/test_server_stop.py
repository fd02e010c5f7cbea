"""`safeship server --stop` (api.server.stop_server) against a real controller process and the real
router daemon it started, with a real deployment running: both daemons exit, their records go, the
service instances keep running, and a second call says that nothing runs."""

from __future__ import annotations

import json

import pytest
from livekit import SERVICE, Controller, Setup, alive, deploy, wait_final

from safeship.api.client import ControllerClient
from safeship.api.server import stop_server

pytestmark = [pytest.mark.live, pytest.mark.slow]


def test_stop_server_stops_the_controller_and_the_router_and_leaves_the_services(
    setup: Setup, controller: Controller
) -> None:
    client = ControllerClient(setup.state_dir)
    final, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert final["phase"] == "succeeded", final["reason"]
    assert controller.process is not None
    controller_pid = controller.process.pid
    router_pid = int(json.loads((setup.state_dir / "router.json").read_text())["pid"])
    instances = setup.pids()
    assert len(instances) == 2 and alive(router_pid)

    lines = stop_server(str(setup.config))

    assert lines[0] == f"stopped the controller (pid {controller_pid})"
    assert lines[1] == f"stopped the router daemon (pid {router_pid})"
    assert lines[-1].startswith(f"keeps running: 2 service instances (production/{SERVICE}/v1.2.0-0 (pid ")
    controller.process.wait(5)  # reaped: it exited on SIGTERM, cleanly
    assert controller.process.returncode == 0
    assert not alive(router_pid)
    assert all(alive(pid) for pid in instances.values())  # by design: the next controller adopts them
    assert not (setup.state_dir / "controller.json").exists()
    assert not (setup.state_dir / "router.json").exists()
    assert not client.is_running()

    again = stop_server(str(setup.config))
    assert again[:2] == [
        f"no safeship controller runs for {setup.state_dir}",
        f"no router daemon runs for {setup.state_dir}",
    ]

    controller.start()  # the next controller adopts the instances it left
    assert setup.pids() == instances
    assert client.environments()[0]["services"][0]["current_version"] == "v1.2.0"
