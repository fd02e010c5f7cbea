"""Faults a killed controller does not cover: a health probe that hangs, Prometheus down for longer
than a step, an instance that ignores SIGTERM, and a bad recreate right after a controller start
(no record of the replaced version to judge it against).

Each test runs a real controller on the local platform (faultkit's `Chain`) with open-loop load on
the route port; the faulty releases are the example service run by `faultservice.py`. Longer
variants run with SAFESHIP_FAULTS_FULL=1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faultkit import (
    ROUTE,
    VERSIONS,
    Chain,
    Fault,
    Outcome,
    chain,
    events_of,
    replaced,
    then,
    with_faults,
)
from livekit import ENV, FINAL, SERVICE, _marked, alive, wait_final, wait_for

from safeship.analysis.probes import probe
from safeship.api.client import ControllerClient
from safeship.platforms.base import ProbeSpec
from safeship.store import Store

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]
FULL = os.environ.get("SAFESHIP_FAULTS_FULL") == "1"
OTHER = "other-service"


def full_only(*values: Any) -> Any:
    return pytest.param(*values, marks=pytest.mark.skipif(not FULL, reason="SAFESHIP_FAULTS_FULL=1 runs it"))


def deploy_to(client: ControllerClient, service: str, version: str, strategy: str) -> str:
    body = {"service_name": service, "version": version, "environment": ENV, "deployment_strategy": strategy}
    return str(client.deploy(body)["id"])


def rows(made: Chain, service: str) -> list[dict[str, Any]]:
    return [r for r in made.setup.ledger() if r["service"] == service]


def no_orphans(made: Chain) -> list[int]:
    """Processes carrying the test's marker that the ledger does not hold (the service's own
    children included: they carry the marker too)."""
    pids = {int(r["pid"]) for r in made.setup.ledger() if r.get("pid")}
    return sorted(p for p in _marked(made.setup.mark) if alive(p) and p not in pids)


def with_other_service(text: str) -> str:
    """A second service in the same environment: the plain example, one replica."""
    mark = re.search(r'SAFESHIP_TEST_MARK: "(\w+)"', text)
    assert mark is not None
    other = (f"  {OTHER}:\n    replicas: 1\n"
             '    command: [python, -m, examples.user_service, --port, "{port}", --version, "{version}"]\n'
             f"    versions: [v1.2.0, v1.4.0]\n    grace_period: 2s\n    ports: {{{ENV}: 0}}\n"
             f'    env: {{SAFESHIP_TEST_MARK: "{mark.group(1)}"}}\n')
    return text.replace("notifications:\n", other + "notifications:\n", 1)


# ---------------------------------------------------------------- 1. a probe that hangs


async def test_a_body_dripped_forever_fails_the_http_probe_at_its_timeout() -> None:
    """In-process: the status line and headers come at once, the body one byte every 0.2 s. The
    probe reads the body (up to its bound) within its timeout, so this is a failure, not a 200."""
    handlers: set[asyncio.Task[None]] = set()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunked: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 100000"
            writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + (b"186a0\r\n" if chunked else b""))
            for _ in range(100):
                writer.write(b".")
                await writer.drain()
                await asyncio.sleep(0.2)

    for chunked in (False, True):
        server = await asyncio.start_server(lambda r, w, c=chunked: drip(r, w, c), "127.0.0.1", 0)  # type: ignore[misc]
        try:
            port = server.sockets[0].getsockname()[1]
            result = await probe(ProbeSpec(kind="http", path="/health/ready", timeout=0.6),
                                 host="127.0.0.1", port=port)
        finally:
            server.close()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        assert not result.ok, (chunked, result)
        assert result.detail == "timed out after 0.6s"


@pytest.mark.parametrize("fault", ["hang", full_only("drip")])
def test_a_readiness_probe_that_hangs_fails_the_release_and_blocks_nothing_else(tmp_path: Path, fault: str) -> None:
    """The candidate's /health/ready accepts the connection and never answers (or answers the
    headers and drips the body). Each probe fails at its 4 s timeout; meanwhile the API answers
    /healthz and a second service's deployment, which runs at the same time, is read and ends
    succeeded. The candidate never gets traffic, is never promoted, and its deployment ends with
    a sentence naming the probe and its timeout; nothing of it is left running."""
    bad = VERSIONS[1]
    edit = then(with_faults(tmp_path, {bad: {fault: "/health/ready"}}), with_other_service,
                replaced("interval: 0.25s, timeout: 1s, failure_threshold: 2",
                         "interval: 0.25s, timeout: 4s, failure_threshold: 2"),
                replaced("{type: health_check_failure, timeout: 10s}", "{type: health_check_failure, timeout: 6s}"))
    with chain(tmp_path, "builtin", edit=edit) as made:
        client = made.client
        assert made._take_version() == bad
        started = time.time()
        asked = deploy_to(client, SERVICE, bad, "canary")
        other = deploy_to(client, OTHER, "v1.4.0", "recreate")  # its first release, alongside
        log = made.setup.state_dir / "logs" / ENV / SERVICE / f"{bad}-0.log"
        wait_for(lambda: log.exists() and "listening" in log.read_text(), 60, f"{bad} to start")
        # While its probes hang: the API and the other deployment answer, each within 3 s (a
        # probe that blocked the controller would hold them for its 4 s timeout).
        quick = ControllerClient(made.setup.state_dir, timeout=3.0)
        seen: set[str] = set()
        for _ in range(12):
            answer = httpx.get(f"{quick.base_url()}/healthz", timeout=3.0)
            assert answer.status_code == 200 and answer.json()["ok"] is True
            seen.add(quick.get(other)["phase"])
            if quick.get(asked)["phase"] in FINAL:
                break
            time.sleep(0.5)
        final, _ = wait_final(client, asked, timeout=120)
        ended = time.time()
        other_final, _ = wait_final(client, other, timeout=120)
        print(f"\n{fault}: {final['phase']}: {final['reason']}; {OTHER}: phases seen {sorted(seen)}, "
              f"{other_final['phase']}")
        assert final["phase"] in ("rolled_back", "failed"), final["reason"]
        assert f"readiness probe GET /health/ready (timeout 4s): timed out after 4s" in final["reason"]
        kinds = [kind for kind, _ in events_of(made.setup, asked)]
        assert "promoted" not in kinds
        assert other_final["phase"] == "succeeded", other_final["reason"]
        assert made.load is not None
        requests, failed = made.load.window(started, ended)  # type: ignore[arg-type]
        answered = {o.version for o in list(made.load.outcomes) if started <= o.sent_at <= ended}
        print(f"{failed} of {requests} requests failed; answered by {sorted(map(str, answered))}")
        assert requests > 0 and failed == 0
        assert answered == {VERSIONS[0]}  # never a request to the candidate
        wait_for(lambda: sorted(r["version"] for r in rows(made, SERVICE)) == [VERSIONS[0]] * 2, 30,
                 "the candidate's instances to be gone")
        assert [r["version"] for r in rows(made, OTHER)] == ["v1.4.0"]
        assert no_orphans(made) == []


# ---------------------------------------------------------------- 3. an instance that ignores SIGTERM


def stubborn_children(made: Chain, version: str) -> list[int]:
    """The PIDs of the SIGTERM-ignoring children the version's instances said they started."""
    folder = made.setup.state_dir / "logs" / ENV / SERVICE
    found = []
    for log in folder.glob(f"{version}-*.log"):
        found += [int(pid) for pid in re.findall(r"child (\d+) ignores it too", log.read_text())]
    return found


def sigkilled(made: Chain, version: str) -> list[str]:
    """The lines of the version's instance logs saying the platform SIGKILLed the process."""
    folder = made.setup.state_dir / "logs" / ENV / SERVICE
    return [line for log in sorted(folder.glob(f"{version}-*.log")) for line in log.read_text().splitlines()
            if "killed by signal 9 (SIGKILL)" in line]


def bad_version_only(made: Chain, outcome: Outcome, bad: str, started: float, ended: float) -> None:
    """A bad release fails requests while it serves: take those out of faultkit's traffic check and
    require instead that every failed request was the bad version's answer."""
    assert made.load is not None
    inside = [o for o in list(made.load.outcomes) if started <= o.sent_at <= ended]
    failed = [o for o in inside if o.status is None or o.status >= 500]
    assert failed, "the bad release failed no request: the test did not test it"
    assert {o.version for o in failed} == {bad}, sorted(map(str, {o.version for o in failed}))
    outcome.violations[:] = [v for v in outcome.violations if not v.endswith(f"of {outcome.requests} requests failed")]


@pytest.mark.parametrize("cases", [full_only(("rollout", "rollback"))])
def test_an_instance_that_ignores_sigterm_is_sigkilled_after_its_grace_period(
        tmp_path: Path, cases: tuple[str, ...]) -> None:
    """The service ignores SIGTERM, and so does a child it starts. Rollout: the replaced version's
    instances ignore it; rollback: the bad candidate's do (it fails 30% of requests). Either way
    the deployment ends as it should (succeeded; rolled back), the stubborn processes are SIGKILLed
    once the 2 s grace period is over (their logs say so), and no process is left over: faultkit's
    invariants (ledger, orphans, store rows, notifications, traffic) hold. (Without
    SAFESHIP_FAULTS_FULL the rollback case runs inside the recreate test below.)"""
    base = VERSIONS[0]
    good, bad = VERSIONS[1], VERSIONS[2]
    faults = {bad: {"ignore_sigterm": True, "error_rate": 0.3}}
    if "rollout" in cases:
        faults[base] = {"ignore_sigterm": True}
    with chain(tmp_path, "builtin", edit=with_faults(tmp_path, faults), rate=60.0) as made:
        for case in cases:
            version = made._take_version() if case == "rollout" else bad
            if case == "rollback" and made.taken < 2:
                made.taken = 3  # the bad one is VERSIONS[2]
            replaced_version = made.current
            started = time.time()
            asked = deploy_to(made.client, SERVICE, version, "canary")
            final, _ = wait_final(made.client, asked, timeout=180)
            ended = time.time()
            outcome = Outcome(Fault("canary", boundary=f"SIGTERM ignored ({case})"), "builtin", asked,
                              final["phase"])
            assert made.load is not None
            outcome.requests, outcome.failed = made.load.window(started, ended)  # type: ignore[arg-type]
            serving = version if final["phase"] == "succeeded" else made.current
            made.check(outcome, final, serving, started, ended)
            if case == "rollback":
                bad_version_only(made, outcome, bad, started, ended)
            made.current = serving
            stopped = replaced_version if case == "rollout" else bad
            children = stubborn_children(made, stopped)
            killed = sigkilled(made, stopped)
            print(f"\n{outcome.row()}\n{stopped}: {len(killed)} SIGKILLs logged, stubborn children {children}")
            assert final["phase"] == ("succeeded" if case == "rollout" else "rolled_back"), final["reason"]
            assert not outcome.violations, outcome.violations
            assert children and not any(alive(pid) for pid in children)
            assert len(killed) == len(children), killed  # each instance: SIGTERM ignored, SIGKILL after the grace


# ---------------------------------------------------------------- 4. a bad recreate with no record


RECREATE_RUNS = int(os.environ.get("SAFESHIP_FAULTS_RUNS") or (5 if FULL else 1))
RECREATE_RATE = 100.0


def timeline(made: Chain, deployment_id: str) -> str:
    """The deployment's events, one line each, seconds from its first (for a report)."""
    store = Store(f"sqlite:///{made.setup.state_dir}/state.db")
    try:
        events = store.events(deployment_id)
    finally:
        store.close()
    start = events[0].at if events else 0.0
    return "\n".join(f"  {e.at - start:6.1f}s {e.kind}: {e.message[:220]}" for e in events)


@pytest.mark.parametrize("router", ["builtin", full_only("haproxy")])
def test_a_bad_recreate_right_after_a_controller_start_is_rolled_back(tmp_path: Path, router: str) -> None:
    """The controller is SIGKILLed and started again, so it has no record of the replaced
    version's traffic (its reads of the router start over), and at once a recreate deployment
    ships a release that fails 8% of requests, under the rule "5% for 2 s". With nothing to
    compare it with but that rule, the release must not be promoted on thin evidence: it is
    rolled back (fail safe). Every failed request is the bad version's; faultkit's other
    invariants hold. The bad release also ignores SIGTERM (and starts a child that does): the
    rollback SIGKILLs its processes after the grace period and leaves none behind.
    With SAFESHIP_FAULTS_FULL=1: 5 runs per router, each after a fresh kill."""
    if router == "haproxy":
        from haproxykit import needs_haproxy  # noqa: F401  (skips without the binary)
        import shutil
        if shutil.which("haproxy") is None:
            pytest.skip("haproxy is not installed")
    bad = VERSIONS[1:1 + RECREATE_RUNS]
    edit = with_faults(tmp_path, {version: {"error_rate": 0.08, "ignore_sigterm": True} for version in bad})
    results: list[tuple[str, str, Outcome]] = []
    with chain(tmp_path, router, edit=edit, rate=RECREATE_RATE) as made:
        for run, version in enumerate(bad, 1):
            made.controllers[-1].kill9()
            made.start()  # a controller that has just started: no record of the replaced version
            assert made._take_version() == version
            started = time.time()
            asked = deploy_to(made.client, SERVICE, version, "recreate")
            final, _ = wait_final(made.client, asked, timeout=180)
            ended = time.time()
            outcome = Outcome(Fault("recreate", boundary=f"no record, run {run}"), router, asked, final["phase"])
            assert made.load is not None
            outcome.requests, outcome.failed = made.load.window(started, ended)  # type: ignore[arg-type]
            serving = version if final["phase"] == "succeeded" else made.current
            made.check(outcome, final, serving, started, ended)
            bad_version_only(made, outcome, version, started, ended)
            made.current = serving
            results.append((final["phase"], str(final["reason"]), outcome))
            print(f"\nrun {run}: {outcome.row()} {final['reason']}")
            if final["phase"] != "rolled_back":
                print(timeline(made, asked))
            else:  # its instances ignored SIGTERM: SIGKILLed after the grace period, children too
                children = stubborn_children(made, version)
                assert children and not any(alive(pid) for pid in children), children
                assert len(sigkilled(made, version)) == len(children), sigkilled(made, version)
    rolled_back = sum(1 for phase, _, _ in results if phase == "rolled_back")
    print(f"\n{router}: rolled back in {rolled_back} of {len(results)} runs")
    assert rolled_back == len(results), [(p, r) for p, r, _ in results]
    assert all(not o.violations for _, _, o in results), [o.violations for _, _, o in results]
