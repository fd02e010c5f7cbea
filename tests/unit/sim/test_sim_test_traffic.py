"""Synthetic test traffic, as from a load tester aimed at one version: it reaches that version
whatever the users' weights are, takes nothing from the users' requests, shows in `counters`
(what metrics see) and not in `user_counters` (what users experienced)."""

from __future__ import annotations

import pytest
from simbench import ROUTE, START, Bench, poisson_band, run, scenario

from safeship.errors import InputError

CLEAN = {"error_rate": 0.0}  # a baseline that never fails, so that any failure is the regression


def test_test_traffic_reaches_a_version_that_users_do_not() -> None:
    async def go() -> None:
        bench = await Bench(scenario(traffic={"rps": 50})).setup({"baseline": 100})
        await bench.router.set_test_traffic(ROUTE, "candidate", 20)
        bench.clock.advance(60)
        users, seen = await bench.router.user_counters(ROUTE), await bench.router.counters(ROUTE)
        assert "candidate" not in users or users["candidate"].requests == 0
        low, high = poisson_band(20 * 60)
        assert low < seen["candidate"].requests < high
        assert sum(seen["candidate"].latency_buckets) == seen["candidate"].requests
        # The users' requests are all the baseline's, as many as without a load tester.
        low, high = poisson_band(50 * 60)
        assert low < users["baseline"].requests < high
        assert seen["baseline"] == users["baseline"]
        snapshot = await bench.router.routes_snapshot()
        assert snapshot.counters[ROUTE]["candidate"] == seen["candidate"]

    run(go)


def test_counters_add_both_kinds_of_traffic_of_one_version() -> None:
    async def go() -> None:
        bench = await Bench(scenario(traffic={"rps": 100})).setup({"baseline": 50, "candidate": 50})
        await bench.router.set_test_traffic(ROUTE, "candidate", 30)
        bench.clock.advance(100)
        users, seen = await bench.router.user_counters(ROUTE), await bench.router.counters(ROUTE)
        test = seen["candidate"].minus(users["candidate"])
        assert poisson_band(30 * 100)[0] < test.requests < poisson_band(30 * 100)[1]
        assert poisson_band(50 * 100)[0] < users["candidate"].requests < poisson_band(50 * 100)[1]
        assert all(b >= 0 for b in test.latency_buckets)

    run(go)


def test_zero_stops_it() -> None:
    async def go() -> None:
        bench = await Bench(scenario()).setup({"baseline": 100})
        await bench.router.set_test_traffic(ROUTE, "candidate", 20)
        bench.clock.advance(30)
        before = (await bench.router.counters(ROUTE))["candidate"].requests
        await bench.router.set_test_traffic(ROUTE, "candidate", 0)
        bench.clock.advance(300)
        assert (await bench.router.counters(ROUTE))["candidate"].requests == before > 0

    run(go)


@pytest.mark.parametrize("rps", [-1.0, float("nan"), float("inf")])
def test_an_impossible_rate_is_refused(rps: float) -> None:
    async def go() -> None:
        bench = await Bench(scenario()).setup({"baseline": 100})
        with pytest.raises(InputError):
            await bench.router.set_test_traffic(ROUTE, "candidate", rps)

    run(go)


def test_test_traffic_to_a_version_with_no_live_backend_is_not_counted() -> None:
    async def go() -> None:
        bench = await Bench(scenario()).setup({"baseline": 100})
        await bench.router.set_test_traffic(ROUTE, "nowhere", 20)  # no backend listed
        for instance in list(bench.world.instances.values()):
            if instance.version == "candidate":
                instance.stopped_at = START
        await bench.router.set_test_traffic(ROUTE, "candidate", 20)  # listed, all stopped
        bench.clock.advance(60)
        seen = await bench.router.counters(ROUTE)
        assert seen.get("nowhere") is None and seen.get("candidate") is None
        assert bench.router.routes[ROUTE].unrouted == 0  # and no user failed for it

    run(go)


def test_the_share_of_a_dead_instance_fails_to_connect_and_is_not_retried() -> None:
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN)).setup({"baseline": 100})
        bench.world.instances["env/svc/candidate-0"].stopped_at = START
        await bench.router.set_test_traffic(ROUTE, "candidate", 100)
        bench.clock.advance(60)
        seen, users = await bench.router.counters(ROUTE), await bench.router.user_counters(ROUTE)
        candidate = seen["candidate"]
        assert candidate.connect_failures == pytest.approx(candidate.requests / 2, rel=0.1)
        assert seen["baseline"] == users["baseline"]  # not retried on the baseline

    run(go)


@pytest.mark.parametrize(("floor", "regressed"), [(0, True), (1, False)])
def test_test_traffic_counts_as_the_candidates_user_share(floor: float, regressed: bool) -> None:
    """With no user weight the candidate serves 0% of the users: a regression that needs any
    share at all does not show under test traffic alone."""
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN, candidate={"error_rate": 0.3, "min_weight_percent": floor})
                            ).setup({"baseline": 100})
        await bench.router.set_test_traffic(ROUTE, "candidate", 20)
        bench.clock.advance(120)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        assert (candidate.errors > 0.2 * candidate.requests) if regressed else candidate.errors == 0

    run(go)


def test_test_traffic_flows_while_users_are_held() -> None:
    async def go() -> None:
        bench = await Bench(scenario(traffic={"rps": 50})).setup({"baseline": 100})
        await bench.router.set_test_traffic(ROUTE, "candidate", 10)
        await bench.router.hold(ROUTE, 30)
        bench.clock.advance(20)
        seen = await bench.router.counters(ROUTE)
        assert seen["candidate"].requests > 100
        assert bench.router.routes[ROUTE].held > 0

    run(go)


def test_the_candidates_first_test_request_starts_its_clock() -> None:
    async def go() -> None:
        bench = await Bench(scenario()).setup({"baseline": 100})
        bench.clock.advance(100)
        await bench.router.set_test_traffic(ROUTE, "candidate", 20)
        bench.clock.advance(10)
        await bench.router.counters(ROUTE)
        first = bench.world.candidate_first_traffic
        assert first is not None and START + 100 <= first <= START + 105

    run(go)
