"""How the sim router cuts time into slices: long where nothing changes, never across a point
where behaviour steps, short while the candidate ramps; and the counts do not depend on it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from simbench import ROUTE, START, Bench, poisson_band, run, scenario

from safeship.routing.sim import MAX_SLICE_S, SLICE_S
from safeship.simworld import SimInstance


def straddled(slices: list[tuple[float, float]], edges: Sequence[float]) -> list[tuple[float, float, float]]:
    """(t0, t1, edge) for every slice with an edge strictly inside it."""
    return [(t0, t1, e) for t0, t1 in slices for e in edges if t0 + 1e-6 < e < t1 - 1e-6]


async def promoted(bench: Bench, seconds: float) -> list[tuple[float, float]]:
    """The candidate takes every request for `seconds`, read once at the end; the slices drawn."""
    await bench.router.set_weights(ROUTE, {"candidate": 100})
    bench.clock.advance(1)
    await bench.router.counters(ROUTE)  # its first request
    slices = bench.slices()
    bench.clock.advance(seconds)
    await bench.router.counters(ROUTE)
    return slices


def test_an_hour_alone_and_unread_takes_a_few_dozen_slices() -> None:
    async def go() -> None:
        bench = await Bench(scenario(traffic={"rps": 100})).setup({"baseline": 100})
        slices = await promoted(bench, 3600)
        assert len(slices) <= math.ceil(3600 / MAX_SLICE_S) + 1
        assert slices[0][0] == START + 1 and slices[-1][1] == START + 3601
        assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
        requests = (await bench.router.counters(ROUTE))["candidate"].requests
        low, high = poisson_band(100 * 3600)
        assert low < requests < high

    run(go)


def test_slices_end_at_every_incident_edge() -> None:
    incidents = [{"at_s": 130.5, "duration_s": 47, "error_rate": 0.5}, {"at_s": 900, "duration_s": 1}]
    async def go() -> None:
        bench = await Bench(scenario(traffic={"incidents": incidents})).setup({"baseline": 100})
        slices = await promoted(bench, 1800)
        start = bench.world.deployment_start
        assert start is not None
        edges = [start + e for e in (130.5, 177.5, 900, 901)]
        assert not straddled(slices, edges)
        assert {round(t1, 6) for _, t1 in slices} >= {round(e, 6) for e in edges}

    run(go)


def test_slices_end_at_every_switch_of_an_intermittent_regression() -> None:
    async def go() -> None:
        s = scenario(candidate={"error_rate": 0.2, "intermittent": {"period_s": 70, "duty": 0.3}})
        bench = await Bench(s).setup({"baseline": 100})
        slices = await promoted(bench, 1000)
        first = bench.world.candidate_first_traffic
        assert first is not None
        edges = [first + k * 70 + d for k in range(16) for d in (0, 21)]
        assert not straddled(slices, edges)

    run(go)


def replay(started_at: float, crash_after: float, backoff: float, until: float) -> list[float]:
    """Crash and restart times of a crash loop, replayed from its start (the reference)."""
    events, start, restarts = [], started_at, 0
    while start + crash_after <= until:
        crashed = start + crash_after
        start = crashed + backoff * 2 ** min(restarts, 5)
        restarts += 1
        events += [crashed, start]
    return events


def test_slices_end_at_every_crash_and_restart() -> None:
    async def go() -> None:
        bench = await Bench(scenario(candidate={"crash_after_s": 45})).setup({"baseline": 100})
        slices = await promoted(bench, 3000)
        edges = [e for i in bench.world.instances.values() if i.version == "candidate"
                 for e in replay(i.started_at, 45, bench.world.restart_backoff_s, START + 3001)]
        assert len(edges) > 20
        assert not straddled(slices, edges)

    run(go)


def test_life_answers_as_a_replay_from_the_start_does() -> None:
    bench = Bench(scenario(candidate={"crash_after_s": 30}))
    world = bench.world
    instance = world.spawn("svc", "env", "candidate", 0)
    rng = np.random.default_rng(4)
    times = np.concatenate([START + rng.uniform(0, 20_000, 400), START + np.arange(0, 3000, 7.5)])
    for backoff in (10.0, 3.0):
        world.restart_backoff_s = backoff  # a changed backoff is a new timeline
        for t in rng.permutation(times):
            events = replay(instance.started_at, 30, backoff, float(t))
            alive, _, restarts, crashed_at = world.life(instance, float(t))
            assert restarts == (len(events) + 1) // 2 if events else restarts == 0
            assert alive == (not events or events[-1] <= t)
            assert crashed_at == (events[-2] if events else None)
    instance.started_at -= 100  # a moved start too
    assert world.life(instance, START)[2] == len(replay(START - 100, 30, 3.0, START)) // 2


def test_slices_stay_short_while_the_candidate_ramps_and_before_its_first_request() -> None:
    async def go() -> None:
        s = scenario(traffic={"rps": 0.01}, candidate={"error_rate": 0.2, "onset_s": 300, "ramp_s": 200})
        bench = await Bench(s).setup({"baseline": 100})
        await bench.router.set_weights(ROUTE, {"candidate": 100})
        slices = bench.slices()
        bench.clock.advance(3000)
        await bench.router.counters(ROUTE)
        first = bench.world.candidate_first_traffic
        assert first is not None
        for t0, t1 in slices:
            if t1 <= first or first + 300 <= t0 < first + 500:
                assert t1 - t0 <= SLICE_S + 1e-9
        assert max(t1 - t0 for t0, t1 in slices) == MAX_SLICE_S
        assert not straddled(slices, [first + 300, first + 500])

    run(go)


@pytest.mark.parametrize("pattern", ["diurnal", "bursty"])
def test_swinging_traffic_keeps_slices_to_a_twentieth_of_its_period_and_counts_its_integral(pattern: str) -> None:
    async def go() -> None:
        traffic = {"rps": 200, "pattern": pattern, "amplitude": 0.8, "period_s": 900}
        bench = await Bench(scenario(traffic=traffic)).setup({"baseline": 100})
        slices = await promoted(bench, 1234)
        assert max(t1 - t0 for t0, t1 in slices) <= 900 / 20 + 1e-9
        spec = bench.scenario.traffic
        if pattern == "bursty":
            edges = [k * 900 + d for k in range(int(START // 900), int(START // 900) + 4) for d in (0, 90)]
            assert not straddled(slices, edges)
        expected = spec.requests_between(START + 1, START + 1235)
        grid = np.linspace(START + 1, START + 1235, 200_001)
        assert expected == pytest.approx(np.mean([spec.rate_at(t) for t in grid]) * 1234, rel=1e-3)
        low, high = poisson_band(expected)
        assert low < (await bench.router.counters(ROUTE))["candidate"].requests < high

    run(go)


def test_a_hold_ends_a_slice_where_it_expires() -> None:
    async def go() -> None:
        bench = await Bench(scenario(traffic={"rps": 100})).setup({"baseline": 100})
        slices = bench.slices()
        await bench.router.hold(ROUTE, 42)
        bench.clock.advance(200)
        await bench.router.counters(ROUTE)
        assert START + 42 in [t1 for _, t1 in slices]
        state = bench.router.routes[ROUTE]
        assert state.hold_until is None and state.held == 0
        low, high = poisson_band(100 * 42)
        assert low < state.unrouted < high + 100 * 60  # the held ones and the first slice after

    run(go)


def failures(bench_seed: int, read_every: float | None) -> tuple[int, int]:
    """The candidate's (failed, connect failures) over 1800 s alone with incidents, a crash loop and
    an intermittent regression, read every `read_every` seconds (short slices) or once."""
    s = scenario(traffic={"rps": 40, "incidents": [{"at_s": 400, "duration_s": 150, "error_rate": 0.2}]},
                 baseline={"error_rate": 0.01},
                 candidate={"error_rate": 0.05, "crash_after_s": 200, "onset_s": 100,
                            "intermittent": {"period_s": 300, "duty": 0.5}})

    async def go() -> tuple[int, int]:
        bench = await Bench(s, seed=bench_seed).setup({"candidate": 100})
        end = START + 1800
        step = read_every or 1800
        while bench.clock.now() < end:
            bench.clock.advance(min(step, end - bench.clock.now()))
            await bench.router.counters(ROUTE)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        return candidate.failed, candidate.connect_failures

    return run(go)


def test_long_and_short_slices_give_the_same_counts() -> None:
    short = np.array([failures(seed, 2.5) for seed in range(40)], dtype=float)
    long = np.array([failures(1000 + seed, None) for seed in range(40)], dtype=float)
    for column in range(2):
        a, b = short[:, column], long[:, column]
        spread = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(a.mean() - b.mean()) < 4.5 * spread, (a.mean(), b.mean(), spread)
        assert 0.5 < a.var() / b.var() < 2.0


def test_the_baselines_instances_are_never_watched_when_nothing_crashes() -> None:
    bench = Bench(scenario(candidate={"crash_after_s": 10}))
    baseline = bench.world.spawn("svc", "env", "baseline", 0)
    assert bench.world.next_step(START, [baseline], candidate=False) == math.inf
    candidate: SimInstance = bench.world.spawn("svc", "env", "candidate", 0)
    assert bench.world.next_step(START, [baseline, candidate], candidate=False) == START + 10
