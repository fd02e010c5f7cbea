"""HAProxyRouter against a real haproxy and real upstream processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from haproxykit import (  # noqa: F401  (fixtures)
    Upstream,
    Upstreams,
    needs_haproxy,
    router_fixture,
    state_dir_fixture,
    upstreams_fixture,
)

from safeship.errors import InputError, PermanentError
from safeship.loadgen import LoadGenerator, failed
from safeship.routing import haproxy as haproxy_module
from safeship.routing.base import Backend, RouteKey, TrafficCounters
from safeship.routing.haproxy import HAProxyRouter, haproxy_pid, server_weights

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]

ROUTE = RouteKey(service="shop", environment="test")
OTHER = RouteKey(service="cart", environment="test")


def backend(upstream: Upstream, index: int) -> Backend:
    return Backend(f"test/shop/{upstream.version}-{index}", "127.0.0.1", upstream.port)


def send(port: int, n: int) -> list[int | None]:
    """`n` requests one after another; the status of each (None: no answer)."""
    statuses: list[int | None] = []
    with httpx.Client(timeout=10.0) as client:
        for i in range(n):
            try:
                statuses.append(client.get(f"http://127.0.0.1:{port}/users/{i}").status_code)
            except httpx.HTTPError:
                statuses.append(None)
    return statuses


def requests_of(counters: Mapping[str, TrafficCounters]) -> dict[str, int]:
    return {version: c.requests for version, c in counters.items()}


async def wait_up(router: HAProxyRouter, port: int) -> None:
    """Until one request through the route answers 200 (bounded)."""
    for _ in range(100):
        statuses = await asyncio.to_thread(send, port, 1)
        if statuses == [200]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the route never answered 200")


def test_weights_rounding() -> None:
    assert server_weights({"v1": 90, "v2": 10}, {"v1": ["a"], "v2": ["b"]}) == {"a": 256, "b": 28}
    assert server_weights({"v1": 90, "v2": 10}, {"v1": ["a", "c"], "v2": ["b"]}) == {"a": 256, "c": 256, "b": 57}
    assert server_weights({"v1": 100, "v2": 0}, {"v1": ["a"], "v2": ["b", "c"]}) == {"a": 256, "b": 0, "c": 0}
    assert server_weights({"v1": 99, "v2": 1}, {"v1": ["a"] * 1, "v2": [f"s{i}" for i in range(10)]})["s0"] == 1


def test_missing_binary_is_a_permanent_error_saying_how_to_install(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(haproxy_module, "haproxy_binary", lambda: None)
    with pytest.raises(PermanentError, match="apt-get install"):
        asyncio.run(HAProxyRouter(tmp_path).open())
    found, detail = haproxy_module.check_binary()
    assert not found and "apt-get install" in detail


@needs_haproxy
async def test_requests_in_the_recreate_gap_wait_for_the_new_version(router: HAProxyRouter,
                                                                     upstreams: Upstreams) -> None:
    """The recreate gap: the old server is deleted and its process stopped, requests keep coming,
    the new version's server arrives later. HAProxy holds them (the gap server's refused
    connections are retried) and every one is answered by the new version; none is unrouted."""
    assert router.abilities.hold is True and router.abilities.listens is True
    old = upstreams.start("v1")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(old, 0)])
    await router.set_weights(ROUTE, {"v1": 100})
    await wait_up(router, port)
    await router.hold(ROUTE, 30.0)
    await router.set_backends(ROUTE, "v1", [])
    old.stop()
    with LoadGenerator("127.0.0.1", port, rate=20, max_s=60) as load:
        await asyncio.sleep(1.0)  # requests arrive while no server exists
        new = await asyncio.to_thread(upstreams.start, "v2")
        await router.set_backends(ROUTE, "v2", [backend(new, 0)])  # weight 0 until the switch
        await asyncio.sleep(0.5)
        await router.set_weights(ROUTE, {"v2": 100})
        await asyncio.sleep(1.0)
    outcomes = load.outcomes
    in_gap = [o for o in outcomes if o.version == "v2"]
    assert len(outcomes) >= 20 and failed(outcomes) == 0, [o.status for o in outcomes]
    assert len(in_gap) == len(outcomes)
    snapshot = await router.routes_snapshot()
    assert snapshot.unrouted[ROUTE] == 0
    assert snapshot.counters[ROUTE]["v2"].requests >= len(outcomes)
    assert snapshot.counters[ROUTE]["v2"].failed == 0


@needs_haproxy
async def test_a_gap_longer_than_the_hold_is_answered_503_and_counted_unrouted(state_dir: Path) -> None:
    """recreate.max_wait bounds the hold: with 3 s, a request that finds no server for longer is
    answered 503 by HAProxy and counted as unrouted, not against a version."""
    from safeship.config.models import SafeshipConfig

    config = SafeshipConfig.model_validate({"intelligent_deployment": {"strategies": {"recreate": {"max_wait": "3s"}}}})
    router = HAProxyRouter(state_dir, config=config, close_grace=0.5)
    assert router.hold_retries(ROUTE) == 3
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    assert "retries 3" in router.config_path.read_text()
    assert await asyncio.to_thread(send, port, 2) == [503, 503]
    snapshot = await router.routes_snapshot()
    assert snapshot.unrouted[ROUTE] == 2 and snapshot.counters[ROUTE] == {}
    with pytest.raises(InputError):
        await router.hold(ROUTE, 0)


@needs_haproxy
async def test_canary_weights_show_in_show_stat_shares(router: HAProxyRouter, upstreams: Upstreams) -> None:
    stable = [upstreams.start("v1"), upstreams.start("v1")]
    canary = upstreams.start("v2")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None and port > 0
    assert await router.ensure_route(ROUTE, port=0) == port  # idempotent
    await router.set_backends(ROUTE, "v1", [backend(u, i) for i, u in enumerate(stable)])
    await router.set_backends(ROUTE, "v2", [backend(canary, 0)])
    await router.set_weights(ROUTE, {"v1": 90, "v2": 10})
    assert router.version_of(ROUTE, "v2-0") == "v2" and router.version_of(ROUTE, "v1-1") == "v1"
    await wait_up(router, port)
    before = requests_of(await router.counters(ROUTE))
    n = 1000
    statuses = await asyncio.to_thread(send, port, n)
    assert statuses.count(200) == n
    after = requests_of(await router.counters(ROUTE))
    got = {v: after.get(v, 0) - before.get(v, 0) for v in ("v1", "v2")}
    assert sum(got.values()) == n
    share, asked = got["v2"] / n, 0.10
    sd = math.sqrt(asked * (1 - asked) / n)
    assert abs(share - asked) <= 4 * sd, f"v2 got {share:.3f} of {n} requests, asked {asked}"
    assert all(c.errors == 0 and c.connect_failures == 0 for c in (await router.counters(ROUTE)).values())


@needs_haproxy
async def test_blue_green_switch_under_load_drops_nothing(router: HAProxyRouter, upstreams: Upstreams) -> None:
    blue, green = upstreams.start("v1"), upstreams.start("v2")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(blue, 0)])
    await router.set_backends(ROUTE, "v2", [backend(green, 0)])
    await router.set_weights(ROUTE, {"v1": 100, "v2": 0})
    await wait_up(router, port)
    with LoadGenerator("127.0.0.1", port, rate=200, max_s=60) as load:
        await asyncio.sleep(1.5)
        await router.set_weights(ROUTE, {"v1": 0, "v2": 100})
        await asyncio.sleep(1.5)
    outcomes = load.outcomes
    assert len(outcomes) >= 200
    assert failed(outcomes) == 0
    last = outcomes[-50:]
    assert {o.version for o in last} == {"v2"}
    counters = await router.counters(ROUTE)
    assert counters["v2"].requests > 0 and counters["v1"].requests > 0
    assert sum(c.failed for c in counters.values()) == 0


@needs_haproxy
async def test_leaving_instance_is_drained_and_no_request_fails(router: HAProxyRouter,
                                                                upstreams: Upstreams) -> None:
    first, second = upstreams.start("v1"), upstreams.start("v1")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(first, 0), backend(second, 1)])
    await router.set_weights(ROUTE, {"v1": 100})
    await wait_up(router, port)
    seen: list[int] = []
    with LoadGenerator("127.0.0.1", port, rate=200, max_s=60) as load:
        await asyncio.sleep(1.0)
        seen.append((await router.counters(ROUTE))["v1"].requests)
        drained_at = time.time()
        await router.set_backends(ROUTE, "v1", [backend(first, 0)])  # drains and deletes v1-1
        second.stop()  # the caller stops the instance only after the router drained it
        seen.append((await router.counters(ROUTE))["v1"].requests)
        await asyncio.sleep(1.0)
        seen.append((await router.counters(ROUTE))["v1"].requests)
    assert len(load.outcomes) >= 200
    bad = [(round(o.sent_at - drained_at, 3), o.status) for o in load.outcomes if o.status != 200]
    assert failed(load.outcomes) == 0, f"failed (seconds after the drain, status): {bad}"
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert router.version_of(ROUTE, "v1-1") == "v1"  # still known to the log reader after deletion


@needs_haproxy
async def test_reload_keeps_counters_monotonic_and_exact(router: HAProxyRouter, upstreams: Upstreams) -> None:
    v1 = upstreams.start("v1")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(v1, 0)])
    await router.set_weights(ROUTE, {"v1": 100})
    await wait_up(router, port)
    before = (await router.counters(ROUTE))["v1"].requests
    assert (await asyncio.to_thread(send, port, 50)).count(200) == 50
    master = haproxy_pid(router.state_dir)
    other = await router.ensure_route(OTHER, port=0)  # a new route: config rewrite and reload
    assert other is not None and other != port
    assert haproxy_pid(router.state_dir) == master  # the same master, a new worker
    middle = (await router.counters(ROUTE))["v1"].requests
    assert middle == before + 50
    assert (await asyncio.to_thread(send, port, 30)).count(200) == 30  # the route kept its server
    after = (await router.counters(ROUTE))["v1"].requests
    assert after == middle + 30
    await router.remove_route(OTHER)
    assert (await router.counters(ROUTE))["v1"].requests == after
    snapshot = await router.routes_snapshot()
    assert set(snapshot.counters) == {ROUTE}
    exporter = haproxy_module.exporter_address(router.state_dir)
    assert exporter is not None
    with httpx.Client(timeout=10.0) as client:
        metrics = client.get(f"http://{exporter}/metrics").text
    assert 'haproxy_server_http_responses_total{proxy="test__shop",server="v1-0",code="2xx"}' in metrics


@needs_haproxy
async def test_a_restarted_controller_reuses_the_running_haproxy(router: HAProxyRouter, state_dir: Path,
                                                                 upstreams: Upstreams) -> None:
    v1 = upstreams.start("v1")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(v1, 0)])
    await router.set_weights(ROUTE, {"v1": 100})
    await wait_up(router, port)
    master = haproxy_pid(state_dir)
    assert master is not None and router.started
    await router.close()  # HAProxy keeps serving
    assert (await asyncio.to_thread(send, port, 5)).count(200) == 5
    again = HAProxyRouter(state_dir)
    await again.open()
    assert not again.started and haproxy_pid(state_dir) == master
    assert await again.ensure_route(ROUTE, port=0) == port
    assert again.version_of(ROUTE, "v1-0") == "v1"
    counters = await again.counters(ROUTE)
    assert counters["v1"].requests >= 5
    assert os.path.exists(state_dir / "haproxy" / "haproxy.cfg")


@pytest.mark.parametrize("installed", [True, False])
def test_prepare_and_validate_check_for_haproxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                installed: bool) -> None:
    from safeship.config.models import SafeshipConfig
    from safeship.environments.manager import EnvironmentManager
    from safeship.store import Store

    if installed and haproxy_module.haproxy_binary() is None:
        pytest.skip("the haproxy binary is not installed (apt-get install haproxy)")
    if not installed:
        monkeypatch.setattr(haproxy_module, "haproxy_binary", lambda: None)
    config = SafeshipConfig.model_validate({
        "environment_management": {"environments": [
            {"name": "production", "type": "production", "platform": "local", "router": "haproxy"},
            {"name": "staging", "type": "staging", "platform": "local"},
        ]},
        "services": {"shop": {"replicas": 1, "command": ["python", "-m", "http.server", "{port}"]}},
    })
    state = tmp_path / ".safeship"
    state.mkdir()
    store = Store(f"sqlite:///{state / 'state.db'}")
    try:
        manager = EnvironmentManager(config, state_dir=state, root=tmp_path, store=store)
        for checks in (manager.validate("production"), manager.prepare("production")):
            found = [c for c in checks if c.name == "haproxy"]
            assert len(found) == 1 and found[0].ok is installed
            assert ("apt-get install" in found[0].detail) is not installed
        assert not [c for c in manager.validate("staging") if c.name == "haproxy"]  # builtin: no check
    finally:
        store.close()


@needs_haproxy
async def test_haproxy_killed_is_started_again_with_its_routes_servers_and_weights(
        router: HAProxyRouter, state_dir: Path, upstreams: Upstreams) -> None:
    v1, v2 = upstreams.start("v1"), upstreams.start("v2")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(v1, 0)])
    await router.set_backends(ROUTE, "v2", [backend(v2, 0)])
    await router.set_weights(ROUTE, {"v1": 0, "v2": 100})
    await wait_up(router, port)
    assert (await asyncio.to_thread(send, port, 20)).count(200) == 20
    before = await router.counters(ROUTE)
    master = haproxy_pid(state_dir)
    assert master is not None
    os.kill(master, signal.SIGTERM)
    for _ in range(200):
        if haproxy_pid(state_dir) is None:
            break
        await asyncio.sleep(0.05)
    assert haproxy_pid(state_dir) is None
    after = await router.counters(ROUTE)  # starts HAProxy again from what the router kept
    assert router.restarts == 1 and haproxy_pid(state_dir) not in (None, master)
    assert all(after[v].requests >= before[v].requests for v in before)  # never decreases
    await wait_up(router, port)
    versions = set()
    with httpx.Client(timeout=10.0) as client:
        for i in range(20):
            versions.add(client.get(f"http://127.0.0.1:{port}/users/{i}").headers.get("x-version"))
    assert versions == {"v2"}  # the weights came back with the servers


@needs_haproxy
async def test_requests_in_flight_on_a_leaving_instance_finish(router: HAProxyRouter, upstreams: Upstreams) -> None:
    staying, leaving = upstreams.start("v1"), upstreams.start("v1")
    port = await router.ensure_route(ROUTE, port=0)
    assert port is not None
    await router.set_backends(ROUTE, "v1", [backend(staying, 0), backend(leaving, 1)])
    await router.set_weights(ROUTE, {"v1": 100})
    await wait_up(router, port)

    def slow(i: int) -> tuple[int | None, str | None]:
        try:
            with httpx.Client(timeout=10.0) as client:
                answer = client.get(f"http://127.0.0.1:{port}/slow/{i}")
                return answer.status_code, answer.headers.get("x-port")
        except httpx.HTTPError:
            return None, None

    in_flight = [asyncio.create_task(asyncio.to_thread(slow, i)) for i in range(8)]
    await asyncio.sleep(0.4)  # the slow requests are on both instances now
    await router.set_backends(ROUTE, "v1", [backend(staying, 0)])  # drain: waits for them, then deletes
    leaving.stop()
    answers = await asyncio.gather(*in_flight)
    assert [status for status, _ in answers] == [200] * 8
    assert str(leaving.port) in {p for _, p in answers}, "no slow request went to the leaving instance"
    after = await asyncio.to_thread(send, port, 20)
    assert after == [200] * 20
    assert "v1-1" not in router._stat_rows(ROUTE)  # deleted from HAProxy
