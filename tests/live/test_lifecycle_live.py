"""A newcomer's day with a real controller: `safeship server` started by its console script and
stopped by `safeship server --stop`, one controller and one router daemon per state directory,
`--status --watch` following a deployment to its end, and `--cancel` waiting for the controller.

Every process a test starts is ended by its PID in a finally block (the controller, the router
daemon it started, the service instances by the ledger and the test's marker)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import REPO, SERVICE, Controller, Setup, alive, deploy, wait_final, wait_for

from safeship.api.client import ControllerClient
from safeship.api.daemons import is_controller

pytestmark = [pytest.mark.live, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _router_pid(setup: Setup) -> int:
    return int(json.loads((setup.state_dir / "router.json").read_text())["pid"])


def _cli(setup: Setup, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:], "--config", str(setup.config)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _router_daemons(state_dir: Path) -> set[int]:
    """PIDs running the router daemon for this state directory."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"safeship.routing.daemon" in argv and str(state_dir).encode() in b" ".join(argv):
                    found.add(int(entry.name))
    return found


def test_safeship_server_prints_where_it_listens_and_stop_recognises_it(setup: Setup) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = subprocess.Popen([str(BIN / "safeship"), "server", "--config", str(setup.config)], cwd=REPO, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    routers: set[int] = set()
    try:
        assert server.stdout is not None
        first = server.stdout.readline().strip()
        info = json.loads((setup.state_dir / "controller.json").read_text())
        assert first == f"safeship controller listening on http://127.0.0.1:{info['port']} (pid {server.pid})"
        assert server.stdout.readline().strip() == f"token: {setup.state_dir / 'token'}"
        client = ControllerClient(setup.state_dir)
        assert client.is_running() and is_controller(server.pid, setup.state_dir)
        router = _router_pid(setup)
        routers = _router_daemons(setup.state_dir)

        second = _cli(setup, "safeship", "server", timeout=60)
        assert second.returncode == 2
        assert f"another safeship controller (pid {server.pid}) holds" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1

        stopped = _cli(setup, "safeship", "server", "--stop", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        lines = stopped.stdout.splitlines()
        assert lines[0] == f"stopped the controller (pid {server.pid})"
        assert lines[1] == f"stopped the router daemon (pid {router})"
        assert server.wait(10) == 0
        assert not alive(router)
        assert _router_daemons(setup.state_dir) == set()  # none left behind, none started again
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        for pid in routers | _router_daemons(setup.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_status_watch_follows_a_deployment_until_it_ends(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    wait_final(client, deploy(client, "v1.2.0")["id"])
    started = deploy(client, "v1.4.0")
    watched = _cli(setup, "deployment-engine", "--status", "--watch", "--deployment-id", started["id"])
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[-1].startswith(f"{started['id']}: succeeded")
    progress = [line for line in lines if " step " in line]
    assert any("progressing" in line and "v1.4.0=" in line for line in progress)  # live weights on the way
    assert client.get(started["id"])["phase"] == "succeeded"


def test_cancel_waits_until_the_controller_acted(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    wait_final(client, deploy(client, "v1.2.0")["id"])
    started = deploy(client, "v1.4.0")
    wait_for(lambda: client.get(started["id"])["phase"] == "progressing", 120, "the canary to progress")
    cancelled = _cli(setup, "deployment-engine", "--cancel", "--deployment-id", started["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip().splitlines()[-1].startswith(f"{started['id']}: cancelled")
    view = client.get(started["id"])  # already ended when the command returned
    assert view["phase"] == "cancelled" and view["weights"] == {"v1.2.0": 100}
    assert SERVICE in view["service"]
