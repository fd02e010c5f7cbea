"""Shared incidents hit every version in their window and nowhere else; the baseline's record
before the deployment follows the same model, is fixed, and leaves live traffic alone."""

from __future__ import annotations

import math

import pytest

from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario
from safeship.simworld import SimWorld

START = 50_000.0
N = 2000


def incident_world(seed: int = 4) -> SimWorld:
    scenario = Scenario.model_validate({
        "name": "incident",
        "expect": "promote",
        "traffic": {"incidents": [{"at_s": 100, "duration_s": 50, "error_rate": 0.3, "latency_factor": 4}]},
        "baseline": {"error_rate": 0.01, "latency_ms": {"p50": 40, "p99": 180}},
        "candidate": {"error_rate": 0.005},
    })
    return SimWorld(scenario, VirtualClock(START), seed=seed)


def served(world: SimWorld, version: str, since_start: float) -> tuple[int, float]:
    errors, _, latency_sum = world.serve(version, N, START + since_start)
    return errors, latency_sum / N


@pytest.mark.parametrize("version", ["baseline", "candidate"])
def test_an_incident_raises_failures_and_latency_only_inside_its_window(version: str) -> None:
    world = incident_world()
    world.start_deployment()
    before, inside, last, after = (served(world, version, t) for t in (99.9, 100.0, 149.9, 150.0))
    for errors, _ in (inside, last):
        assert errors > 0.25 * N
    for errors, _ in (before, after):
        assert errors < 0.03 * N
    assert inside[1] == pytest.approx(4 * before[1])
    assert after[1] == pytest.approx(before[1])


def test_incidents_count_from_the_deployments_start() -> None:
    world = incident_world()
    assert world.incident_at(START + 120) == (0.0, 1.0)  # no deployment yet: no incident
    world.start_deployment(START + 1000)
    assert world.incident_at(START + 120) == (0.0, 1.0)
    assert world.incident_at(START + 1120) == (0.3, 4.0)


def test_the_candidates_first_instance_marks_the_start_when_nobody_did() -> None:
    world = incident_world()
    world.spawn("svc", "env", "baseline", 0)
    assert world.deployment_start is None
    world.clock.advance(30)
    world.spawn("svc", "env", "candidate", 0)
    assert world.deployment_start == START + 30


def test_overlapping_incidents_take_the_highest_floor_and_multiply_latency() -> None:
    scenario = Scenario.model_validate({
        "name": "two",
        "expect": "promote",
        "traffic": {"incidents": [
            {"at_s": 0, "duration_s": 100, "error_rate": 0.1, "latency_factor": 2},
            {"at_s": 50, "duration_s": 100, "error_rate": 0.05, "latency_factor": 1.5},
        ]},
    })
    world = SimWorld(scenario, VirtualClock(0.0))
    world.start_deployment()
    assert world.incident_at(60) == (0.1, 3.0)
    assert world.incident_at(120) == (0.05, 1.5)
    assert world.behaviour("baseline", 120)[0] == 0.05
    assert world.incident_at(150) == (0.0, 1.0)


def history_world(seed: int = 9, history_s: float = 1200) -> SimWorld:
    scenario = Scenario.model_validate({
        "name": "history",
        "expect": "promote",
        "history_s": history_s,
        "traffic": {"rps": 40},
        "baseline": {"error_rate": 0.02, "error_burst": 3, "latency_ms": {"p50": 50, "p99": 300}},
        "candidate": {"error_rate": 0.2},
    })
    world = SimWorld(scenario, VirtualClock(START), seed=seed)
    world.start_deployment()
    return world


def test_the_history_covers_history_s_before_the_start_with_the_baselines_behaviour() -> None:
    world = history_world()
    window = world.history_window("baseline")
    assert window is not None
    begin, end, record = window
    assert (begin, end) == (START - 1200, START)
    assert abs(record.requests - 40 * 1200) < 5 * math.sqrt(40 * 1200)
    assert abs(record.failed / record.requests - 0.02) < 0.006
    assert sum(record.latency_buckets) == record.requests
    assert 42 < record.quantile_ms(0.5) < 58
    assert 240 < record.quantile_ms(0.99) < 380


def test_the_history_is_clipped_to_the_time_the_baseline_served_alone() -> None:
    world = history_world()
    world.clock.advance(600)
    window = world.history_window("baseline", span_s=5000, end=START + 600)
    assert window is not None and window[:2] == (START - 1200, START)
    short = world.history_window("baseline", span_s=300)
    assert short is not None and short[:2] == (START - 300, START)
    assert world.history_window("candidate") is None
    assert world.history("candidate").requests == 0
    assert history_world(history_s=0).history_window("baseline") is None


def test_the_history_is_fixed_and_leaves_live_traffic_alone() -> None:
    asked, untouched = history_world(), history_world()
    first = asked.history("baseline")
    again = asked.history("baseline")
    assert first.to_json() == again.to_json()
    other = history_world().history("baseline")
    assert (other.requests, other.failed) == (first.requests, first.failed)
    live_asked = [asked.serve("baseline", 300, START + i) for i in range(20)]
    live_untouched = [untouched.serve("baseline", 300, START + i) for i in range(20)]
    assert live_asked == live_untouched


def test_a_different_seed_gives_a_different_history() -> None:
    one, two = history_world(seed=1).history("baseline"), history_world(seed=2).history("baseline")
    assert (one.requests, one.failed) != (two.requests, two.failed)
