"""A canary over TLS: real controller, real service processes on the local platform, the route's
listener terminating TLS (the builtin router's daemon, as users run it, or HAProxy), clients that
trust only the test CA. The bad release v1.3.0 is rolled back, and no request the good
version served failed, nor did any request fail for want of an answer (a dropped TLS connection).

The bad release fails 30% of its requests here (a releases file of the test's own), so that what
is under test is TLS carrying the canary, not how thin evidence the judge acts on."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from haproxykit import needs_haproxy
from livekit import ENV, ROUTE, SERVICE, Load, controller_with, deploy, wait_final
from tlskit import client_context, make_pki

from safeship.api.client import ControllerClient
from safeship.loadgen import Outcome
from safeship.routing.haproxy import stop_haproxy

pytestmark = [pytest.mark.live, pytest.mark.slow]


class TlsLoad(Load):
    """The live tests' bounded open-loop load, over https to 127.0.0.1 (verified against the CA)."""

    def __init__(self, port: int, ca: Path, *, rate: float = 100.0) -> None:
        super().__init__(port, rate=rate, max_s=300.0, tls=client_context(ca))


def on_haproxy(text: str) -> str:
    """`router: haproxy`, with liveness that a busy shared host does not fail (as in
    test_haproxy_controller.py)."""
    edited = text.replace("platform: local}", "platform: local, router: haproxy}")
    edited = edited.replace("interval: 0.5s, timeout: 1s, failure_threshold: 3", "interval: 0.5s, timeout: 3s, "
                            "failure_threshold: 3")
    assert edited.count("router: haproxy") == 1 and "timeout: 3s" in edited
    return edited


@pytest.mark.parametrize("router", ["builtin", pytest.param("haproxy", marks=needs_haproxy)])
def test_a_canary_over_tls_rolls_back_a_bad_release_and_the_good_version_fails_nothing(
        tmp_path: Path, router: str) -> None:
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.issue("route")
    releases = tmp_path / "releases.yaml"
    releases.write_text("releases:\n  v1.2.0: {}\n  v1.3.0: {error_rate: 0.3}\n")

    def with_tls(text: str) -> str:
        line = f"    ports: {{{ENV}: 0}}"
        assert line in text
        text = text.replace(line, f'{line}\n    listen: {{{ENV}: "127.0.0.1"}}\n'
                                  f"    tls: {{{ENV}: {{cert_file: {cert}, key_file: {key}}}}}")
        command = '--version, "{version}"]'
        assert command in text
        text = text.replace(command, f'--version, "{{version}}", --releases, "{releases}"]')
        return on_haproxy(text) if router == "haproxy" else text

    try:
        run_canary(tmp_path, with_tls, pki.ca)
    finally:
        stop_haproxy(tmp_path / "state")  # HAProxy outlives the controller, as the router daemon does


def run_canary(tmp_path: Path, edit: Callable[[str], str], ca: Path) -> None:
    with controller_with(tmp_path, edit) as setup:
        client = ControllerClient(setup.state_dir)
        t0 = time.time()
        first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
        print(f"\nfirst deploy {time.time() - t0:.1f}s")
        assert first["phase"] == "succeeded", first["reason"]
        port = client.routes()[ROUTE]
        with TlsLoad(port, ca) as load:
            time.sleep(1.0)  # traffic flows before the deployment starts
            started = time.time()
            bad, phases = wait_final(client, deploy(client, "v1.3.0")["id"])
            ended = time.time()
            print(f"bad deploy {ended - started:.1f}s")
            time.sleep(1.0)  # and after the rollback
        outcomes: list[Outcome] = list(load.outcomes)
        during = [o for o in outcomes if started <= o.sent_at <= ended]
        by_version = Counter((o.version, o.status is not None and o.status < 500) for o in during)
        print(f"\nrequests during the canary over TLS (version, ok): {dict(by_version)}; {bad['phase']} "
              f"({bad['reason']}); metrics {bad.get('metrics')}")
        assert bad["phase"] == "rolled_back", bad["reason"]
        assert "rolling_back" in phases
        [row] = client.rollbacks(SERVICE)
        assert (row["from_version"], row["to_version"], row["automatic"]) == ("v1.3.0", "v1.2.0", True)
        assert by_version[("v1.2.0", True)] >= 20  # enough requests to judge
        assert by_version[("v1.2.0", False)] == 0  # the good version failed nothing
        assert sum(1 for o in outcomes if o.status is None) == 0  # no request lost a connection or handshake
        assert by_version[("v1.3.0", True)] + by_version[("v1.3.0", False)] > 0  # the canary did get traffic
        assert all(o.version == "v1.2.0" and o.status == 200 for o in outcomes if o.sent_at > ended + 0.5)
