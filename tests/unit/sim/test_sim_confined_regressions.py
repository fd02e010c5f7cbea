"""Regressions confined to a share of the traffic, to some instances, or to part of a cycle: the
fields load and are bounded, `Scenario.regression_share` says how much of the regression is
present, and the counts the sim router produces follow it."""

from __future__ import annotations

from pathlib import Path

import pytest
from simbench import ROUTE, START, Bench, poisson_band, run, scenario

from safeship.config.scenario import load_scenario
from safeship.errors import ConfigError

CLEAN = {"error_rate": 0.0}  # a baseline that never fails, so that any failure is the regression


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text("name: c\nexpect: rollback\n" + text)
    return path


def test_the_fields_load_with_their_defaults(tmp_path: Path) -> None:
    plain = load_scenario(write(tmp_path, "candidate: {error_rate: 0.1}\n")).candidate
    assert (plain.min_weight_percent, plain.bad_instances, plain.intermittent) == (0.0, None, None)
    full = load_scenario(write(tmp_path, (
        "candidate: {error_rate: 0.1, min_weight_percent: 25, bad_instances: 1,\n"
        "            intermittent: {period_s: 300, duty: 0.25}, onset_s: 60}\n"
    ))).candidate
    assert (full.min_weight_percent, full.bad_instances) == (25, 1)
    assert full.intermittent is not None
    assert (full.intermittent.period_s, full.intermittent.duty) == (300, 0.25)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("candidate: {min_weight_percent: 101}\n", "candidate.min_weight_percent"),
        ("candidate: {min_weight_percent: -1}\n", "candidate.min_weight_percent"),
        ("candidate: {min_weight_percent: true}\n", "candidate.min_weight_percent"),
        ("candidate: {bad_instances: 0}\n", "candidate.bad_instances"),
        ("candidate: {bad_instances: 1.5}\n", "candidate.bad_instances"),
        ("candidate: {bad_instances: true}\n", "candidate.bad_instances"),
        ("candidate: {intermittent: {period_s: 0, duty: 0.5}}\n", "candidate.intermittent.period_s"),
        ("candidate: {intermittent: {period_s: 60, duty: 0}}\n", "candidate.intermittent.duty"),
        ("candidate: {intermittent: {period_s: 60, duty: 1.5}}\n", "candidate.intermittent.duty"),
        ("candidate: {intermittent: {period_s: 60}}\n", "candidate.intermittent.duty"),
        ("candidate: {intermittent: {period_s: 60, duty: 0.5, phase: 3}}\n", "candidate.intermittent.phase"),
        ("candidate: {intermittent: 30}\n", "candidate.intermittent"),
        ("candidate: {bad_instance: 1}\n", "candidate.bad_instance"),
    ],
)
def test_unknown_fields_and_impossible_values_are_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_scenario(write(tmp_path, text))
    assert caught.value.field == field


def test_regression_share_combines_every_confinement_with_onset_and_ramp() -> None:
    s = scenario(candidate={
        "error_rate": 0.1, "onset_s": 100, "ramp_s": 100, "min_weight_percent": 20, "bad_instances": 2,
        "intermittent": {"period_s": 1000, "duty": 0.5},
    })
    assert s.regression_share(None) == 0.0
    assert s.regression_share(50, 100, 0) == 0.0  # before onset
    assert s.regression_share(150, 100, 0) == pytest.approx(0.5)  # half-way up the ramp
    assert s.regression_share(300, 100, 1) == 1.0
    assert s.regression_share(300, 19.9, 1) == 0.0  # below the weight
    assert s.regression_share(300, 20, 1) == 1.0
    assert s.regression_share(300, 100, 2) == 0.0  # a healthy instance
    assert s.regression_share(600, 100, 0) == 0.0  # the off part of the cycle
    assert s.regression_share(1100, 100, 0) == 1.0  # on again
    assert s.regression_share(300) == 1.0  # nothing known about weight or instance: not confined
    assert s.regressed_instances(4) == 2 and s.regressed_instances(1) == 1
    assert s.candidate_error_rate(300, 100, 1) == pytest.approx(0.1)
    assert s.candidate_error_rate(600, 100, 1) == s.baseline.error_rate
    assert s.candidate.intermittent is not None
    assert s.candidate.intermittent.on_seconds(0, 2500) == pytest.approx(1500)
    assert s.candidate.intermittent.on_seconds(400, 1200) == pytest.approx(300)


def test_an_always_on_cycle_never_switches() -> None:
    s = scenario(candidate={"error_rate": 0.1, "intermittent": {"period_s": 10, "duty": 1}})
    assert all(s.regression_share(t) == 1.0 for t in (0, 9.99, 10, 12345.6))
    assert s.next_regression_change(5) == float("inf")


# ------------------------------------------------------------ load-dependent


@pytest.mark.parametrize(("weight", "regressed"), [(10, False), (29, False), (30, True), (60, True)])
def test_the_regression_is_present_only_at_or_above_its_weight(weight: int, regressed: bool) -> None:
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN, traffic={"rps": 500},
                                     candidate={"error_rate": 0.3, "min_weight_percent": 30,
                                                "latency_ms": {"p50": 400, "p99": 1800}})
                            ).setup({"baseline": 100 - weight, "candidate": weight})
        bench.clock.advance(120)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        n = candidate.requests
        assert poisson_band(500 * 120 * weight / 100)[0] < n
        if regressed:
            assert 0.25 * n < candidate.errors < 0.35 * n
            assert candidate.mean_ms > 300
        else:
            assert candidate.errors == 0  # exactly the baseline, which never fails
            assert candidate.mean_ms < 100

    run(go)


def test_the_share_counts_only_versions_that_have_backends() -> None:
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN, candidate={"error_rate": 0.3, "min_weight_percent": 40})
                            ).setup({"baseline": 50, "candidate": 50, "nowhere": 100})
        bench.clock.advance(120)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        assert candidate.errors > 0.2 * candidate.requests  # 50 of 100: "nowhere" has no backend

    run(go)


# ------------------------------------------------------------ per instance


@pytest.mark.parametrize(("bad", "expected"), [(1, 0.1), (2, 0.2), (3, 0.3), (9, 0.4)])
def test_only_the_first_instances_regress(bad: int, expected: float) -> None:
    async def go() -> None:
        bench = await Bench(
            scenario(traffic={"rps": 1000}, baseline={"error_rate": 0.0},
                     candidate={"error_rate": 0.4, "bad_instances": bad}),
            instances={"baseline": 2, "candidate": 4},
        ).setup({"candidate": 100})
        bench.clock.advance(60)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        n = candidate.requests
        # A request lands on a bad instance with chance bad/4 and fails there with chance 0.4.
        sd = (n * expected * (1 - expected)) ** 0.5
        assert abs(candidate.errors - n * expected) < 6 * sd

    run(go)


def test_only_live_instances_share_the_requests() -> None:
    """With the bad instance stopped, the candidate's live instances are all healthy."""
    async def go() -> None:
        bench = await Bench(
            scenario(traffic={"rps": 500}, baseline={"error_rate": 0.0},
                     candidate={"error_rate": 0.4, "bad_instances": 1}),
            instances={"baseline": 2, "candidate": 3},
        ).setup({"candidate": 100})
        bench.world.instances["env/svc/candidate-0"].stopped_at = START
        bench.clock.advance(60)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        assert candidate.errors == 0
        assert candidate.connect_failures == pytest.approx(candidate.requests / 3, rel=0.1)  # its share

    run(go)


def test_runs_of_failures_keep_to_their_instances() -> None:
    """The healthy instances' failure chain is the baseline's, whatever the bad one does."""
    async def go() -> None:
        bench = await Bench(
            scenario(traffic={"rps": 400}, baseline={"error_rate": 0.0},
                     candidate={"error_rate": 0.5, "error_burst": 50, "bad_instances": 1}),
            instances={"baseline": 1, "candidate": 2},
        ).setup({"candidate": 100})
        bench.clock.advance(600)
        candidate = (await bench.router.counters(ROUTE))["candidate"]
        assert 0.15 * candidate.requests < candidate.errors < 0.35 * candidate.requests
        assert bench.world._failing.get(("candidate", False)) is None  # never fails: no chain state

    run(go)


# ------------------------------------------------------------ intermittent


def test_an_intermittent_regression_switches_on_and_off_with_its_cycle() -> None:
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN, traffic={"rps": 200},
                                     candidate={"error_rate": 0.3, "intermittent": {"period_s": 200, "duty": 0.25}})
                            ).setup({"candidate": 100})
        bench.clock.advance(1)
        await bench.router.counters(ROUTE)
        first = bench.world.candidate_first_traffic
        assert first is not None
        previous = 0
        for k in range(6):
            for end, on in ((first + k * 200 + 50, True), (first + (k + 1) * 200, False)):
                bench.clock.advance(end - bench.clock.now())
                errors = (await bench.router.counters(ROUTE))["candidate"].errors
                window = errors - previous
                previous = errors
                if on:
                    assert 0.25 * 200 * 50 < window < 0.35 * 200 * 50
                else:
                    assert window == 0

    run(go)


def test_an_intermittent_regression_counts_from_the_first_request() -> None:
    async def go() -> None:
        bench = await Bench(scenario(baseline=CLEAN, candidate={"error_rate": 0.3,
                                                       "intermittent": {"period_s": 100, "duty": 0.5}})
                            ).setup({"baseline": 100})
        bench.clock.advance(1234)  # no request reaches the candidate for a while
        await bench.router.set_weights(ROUTE, {"candidate": 100})
        bench.clock.advance(40)
        assert (await bench.router.counters(ROUTE))["candidate"].errors > 0  # on from its first request
        first = bench.world.candidate_first_traffic
        assert first is not None and START + 1234 <= first < START + 1234 + 5
        bench.clock.advance(first + 50 - bench.clock.now())
        errors = (await bench.router.counters(ROUTE))["candidate"].errors
        bench.clock.advance(50)
        assert (await bench.router.counters(ROUTE))["candidate"].errors == errors  # off for the second half

    run(go)


def test_all_three_combine_with_onset() -> None:
    """Weight at least 50, instance 0 of 2, the first half of every 100 s, from 300 s on."""
    async def go() -> None:
        s = scenario(baseline=CLEAN, traffic={"rps": 400}, candidate={
            "error_rate": 0.3, "onset_s": 300, "min_weight_percent": 50, "bad_instances": 1,
            "intermittent": {"period_s": 100, "duty": 0.5},
        })
        bench = await Bench(s).setup({"candidate": 100})
        bench.clock.advance(1)
        await bench.router.counters(ROUTE)
        first = bench.world.candidate_first_traffic
        assert first is not None
        bench.clock.advance(first + 300 - bench.clock.now())
        assert (await bench.router.counters(ROUTE))["candidate"].errors == 0  # before onset
        bench.clock.advance(600)
        errors = (await bench.router.counters(ROUTE))["candidate"].errors
        # 600 s after onset: on for 300 s, on one instance of two, failing 30%.
        expected = 400 * 300 * 0.5 * 0.3
        assert abs(errors - expected) < 6 * expected**0.5
        await bench.router.set_weights(ROUTE, {"baseline": 60, "candidate": 40})
        bench.clock.advance(600)
        assert (await bench.router.counters(ROUTE))["candidate"].errors == errors  # below its weight

    run(go)


def test_gauges_follow_the_confinements() -> None:
    metrics = {"memory": {"baseline": 100, "candidate": 300}}
    async def go() -> None:
        bench = await Bench(scenario(candidate={"metrics": metrics, "bad_instances": 1, "min_weight_percent": 20}),
                            instances={"baseline": 2, "candidate": 4}).setup({"candidate": 100})
        bench.clock.advance(10)
        await bench.router.counters(ROUTE)
        assert bench.router.gauges(ROUTE)["candidate"]["memory"] == pytest.approx(150)  # one of four
        await bench.router.set_weights(ROUTE, {"baseline": 90, "candidate": 10})
        assert bench.router.gauges(ROUTE)["candidate"]["memory"] == pytest.approx(100)

    run(go)
