"""The record before a deployment says how its failures cluster, so the judge discounts it by
what it shows instead of a fixed factor for the longest runs it covers."""

from __future__ import annotations

from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario
from safeship.simworld import SimWorld, record_dispersion


def _world(burst: float, rps: float = 100.0, seed: int = 1) -> SimWorld:
    scenario = Scenario.model_validate({"name": "r", "expect": "promote", "traffic": {"rps": rps},
                                        "baseline": {"error_rate": 0.01, "error_burst": burst}})
    return SimWorld(scenario, VirtualClock(start=1_000_000.0), seed=seed)


def test_independent_failures_show_a_dispersion_near_one_and_runs_of_ten_near_nineteen() -> None:
    calm = [_world(1.0, seed=s).history_dispersion("baseline") for s in range(1, 6)]
    runs = [_world(10.0, seed=s).history_dispersion("baseline") for s in range(1, 6)]
    assert all(d is not None and 1.0 <= d < 2.0 for d in calm), calm
    assert all(d is not None and 8.0 < d < 40.0 for d in runs), runs


def test_a_record_without_failures_or_slices_claims_nothing() -> None:
    assert record_dispersion([]) == 1.0
    assert record_dispersion([(500, 0)] * 20) == 1.0
    assert record_dispersion([(500, 5), (500, 5), (500, 5), (500, 5)]) >= 1.0


def test_the_candidate_has_no_record() -> None:
    assert _world(1.0).history_dispersion("candidate") is None
