"""Failure runs in the sim world: the long-run failure share stays the error rate, runs have the
asked mean length, and the counts per slice are overdispersed as correlated failures make them."""

from __future__ import annotations

import numpy as np
import pytest

from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario, VersionSpec
from safeship.simworld import SimWorld, chain_failures, chain_parameters

SLICES = 3000
PER_SLICE = 500
RATE = 0.02


def slice_counts(burst: float, seed: int = 11) -> np.ndarray:
    """Failures of the baseline in SLICES slices of PER_SLICE requests, served through the world."""
    scenario = Scenario(name="runs", expect="promote", baseline=VersionSpec(error_rate=RATE, error_burst=burst))
    world = SimWorld(scenario, VirtualClock(1_000.0), seed=seed)
    return np.array([world.serve("baseline", PER_SLICE, 1_000.0 + i)[0] for i in range(SLICES)])


def test_runs_of_five_keep_the_mean_and_widen_the_spread() -> None:
    independent, bursty = slice_counts(1), slice_counts(5)
    total = SLICES * PER_SLICE
    assert abs(independent.sum() / total - RATE) < 0.1 * RATE
    assert abs(bursty.sum() / total - RATE) < 0.1 * RATE
    # Independent failures: variance n p (1 - p) = 9.8. Runs of mean 5 multiply it by about 9.
    assert 8.0 < independent.var() < 12.0
    assert bursty.var() > 5 * independent.var()


def test_a_burst_of_one_is_exactly_independent_trials() -> None:
    assert chain_parameters(0.02, 1) == (0.02, 0.02)
    stay, enter = chain_parameters(0.02, 5)
    assert stay == pytest.approx(0.8)
    assert enter / (enter + 1 - stay) == pytest.approx(0.02)  # the stationary failure share


def test_a_burst_shorter_than_independent_runs_is_independent() -> None:
    # At 60% failures independent runs already average 2.5 requests; asking for 2 changes nothing.
    assert chain_parameters(0.6, 2) == (0.6, 0.6)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_never_and_always_failing_versions(rate: float) -> None:
    rng = np.random.default_rng(0)
    failures, _ = chain_failures(rng, 1000, rate, 10, None)
    assert failures == 1000 * rate


def test_runs_request_by_request_have_the_asked_mean_length() -> None:
    """Served one request at a time, carrying the state, the sequence is the chain itself."""
    rng = np.random.default_rng(5)
    state: bool | None = None
    outcomes = []
    for _ in range(15_000):
        failed, state = chain_failures(rng, 1, 0.3, 5, state)
        outcomes.append(failed)
    sequence = np.array(outcomes, dtype=bool)
    starts = int(np.sum(sequence[1:] & ~sequence[:-1])) + int(sequence[0])
    assert abs(sequence.mean() - 0.3) < 0.05
    assert 4.4 < sequence.sum() / starts < 5.6


def test_one_slice_and_many_small_slices_agree() -> None:
    """Cutting the same traffic into slices of 1 000 or of 50 gives the same spread per 1 000."""
    rng = np.random.default_rng(8)
    whole, pieces = [], []
    state: bool | None = None
    for _ in range(800):
        failed, state = chain_failures(rng, 1000, 0.02, 10, state)
        whole.append(failed)
    state = None
    for _ in range(800):
        total = 0
        for _ in range(20):
            failed, state = chain_failures(rng, 50, 0.02, 10, state)
            total += failed
        pieces.append(total)
    assert abs(np.mean(whole) - np.mean(pieces)) < 2.5
    # Runs of 10 at 2%: the variance per 1 000 is about 17 times the independent 19.6.
    assert np.var(whole) > 8 * 19.6 and np.var(pieces) > 8 * 19.6
    assert 0.7 < np.var(whole) / np.var(pieces) < 1.4


def test_the_candidate_takes_the_baselines_burst_unless_it_gives_its_own() -> None:
    scenario = Scenario.model_validate(
        {"name": "b", "expect": "promote", "baseline": {"error_burst": 4}, "candidate": {}}
    )
    world = SimWorld(scenario, VirtualClock())
    assert world.error_burst("candidate") == 4
    scenario = Scenario.model_validate(
        {"name": "b", "expect": "promote", "baseline": {"error_burst": 4}, "candidate": {"error_burst": 2}}
    )
    world = SimWorld(scenario, VirtualClock())
    assert (world.error_burst("baseline"), world.error_burst("candidate")) == (4, 2)


def test_independent_failures_draw_as_before() -> None:
    """Scenarios without runs keep their random stream: one binomial per slice, as before runs existed."""
    scenario = Scenario(name="same", expect="promote", baseline=VersionSpec(error_rate=0.05))
    world = SimWorld(scenario, VirtualClock(), seed=3)
    rng = np.random.default_rng(3)
    errors, _, _ = world.serve("baseline", 400, 0.0)
    assert errors == int(rng.binomial(400, 0.05))
