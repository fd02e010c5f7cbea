"""Config reloads and controller restarts without an outage, end to end: a real controller process,
the real router daemon (or a real HAProxy), real service processes, the real commands, and a bounded
open-loop load (100 req/s asked, loopback only) on the route throughout.

Asserts on what a user sees: the commands' exit codes and sentences, the routes and their ports in
routes.json, the events the controller recorded, the PIDs that kept serving, and how many requests
were sent and failed while it happened (0). Never on a rate or a duration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from haproxykit import needs_haproxy
from livekit import (
    ENV,
    REPO,
    ROUTE,
    SERVICE,
    Controller,
    Load,
    Setup,
    controller_with,
    deploy,
    wait_final,
    wait_for,
)

from safeship.api.client import ControllerClient
from safeship.errors import InputError
from safeship.routing.haproxy import haproxy_pid, stop_haproxy
from safeship.store import Store

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(400)]

EDGE = "edge"


def run(*argv: str, config: Path) -> subprocess.CompletedProcess[str]:
    """A safeship command as a user runs it: the console script installed beside this Python."""
    program, *rest = argv
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([str(Path(sys.executable).parent / program), *rest, "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def with_edge(text: str) -> str:
    """The config with a second environment, `edge`, whose route takes any free port."""
    edited = text.replace("platform: local}\n", f"platform: local}}\n    - {{name: {EDGE}, type: staging, "
                          "platform: local}\n", 1)
    edited = edited.replace(f"ports: {{{ENV}: 0}}", f"ports: {{{ENV}: 0, {EDGE}: 0}}")
    assert f"name: {EDGE}" in edited and f"{EDGE}: 0}}" in edited
    return edited


def controller_events(setup: Setup, kind: str) -> list[str]:
    store = Store(f"sqlite:///{setup.state_dir}/state.db")
    try:
        return [e.message for e in store.events("controller") if e.kind == kind]
    finally:
        store.close()


def router_daemon_pid(setup: Setup) -> int:
    return int(json.loads((setup.state_dir / "router.json").read_text())["pid"])


def test_a_deploy_to_a_new_environment_reloads_the_config_and_server_reload_adds_routes(
    setup: Setup, controller: Controller
) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert first["phase"] == "succeeded", first["reason"]
    assert controller.process is not None
    pid = controller.process.pid
    with Load(port) as load:
        began = time.time()
        # The case: `edge` is added while the controller runs; the deploy names it.
        setup.config.write_text(with_edge(setup.config.read_text()))
        done = run("deployment-engine", "--deploy", "--service", SERVICE, "--version", "v1.2.0", "--environment",
                   EDGE, "-v", config=setup.config)
        assert done.returncode == 0, done.stdout + done.stderr
        deployment_id = re.findall(r"deploy-[0-9a-f]+", done.stdout)[0]
        final = client.get(deployment_id)
        assert final["phase"] == "succeeded", final["reason"]
        # -v streamed the controller's events for this deployment, each once, in the order it recorded them
        streamed = re.findall(rf"INFO safeship\.events: \S+ \S+ UTC {deployment_id} (\w+): ", done.stderr)
        assert streamed == [e["kind"] for e in final["events"]][: len(streamed)], done.stderr[-3000:]
        assert {"created", "promoted"} <= set(streamed)
        routes = client.routes()
        assert routes[ROUTE] == port  # the running route kept its port
        edge_port = routes[f"{EDGE}/{SERVICE}"]
        assert edge_port != port
        answer = httpx.get(f"http://127.0.0.1:{edge_port}/users/1", timeout=5)
        assert answer.status_code == 200 and answer.headers["x-version"] == "v1.2.0"
        [reloaded] = controller_events(setup, "config_reloaded")
        assert f"environment {EDGE!r}" in reloaded and f"{EDGE}/{SERVICE} on {edge_port}" in reloaded

        # `safeship server --reload` with a harmless change: nothing moves, the command says what it did.
        setup.config.write_text(setup.config.read_text().replace("v1.5.0, v1.6.0]", "v1.5.0]"))
        done = run("safeship", "server", "--reload", config=setup.config)
        assert done.returncode == 0, done.stderr
        assert "config reloaded" in done.stdout and "0 new routes" in done.stdout
        assert client.routes() == routes
        assert controller.process.pid == pid and controller.process.poll() is None
        load.none_failed(began, time.time(), "a reload on a deploy to a new environment and `server --reload`")


def test_a_refused_reload_keeps_the_running_config_and_a_restart_keeps_the_router(
    setup: Setup, controller: Controller
) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert first["phase"] == "succeeded", first["reason"]
    good = setup.config.read_text()
    router = router_daemon_pid(setup)
    with Load(port) as load:
        began = time.time()
        # A config that does not validate: refused by the command, nothing is sent.
        setup.config.write_text(good.replace("type: production, platform: local}", "type: prod, platform: local}"))
        done = run("safeship", "server", "--reload", config=setup.config)
        assert done.returncode == 2, done.stdout + done.stderr
        assert str(setup.config) in done.stderr and "environment_management.environments" in done.stderr
        assert "'prod'" in done.stderr and "keeps running the config it loaded before" in done.stderr
        # the running controller was told too: it refused the file in its own events (and log)
        wait_for(lambda: len(controller_events(setup, "config_reload_refused")) == 1, 30, "the controller's refusal")
        assert "'prod'" in controller_events(setup, "config_reload_refused")[0]
        # A config that loads but changes what a reload cannot: refused by the controller, recorded.
        setup.config.write_text(good.replace("platform: local}", "platform: local, router: haproxy}"))
        done = run("safeship", "server", "--reload", config=setup.config)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "refused the reload" in done.stderr and "router: changed from 'builtin' to 'haproxy'" in done.stderr
        refused = controller_events(setup, "config_reload_refused")[-1]
        assert "config reload refused" in refused and "keeps running the config it loaded before" in refused
        assert "router: changed from 'builtin' to 'haproxy'" in refused
        # A request naming a new environment while the file is bad: one sentence, nothing started.
        setup.config.write_text(with_edge(good).replace("type: staging", "type: nope"))
        done = run("deployment-engine", "--deploy", "--service", SERVICE, "--version", "v1.4.0", "--environment",
                   EDGE, config=setup.config)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "'nope'" in done.stderr
        with pytest.raises(InputError, match=r"environment_management\.environments\[1\]\.type.*'nope'"):
            client.deploy({"service_name": SERVICE, "version": "v1.4.0", "environment": EDGE})
        assert len(controller_events(setup, "config_reload_refused")) == 3
        assert [e["name"] for e in client.environments()] == [ENV]
        assert client.routes() == {ROUTE: port}
        setup.config.write_text(good)

        # A restart (SIGTERM, start again): the new controller adopts the router daemon and its route.
        restarted_at = time.time()
        controller.stop()
        controller.start()
        assert router_daemon_pid(setup) == router
        assert client.routes()[ROUTE] == port
        assert client.environments()[0]["services"][0]["current_version"] == "v1.2.0"
        load.none_failed(began, restarted_at, "two refused reloads and a refused deploy")
        load.none_failed(restarted_at, time.time(), "a controller restart")


def on_haproxy(text: str) -> str:
    edited = text.replace("platform: local}", "platform: local, router: haproxy}")
    edited = edited.replace("interval: 0.5s, timeout: 1s, failure_threshold: 3",
                            "interval: 0.5s, timeout: 3s, failure_threshold: 3")
    assert edited.count("router: haproxy") == 1
    return edited


@needs_haproxy
def test_a_restart_and_a_reload_keep_haproxy_serving(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    try:
        with controller_with(tmp_path, on_haproxy) as setup:
            client = ControllerClient(setup.state_dir)
            port = client.routes()[ROUTE]
            first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
            assert first["phase"] == "succeeded", first["reason"]
            master = haproxy_pid(setup.state_dir)
            assert master is not None
            restarted = Controller(setup)
            try:
                with Load(port) as load:
                    began = time.time()
                    info = client.info()
                    assert info is not None
                    os.kill(int(info["pid"]), signal.SIGTERM)  # the controller the fixture started
                    wait_for(lambda: not client.is_running(), 30, "the controller to stop")
                    restarted.start()
                    assert haproxy_pid(setup.state_dir) == master  # adopted, not restarted
                    assert client.routes()[ROUTE] == port
                    done = run("safeship", "server", "--reload", config=setup.config)
                    assert done.returncode == 0, done.stderr
                    load.none_failed(began, time.time(), "a controller restart and a reload on haproxy")
            finally:
                restarted.stop()
    finally:
        stop_haproxy(state_dir)
