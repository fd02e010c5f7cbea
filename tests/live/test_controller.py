"""The controller daemon end to end: a real server process, real service processes, real HTTP.

A load generator (its own thread and event loop, asked for 100 req/s) hits the route port
throughout, so the assertions are on what users saw: the phases, the rollback row, how many
requests were sent in a window and how many of them failed. Never on rates or durations.

Cleanup, even on failure: the controller is stopped (SIGTERM, then SIGKILL), then every service
PID the ledger ever recorded is SIGKILLed, and as a backstop every process that carries this
test's marker in its environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from livekit import (
    ENV,
    MIN_REQUESTS,
    REPO,
    ROUTE,
    SERVICE,
    Controller,
    Load,
    Setup,
    alive,
    deploy,
    versions_in_ledger,
    wait_final,
    wait_for,
)

from safeship.api.client import ControllerClient
from safeship.errors import ConflictError, ControllerUnreachable, InputError, NotFoundError

pytestmark = [pytest.mark.live, pytest.mark.slow]

# ---------------------------------------------------------------- tests


def test_canary_rolls_back_a_bad_release_and_ships_a_good_one(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    with Load(port) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]
        assert versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"]

        bad = deploy(client, "v1.3.0")
        assert bad["from_version"] == "v1.2.0"
        with pytest.raises(ConflictError, match="already has deployment"):
            deploy(client, "v1.4.0")
        second, phases = wait_final(client, bad["id"])
        assert second["phase"] == "rolled_back", second["reason"]
        assert "rolling_back" in phases
        rows = client.rollbacks(SERVICE)
        assert [(r["deployment_id"], r["from_version"], r["to_version"]) for r in rows] == [
            (bad["id"], "v1.3.0", "v1.2.0")
        ]
        assert rows[0]["automatic"] is True and rows[0]["success"] is True
        assert "error rate" in rows[0]["reason"] and rows[0]["evidence"]  # what fired, with the numbers
        wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 60, "v1.3.0 to stop")

        started = time.time()
        good = deploy(client, "v1.4.0")
        third, phases = wait_final(client, good["id"])
        ended = time.time()
        assert third["phase"] == "succeeded", third["reason"]
        assert {"progressing", "monitoring"} <= set(phases)
        load.none_failed(started, ended, f"the v1.4.0 canary ({phases})")
        assert third["metrics"]["v1.4.0"]["requests"] > 0
        assert third["metrics"]["v1.3.0"]["error_rate"] > 0.02

    wait_for(lambda: versions_in_ledger(setup) == ["v1.4.0", "v1.4.0"], 60, "v1.2.0 to stop")
    history = client.history(SERVICE)
    assert [d["version"] for d in history["deployments"]] == ["v1.4.0", "v1.3.0", "v1.2.0"]
    assert len(history["rollbacks"]) == 1
    [environment] = client.environments()
    assert environment["services"][0]["current_version"] == "v1.4.0"
    assert environment["services"][0]["port"] == port


def test_a_controller_killed_mid_deployment_adopts_its_instances_and_finishes(
    setup: Setup, controller: Controller
) -> None:
    client = ControllerClient(setup.state_dir)
    port = client.routes()[ROUTE]
    with Load(port) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]
        candidate = deploy(client, "v1.4.0")
        wait_for(lambda: client.get(candidate["id"])["weights"].get("v1.4.0", 0) > 0, 120, "canary traffic")
        before = setup.pids()
        assert sorted(before) == [f"{ENV}/{SERVICE}/v1.2.0-0", f"{ENV}/{SERVICE}/v1.2.0-1", f"{ENV}/{SERVICE}/v1.4.0-0"]

        killed_at = time.time()
        controller.kill9()
        assert all(alive(pid) for pid in before.values())
        with pytest.raises(ControllerUnreachable):
            client.get(candidate["id"])
        controller.start()
        back_at = time.time()
        assert client.routes()[ROUTE] == port  # the same port: clients reconnect where they were
        after = setup.pids()
        assert {k: after[k] for k in before if k in after} == before  # adopted, not restarted

        final, phases = wait_final(client, candidate["id"])
        assert "progressing" in phases or "monitoring" in phases
        assert final["phase"] == "succeeded", final["reason"]
        # The routes live in the router daemon: a dead controller is no outage.
        load.none_failed(killed_at, back_at, "the controller's absence (kill -9 to restart)")
        load.none_failed(back_at, time.time(), "the rest of the canary after the restart")
    wait_for(lambda: versions_in_ledger(setup) == ["v1.4.0", "v1.4.0"], 60, "v1.2.0 to stop")
    assert before[f"{ENV}/{SERVICE}/v1.4.0-0"] == setup.pids()[f"{ENV}/{SERVICE}/v1.4.0-0"]
    for instance, pid in before.items():
        if "v1.2.0" in instance:
            wait_for(lambda pid=pid: not alive(pid), 60, f"{instance} to exit")


def test_the_api_needs_the_token_and_answers_bad_input_in_one_sentence(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    base = client.base_url()
    assert (setup.state_dir / "token").stat().st_mode & 0o777 == 0o600
    assert httpx.get(base + "/deployments").status_code == 401
    wrong = httpx.get(base + "/deployments", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(base + "/healthz").status_code == 200
    metrics = httpx.get(base + "/metrics")
    assert metrics.status_code == 200 and "safeship_unrouted_requests_total" in metrics.text

    headers = {"Authorization": f"Bearer {client.token()}"}
    missing = httpx.post(base + "/deployments", json={"service_name": SERVICE}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["detail"] == "request body: version: required field is missing"
    not_json = httpx.post(base + "/deployments", content=b"{", headers=headers)
    assert not_json.status_code == 422
    unknown = httpx.post(
        base + "/deployments", json={"service_name": "nope", "version": "v1", "environment": ENV}, headers=headers
    )
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    with pytest.raises(InputError, match="unknown policy 'nope'"):
        deploy(client, "v1.2.0", policy="nope")
    with pytest.raises(NotFoundError):
        client.get("deploy-missing")
    assert client.list(service=SERVICE) == []

    assert client.stop()
    assert client.info() is None
    assert not client.is_running()
    with pytest.raises(ControllerUnreachable):
        client.list()

    try:  # the CLI's path: start a detached controller when none answers
        assert client.ensure_running(setup.config)
        assert not client.ensure_running(setup.config)
        assert client.environments()[0]["name"] == ENV
    finally:
        info = client.info()
        assert client.stop()
        if info is not None and alive(int(info["pid"])):
            os.kill(int(info["pid"]), signal.SIGKILL)


def test_instances_that_die_or_never_get_ready_get_no_traffic(setup: Setup, controller: Controller) -> None:
    client = ControllerClient(setup.state_dir)
    with Load(client.routes()[ROUTE]) as load:
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        assert first["phase"] == "succeeded", first["reason"]

        victim_id = f"{ENV}/{SERVICE}/v1.2.0-0"
        victim = setup.pids()[victim_id]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)

        def restarted_and_ready() -> bool:
            record = next((r for r in setup.ledger() if r["id"] == victim_id), None)
            return record is not None and record.get("pid") not in (None, victim) and record["state"] == "ready"

        wait_for(restarted_and_ready, 120, "the platform to restart it and probe it ready")
        wait_for(lambda: load.window(killed_at, time.time())[0] >= MIN_REQUESTS, 120, "traffic since the kill")
        # Requests sent to the dead instance were retried on the other one; only requests cut
        # mid-response can fail, and at this load at most one or two are in flight on an instance.
        total, failed = load.window(killed_at, time.time())
        print(f"\nkill -9 of one v1.2.0 instance: {failed} of {total} requests failed")
        assert total >= MIN_REQUESTS and failed <= 2
        # Once the restarted instance is ready, no request reaches a dead one any more.
        def dead_hits() -> int:
            return int(client.get(first["id"])["metrics"]["v1.2.0"]["connect_failures"])

        settled_at, hits = time.time(), dead_hits()
        wait_for(lambda: load.window(settled_at, time.time())[0] >= 2 * MIN_REQUESTS, 120, "more traffic")
        load.none_failed(settled_at, time.time(), "traffic after the restart")
        assert dead_hits() == hits, "requests still reached a dead instance after the restart was ready"

        started = time.time()
        cli = [str(Path(sys.executable).parent / "deployment-engine"), "--deploy", "--service", SERVICE,
               "--version", "v1.5.0", "--environment", ENV, "--strategy", "canary",
               "--config", str(setup.config), "--json"]  # fmt: skip
        ran = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert ran.returncode == 1, ran.stderr  # exit 1: the deployment was rolled back
        final = json.loads(ran.stdout)
        assert final["phase"] == "rolled_back"
        assert final["evidence"]["trigger"] == "health_check_failure"
        load.none_failed(started, time.time(), f"v1.5.0 (never ready): {final['phase']} ({final['reason']})")
    wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 60, "v1.5.0 to stop")
    info = client.info()
    assert info is not None and controller.process is not None
    assert info["pid"] == controller.process.pid  # the CLI used the running controller
