"""The routing seams: one backend sync rule, the router-backed traffic source, and the Router
methods every router has (ensure_route, remove_route, routes_snapshot, abilities)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from safeship.clock import VirtualClock
from safeship.errors import TemporaryError
from safeship.platforms.base import Instance, InstanceState
from safeship.routing.backends import sync_backends
from safeship.routing.base import Backend, RouteKey, RoutesSnapshot, TrafficCounters
from safeship.routing.builtin import BuiltinRouter
from safeship.routing.remote import RemoteRouter
from safeship.routing.traffic import RouterTraffic

ROUTE = RouteKey("shop", "prod")


class Recorder:
    """A router that records what it is told and counts what the test says."""

    def __init__(self) -> None:
        self.backends: dict[str, list[Backend]] = {}
        self.totals: dict[str, TrafficCounters] = {}

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        self.backends[version] = list(backends)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return {v: c.plus(TrafficCounters()) for v, c in self.totals.items()}


def _instance(version: str, index: int, state: InstanceState) -> Instance:
    return Instance(id=f"prod/shop/{version}-{index}", service="shop", environment="prod", version=version,
                    index=index, port=9000 + index, state=state)


def test_sync_backends_lists_ready_instances_and_drains_versions_seen_before() -> None:
    router = Recorder()
    instances = [
        _instance("v1", 0, InstanceState.READY),
        _instance("v1", 1, InstanceState.STARTING),
        _instance("v2", 0, InstanceState.STOPPED),
    ]
    synced = asyncio.run(sync_backends(router, ROUTE, instances, seen=["v0"]))  # type: ignore[arg-type]
    assert router.backends == {"v0": [], "v1": [Backend("prod/shop/v1-0", "127.0.0.1", 9000)]}
    assert synced.live_versions == {"v1"}  # a stopped instance counts as gone
    assert synced.ready_counts() == {"v0": 0, "v1": 1}
    assert synced.ready_ids() == frozenset({"prod/shop/v1-0"})


def test_router_traffic_counts_are_the_routers_and_before_answers_from_kept_reads() -> None:
    router, clock = Recorder(), VirtualClock(start=100.0)
    source = RouterTraffic(router, clock=clock)  # type: ignore[arg-type]

    async def run() -> None:
        assert await source.before(ROUTE, 100.0, 10.0) is None  # nothing kept yet: no guess
        for requests in (10, 30, 60):
            router.totals["v1"] = TrafficCounters(requests=requests)
            counted = await source.counters(ROUTE)
            assert counted["v1"].requests == requests  # exactly the router's cumulative counters
            clock.advance(10.0)
        window = await source.before(ROUTE, 120.0, 20.0)
        assert window is not None and (window.start, window.end) == (100.0, 120.0)
        assert window.counters["v1"].requests == 50
        assert await source.before(ROUTE, 105.0, 20.0) is None  # no read that early
        router.totals["v1"] = TrafficCounters(requests=5)  # the router restarted
        await source.counters(ROUTE)
        assert await source.before(ROUTE, 130.0, 30.0) is None  # that window measured nothing

    asyncio.run(run())


def test_builtin_router_ensure_route_listens_once_and_snapshots_every_route() -> None:
    async def run() -> None:
        router = BuiltinRouter(close_grace=0.1)
        try:
            assert router.abilities.hold and router.abilities.listens
            assert await router.ensure_route(ROUTE) is None  # known, not listening
            port = await router.ensure_route(ROUTE, port=0)
            assert isinstance(port, int) and port > 0
            assert await router.ensure_route(ROUTE, port=0) == port  # idempotent
            snapshot = await router.routes_snapshot()
            assert isinstance(snapshot, RoutesSnapshot) and snapshot.unrouted == {ROUTE: 0}
            await router.remove_route(ROUTE)
            assert (await router.routes_snapshot()).counters == {}
        finally:
            await router.close()

    asyncio.run(run())


def test_remote_router_failures_to_reach_its_daemon_are_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = RemoteRouter(tmp_path, start_timeout=0.2)

    def cannot_spawn(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("safeship.routing.remote.subprocess.Popen", cannot_spawn)
    with pytest.raises(TemporaryError) as caught:
        asyncio.run(router.open())
    assert isinstance(caught.value.__cause__, PermissionError)
