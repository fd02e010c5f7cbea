"""False rollbacks when failures are correlated, at the policy level.

The A/A harness feeds `SafeshipPolicy` per-look counts from its own seeded generator:

* each version's requests fail in runs: a version alternates between a run of successes and a run
  of failures, both geometric, the failure runs of mean `burst` requests, the success runs long
  enough that the version's failure rate is `error`. A run carries over from one look to the
  next, so at low traffic one run of ten failures is spread over many looks;
* a shared incident raises every version's failure probability to at least `error_rate` during
  the same seconds (independent extra failures on top of the runs);
* traffic is Poisson per look, split between the versions by the canary weight; the schedule is
  the policy's own (seed weights 5..75 while both serve, one look a second), then a monitoring
  window of 300 s with the candidate alone (one look every 30 s), as the engine runs it.

Latency is not modelled (every request lands in one histogram bucket), so only the failure tests
and the seed's error-rate trigger can roll back: this file tests failures, nothing else.

Every A/A cell runs 200 seeded canaries and asserts at most 6 false rollbacks: if the policy's
true false-rollback rate were 1%, 6 or fewer of 200 would happen with probability 0.89, so the
bound is not tight enough to pass a policy far above 1% (at 3%, P(X <= 6) = 0.61; at 6%,
P(X <= 6) = 0.04). The judge before the dispersion correction, which assumed independent
failures, rolled back 10% (low traffic) and 30% (high) of these canaries when runs averaged 3
requests, 40% and 80% at 10, and 93% with a shared incident at high traffic even with independent
failures (the seed's 5% error trigger), in 30 canaries per cell; `test_the_harness_sees_runs_that
_are_not_corrected_for` keeps that visible.

`python tests/unit/analysis/test_correlated_failures.py [runs]` prints the whole sweep with
Clopper-Pearson 95% upper bounds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from safeship import histogram
from safeship.analysis import judge
from safeship.analysis.base import StepContext, ThresholdTrigger, TickSample, Verdict
from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.config.models import (
    AnalysisConfig,
    ErrorRateThresholdTrigger,
    ResponseTimeThresholdTrigger,
)
from safeship.routing.base import TrafficCounters

SEED_WEIGHTS = (5, 10, 25, 50, 75, 100)
SEED_TRIGGERS: tuple[ThresholdTrigger, ...] = (
    ErrorRateThresholdTrigger(type="error_rate_threshold", threshold=0.05, duration=60.0),
    ResponseTimeThresholdTrigger(type="response_time_threshold", threshold=5.0, duration=60.0),
)
LOW_RPS, HIGH_RPS = 5.0, 100.0
RUNS = 200
MAX_FALSE_ROLLBACKS = 6  # of 200; see the module docstring
# A shared dependency fails for 30 s a minute into the canary (the scenario format's example).
INCIDENT = (60.0, 30.0, 0.2)
_BUCKET = histogram.bucket_of(40.0)


@dataclass(frozen=True)
class World:
    rps: float
    base_error: float = 0.005
    cand_error: float | None = None  # None: the baseline's rate (an A/A release)
    burst: float = 1.0  # mean length of a run of failed requests, both versions
    incidents: tuple[tuple[float, float, float], ...] = ()  # (at_s, duration_s, error_rate)
    cand_onset: float = 0.0  # the candidate fails no request before this time (a late onset)

    def incident_floor(self, t: float) -> float:
        return max((rate for at, dur, rate in self.incidents if at <= t < at + dur), default=0.0)


class Runs:
    """One version's failures: alternating geometric runs of successes and failures."""

    def __init__(self, rng: np.random.Generator, error: float, burst: float) -> None:
        self.rng = rng
        self.fail_p = 1.0 / burst  # a failure run ends after each failure with this probability
        # success runs of mean burst (1 - error) / error make the long-run failure rate `error`
        self.ok_p = min(1.0, error / (burst * (1.0 - error)))
        self.failing = bool(rng.random() < error)
        self.left = self._length()

    def _length(self) -> int:
        return int(self.rng.geometric(self.fail_p if self.failing else self.ok_p))

    def draw(self, n: int, floor: float) -> int:
        """Failures among the next n requests; `floor` is an incident's failure probability."""
        failed, todo = 0, n
        while todo > 0:
            take = min(todo, self.left)
            if self.failing:
                failed += take
            todo -= take
            self.left -= take
            if self.left == 0:
                self.failing = not self.failing
                self.left = self._length()
        if floor > 0.0 and n > failed:
            failed += int(self.rng.binomial(n - failed, floor))
        return failed


def _counters(requests: int, failed: int) -> TrafficCounters:
    buckets = histogram.empty()
    buckets[_BUCKET] = requests
    return TrafficCounters(
        requests=requests, errors=failed, latency_sum_ms=40.0 * requests, latency_buckets=buckets
    )


PolicyFactory = Callable[[], SafeshipPolicy]


def run_canary(
    world: World,
    seed: int,
    policy: SafeshipPolicy | None = None,
    *,
    step_duration: float = 120.0,
    monitor: float = 300.0,
    monitor_look: float = 30.0,
    horizon: float = 1800.0,
    phis: list[tuple[float, float]] | None = None,
) -> tuple[str, float, int]:
    """(decision, seconds since the candidate's first request, candidate failures seen)."""
    policy = policy or SafeshipPolicy()
    analysis = AnalysisConfig()
    rng = np.random.default_rng(seed)
    base = Runs(rng, world.base_error, world.burst)
    cand_error = world.base_error if world.cand_error is None else world.cand_error
    cand = Runs(rng, cand_error, world.burst)
    look = policy.interval(analysis)
    phases = [(w, True, step_duration, look) for w in policy.weights(SEED_WEIGHTS) if w < 100]
    phases.append((100, False, monitor, monitor_look))
    state, t, cand_failed = policy.start(), 0.0, 0
    for index, (weight, compare, duration, dt) in enumerate(phases):
        in_step = 0.0
        while True:
            if t >= horizon:
                return "undecided", t, cand_failed
            floor = world.incident_floor(t)
            n = int(rng.poisson(world.rps * dt))
            n_c = int(rng.binomial(n, weight / 100)) if compare else n
            n_b = n - n_c
            x_b = base.draw(n_b, floor)
            x_c = cand.draw(n_c, floor) if t >= world.cand_onset else 0
            cand_failed += x_c
            t, in_step = t + dt, in_step + dt
            sample = TickSample(
                t=t, dt=dt, baseline=_counters(n_b, x_b) if compare else TrafficCounters(),
                candidate=_counters(n_c, x_c), candidate_weight=weight,
            )  # fmt: skip
            ctx = StepContext(
                step_index=index, time_in_step=in_step, time_in_analysis=t, compare=compare,
                triggers=SEED_TRIGGERS, analysis=analysis, step_duration=duration,
            )  # fmt: skip
            state, decision = policy.observe(state, sample, ctx)
            if phis is not None:
                phis.append((t, float(state.get("phi", 1.0))))
            if decision.verdict is Verdict.FAILED:
                return "rollback", t, cand_failed
            if decision.verdict in (Verdict.ADVANCE, Verdict.SUCCESSFUL):
                break
    return "promote", t, cand_failed


def rollbacks(world: World, runs: int, factory: PolicyFactory = SafeshipPolicy, first: int = 0) -> int:
    return sum(run_canary(world, first + s, factory())[0] == "rollback" for s in range(runs))


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    return 1.0 if k >= n else float(stats.beta.ppf(level, k + 1, n - k))


def sweep_worlds() -> list[tuple[str, World]]:
    cells = []
    for burst in (1.0, 3.0, 10.0):
        for label, rps in (("low", LOW_RPS), ("high", HIGH_RPS)):
            for shared in (False, True):
                world = World(rps=rps, burst=burst, incidents=(INCIDENT,) if shared else ())
                name = f"burst={burst:g} traffic={label} incident={'shared' if shared else 'none'}"
                cells.append((name, world))
    return cells


# ---------------------------------------------------------------- A/A: false rollbacks


def test_the_bound_is_a_binomial_bound_at_one_percent() -> None:
    """<= 6 of 200 passes a 1% policy 89% of the time and a 6% policy 4% of the time."""
    assert stats.binom.cdf(MAX_FALSE_ROLLBACKS, RUNS, 0.01) > 0.85
    assert stats.binom.cdf(MAX_FALSE_ROLLBACKS, RUNS, 0.06) < 0.05


def test_the_generator_makes_runs_of_the_asked_mean_length_at_the_asked_rate() -> None:
    rng = np.random.default_rng(0)
    runs = Runs(rng, 0.01, 10.0)
    draws = [runs.draw(1, 0.0) for _ in range(400_000)]
    failures = sum(draws)
    starts = sum(1 for a, b in zip([0, *draws], draws, strict=False) if b and not a)
    assert 0.008 <= failures / len(draws) <= 0.012
    assert 8.5 <= failures / starts <= 11.5


AA_CELLS = sweep_worlds()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "world"), AA_CELLS, ids=[name for name, _ in AA_CELLS])
def test_identical_releases_are_rarely_rolled_back_when_failures_are_correlated(
    name: str, world: World
) -> None:
    false_rollbacks = rollbacks(world, RUNS)
    assert false_rollbacks <= MAX_FALSE_ROLLBACKS, f"{name}: {false_rollbacks} of {RUNS}"


# ---------------------------------------------------------------- power: bad releases


@pytest.mark.slow
def test_ten_times_the_error_rate_in_bursts_of_three_is_rolled_back() -> None:
    """0.5% vs 5% at 100 rps, every failure in runs of mean 3: at least 99% rolled back (all of
    200 here), during the canary."""
    world = World(rps=HIGH_RPS, cand_error=0.05, burst=3.0)
    outcomes = [run_canary(world, seed) for seed in range(RUNS)]
    caught = [o for o in outcomes if o[0] == "rollback"]
    assert len(caught) >= 198
    assert float(np.median([o[1] for o in caught])) <= 180.0


def test_gross_failure_in_bursts_is_decided_within_fifteen_seconds() -> None:
    """A candidate failing 50% of requests (0.5% before), runs of mean 3, 100 rps: rolled back
    within 15 s of its first request in every one of 50 runs."""
    world = World(rps=HIGH_RPS, cand_error=0.5, burst=3.0)
    outcomes = [run_canary(world, seed) for seed in range(50)]
    assert all(o[0] == "rollback" for o in outcomes)
    assert max(o[1] for o in outcomes) <= 15.0


def test_gross_failure_of_independent_requests_is_decided_within_fifteen_seconds() -> None:
    world = World(rps=HIGH_RPS, cand_error=0.5)
    outcomes = [run_canary(world, seed) for seed in range(50)]
    assert all(o[0] == "rollback" for o in outcomes)
    assert max(o[1] for o in outcomes) <= 15.0


def test_the_harness_sees_runs_that_are_not_corrected_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same harness with phi pinned to 1 (failures taken as independent) rolls back far more
    than 6 of 200 identical releases whose failures come in runs of mean 10: the A/A cells can
    fail. 40 canaries keep it quick; more than 6 of 40 already breaks the bound."""
    monkeypatch.setattr(judge, "dispersion_factor", lambda state, settings, known=None: 1.0)
    world = World(rps=HIGH_RPS, burst=10.0)
    assert rollbacks(world, 40) > MAX_FALSE_ROLLBACKS


@pytest.mark.parametrize("onset", [150.0, 400.0])
def test_a_late_onset_regression_is_not_taken_for_runs(onset: float) -> None:
    """The candidate is clean, then fails 3% of requests against the baseline's 0.5% (100 rps,
    independent failures), from the canary's second step (150 s) or from the monitoring window
    (400 s, 30-s looks of 3000 requests). The shift is a change of rate, not runs: phi stays
    below 3 after the onset and the release is rolled back in each of 10 seeded runs."""
    world = World(rps=HIGH_RPS, cand_error=0.03, cand_onset=onset)
    for seed in range(10):
        phis: list[tuple[float, float]] = []
        decision, _, _ = run_canary(world, seed, phis=phis)
        assert decision == "rollback", seed
        assert max(phi for t, phi in phis if t > onset) < 3.0, seed


# ---------------------------------------------------------------- the sweep, printed


def sweep(runs: int, factory: PolicyFactory = SafeshipPolicy, cells: Sequence[tuple[str, World]] = AA_CELLS) -> None:
    print(f"A/A false rollbacks, {runs} seeded canaries per cell (95% Clopper-Pearson upper bound)")
    for name, world in cells:
        k = rollbacks(world, runs, factory)
        upper = clopper_pearson_upper(k, runs)
        print(f"{name:45s} {k:4d}/{runs}  {100 * k / runs:5.1f}%  <= {100 * upper:4.1f}%")
        sys.stdout.flush()


if __name__ == "__main__":
    sweep(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS)
