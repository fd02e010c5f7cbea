"""The scenario format: the fields for strategies, history, failure runs and incidents load, with
their defaults; unknown fields and impossible values are refused; every scenario file we know of
loads and drives the sim world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safeship.clock import VirtualClock
from safeship.config.models import DeploymentStrategy
from safeship.config.scenario import Scenario, load_scenario
from safeship.errors import ConfigError
from safeship.simworld import SimWorld

ROOT = Path(__file__).resolve().parents[3]
OURS = ROOT / "scenarios"
# Scenario folders kept outside the repository (a team's own) are checked too when named here.
EXTRA = [Path(p) for p in os.environ.get("SAFESHIP_EXTRA_SCENARIOS", "").split(os.pathsep) if p]

FULL = """\
name: full
description: every field
seed: 3
duration_s: 900
strategy: blue_green
history_s: 600
traffic:
  rps: 20
  incidents:
    - {at_s: 120, duration_s: 30, error_rate: 0.25, latency_factor: 2.5}
    - {at_s: 400, duration_s: 10}
baseline: {error_rate: 0.01, error_burst: 4}
candidate: {error_rate: 0.02, error_burst: 2}
expect: rollback
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_the_new_fields_load(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, FULL))
    assert scenario.strategy is DeploymentStrategy.BLUE_GREEN
    assert scenario.history_s == 600
    first, second = scenario.traffic.incidents
    assert (first.at_s, first.duration_s, first.error_rate, first.latency_factor) == (120, 30, 0.25, 2.5)
    assert (second.error_rate, second.latency_factor) == (0.0, 1.0)
    assert scenario.baseline.error_burst == 4
    assert scenario.candidate_error_burst() == 2


def test_the_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "name: plain\nexpect: promote\nbaseline: {error_burst: 6}\n"))
    assert scenario.strategy is DeploymentStrategy.CANARY
    assert scenario.history_s == 1800
    assert scenario.traffic.incidents == []
    assert scenario.candidate.error_burst is None
    assert scenario.candidate_error_burst() == 6


@pytest.mark.parametrize("strategy", ["canary", "blue_green", "rolling", "recreate"])
def test_every_strategy_is_accepted(tmp_path: Path, strategy: str) -> None:
    scenario = load_scenario(write(tmp_path, f"name: s\nexpect: promote\nstrategy: {strategy}\n"))
    assert scenario.strategy.value == strategy


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour: red\n", "colour"),
        ("traffic: {incidents: [{at_s: 1, duration_s: 2, severity: 3}]}\n", "traffic.incidents[0].severity"),
        ("baseline: {error_bursts: 2}\n", "baseline.error_bursts"),
        ("candidate: {burst: 2}\n", "candidate.burst"),
    ],
)
def test_unknown_fields_are_still_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_scenario(write(tmp_path, "name: u\nexpect: promote\n" + text))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("strategy: blue-green-ish\n", "strategy"),
        ("history_s: -1\n", "history_s"),
        ("baseline: {error_burst: 0.5}\n", "baseline.error_burst"),
        ("candidate: {error_burst: 0}\n", "candidate.error_burst"),
        ("baseline: {error_burst: true}\n", "baseline.error_burst"),
        ("traffic: {incidents: [{at_s: 1, duration_s: 2, error_rate: 1.5}]}\n", "traffic.incidents[0].error_rate"),
        ("traffic: {incidents: [{at_s: 1, duration_s: 2, latency_factor: 0.5}]}\n",
         "traffic.incidents[0].latency_factor"),
        ("traffic: {incidents: [{at_s: -5, duration_s: 2}]}\n", "traffic.incidents[0].at_s"),
        ("traffic: {incidents: [{at_s: 5, duration_s: 0}]}\n", "traffic.incidents[0].duration_s"),
        ("traffic: {incidents: [{duration_s: 10}]}\n", "traffic.incidents[0].at_s"),
    ],
)
def test_impossible_values_are_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_scenario(write(tmp_path, "name: v\nexpect: promote\n" + text))
    assert caught.value.field == field


def scenario_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def drive(scenario: Scenario) -> None:
    """A minute of the deployment's traffic split evenly, and the baseline's record before it."""
    clock = VirtualClock(1_000_000.0)
    world = SimWorld(scenario, clock, seed=scenario.seed)
    world.spawn("svc", "env", "candidate", 0)
    served = 0
    for second in range(60):
        t = clock.now() + second
        arrivals = world.arrivals(t, t + 1)
        for version, share in (("baseline", arrivals // 2), ("candidate", arrivals - arrivals // 2)):
            errors, buckets, _ = world.serve(version, share, t)
            assert 0 <= errors <= share and sum(buckets) == share
            served += share
        world.gauges("candidate")
    assert served > 0
    if scenario.history_s > 0:
        assert world.history("baseline").requests > 0


def test_our_scenarios_load_run_and_have_unique_names_a_description_and_a_truth() -> None:
    files = scenario_files(OURS)
    assert len(files) >= 20
    names = set()
    for path in files:
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert scenario.description
        names.add(scenario.name)
        drive(scenario)
    assert len(names) == len(files)


def test_our_scenarios_cover_every_strategy_and_both_truths() -> None:
    scenarios = [load_scenario(path) for path in scenario_files(OURS)]
    assert {s.strategy for s in scenarios} == set(DeploymentStrategy)
    assert {s.expect for s in scenarios} == {"promote", "rollback"}
    assert any(s.traffic.incidents and s.expect == "promote" for s in scenarios)
    assert {s.baseline.error_burst for s in scenarios if s.expect == "promote"} >= {2, 5, 10}


@pytest.mark.skipif(not EXTRA, reason="SAFESHIP_EXTRA_SCENARIOS names no folder")
@pytest.mark.parametrize("folder", EXTRA, ids=str)
def test_scenario_folders_named_outside_the_repository_load_and_run(folder: Path) -> None:
    files = scenario_files(folder)
    assert files, f"no scenario files in {folder}"
    for path in files:
        drive(load_scenario(path))
