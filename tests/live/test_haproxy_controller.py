"""A real controller with `router: haproxy`: the example service behind a real HAProxy, open-loop
load on HAProxy's port, a bad release rolled back from HAProxy's `show stat` counters.

Asserts on what a user sees: phases, the rollback's reason, requests that failed. HAProxy outlives
the controller (as the router daemon does), so it is stopped here by its recorded PID."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from haproxykit import needs_haproxy
from livekit import ROUTE, SERVICE, Load, controller_with, deploy, versions_in_ledger, wait_final, wait_for

from safeship.api.client import ControllerClient
from safeship.routing.haproxy import haproxy_pid, stop_haproxy

pytestmark = [pytest.mark.live, pytest.mark.timeout(600), needs_haproxy]


def on_haproxy(text: str) -> str:
    """The live config with `router: haproxy`, and canary steps (20 s) long enough for the error counts
    alone to show an 8% failure rate: `show stat` has no latency histograms, so the analysis has
    the failures and no latency evidence (the log reader adds that)."""
    edited = text.replace("platform: local}", "platform: local, router: haproxy}")
    edited = edited.replace("step_duration: 3s", "step_duration: 20s")
    # Liveness may take 3 s on a shared 2-core host (1 s killed a healthy v1.2.0 at load average 7).
    edited = edited.replace("interval: 0.5s, timeout: 1s, failure_threshold: 3", "interval: 0.5s, timeout: 3s, "
                            "failure_threshold: 3")
    assert edited.count("router: haproxy") == 1 and "step_duration: 20s" in edited and "timeout: 3s" in edited
    return edited


def test_a_bad_release_is_rolled_back_on_haproxy_counters(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    try:
        with controller_with(tmp_path, on_haproxy) as setup:
            client = ControllerClient(setup.state_dir)
            port = client.routes()[ROUTE]
            master = haproxy_pid(setup.state_dir)
            assert master is not None, "the controller did not start haproxy"
            with Load(port, rate=150) as load:
                first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
                assert first["phase"] == "succeeded", first["reason"]

                bad = deploy(client, "v1.3.0")
                second, phases = wait_final(client, bad["id"])
                print(f"\nv1.3.0: {second['phase']} ({second['reason']}); metrics {second.get('metrics')}")
                assert second["phase"] == "rolled_back", second["reason"]
                assert "rolling_back" in phases
                [row] = client.rollbacks(SERVICE)
                assert row["automatic"] is True and "error rate" in row["reason"]
                wait_for(lambda: versions_in_ledger(setup) == ["v1.2.0", "v1.2.0"], 60, "v1.3.0 to stop")

                started = time.time()
                good = deploy(client, "v1.4.0")
                third, phases = wait_final(client, good["id"])
                ended = time.time()
                assert third["phase"] == "succeeded", third["reason"]
                load.none_failed(started, ended, f"the v1.4.0 canary through haproxy ({phases})")
                assert third["metrics"]["v1.4.0"]["requests"] > 0
            assert haproxy_pid(setup.state_dir) == master  # one haproxy throughout, reloaded, never a second
    finally:
        stop_haproxy(state_dir)


def test_recreate_on_haproxy_fails_no_request(tmp_path: Path) -> None:
    """HAProxy holds the recreate gap (its gap server's refused connections are retried until the
    new version has weight): a healthy recreate under load fails no request, every request after
    the switch is the new version's, and the step says the router holds."""
    state_dir = tmp_path / "state"
    try:
        with controller_with(tmp_path, on_haproxy) as setup:
            client = ControllerClient(setup.state_dir)
            port = client.routes()[ROUTE]
            first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
            assert first["phase"] == "succeeded", first["reason"]
            with Load(port, rate=100) as load:
                time.sleep(1.0)
                started = time.time()
                second, _ = wait_final(client, deploy(client, "v1.4.0", deployment_strategy="recreate")["id"])
                ended = time.time()
                time.sleep(1.0)
            assert second["phase"] == "succeeded", second["reason"]
            kinds = [e["kind"] for e in second["events"]]
            assert "hold" in kinds and "hold_unsupported" not in kinds
            load.none_failed(started, ended + 1.0, "a recreate deployment through haproxy")
            after = [o for o in load.outcomes if o.sent_at > ended and o.status is not None]
            assert after and {o.version for o in after} == {"v1.4.0"}
            wait_for(lambda: versions_in_ledger(setup) == ["v1.4.0", "v1.4.0"], 60, "v1.2.0 to stop")
    finally:
        stop_haproxy(state_dir)
