"""The judge's sequential tests: tables of numbers, reference checks against scipy, and Monte Carlo
checks that Ville's bound holds where it should (and that the harness can see it fail)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from safeship import histogram
from safeship.analysis import judge

RHO0 = 1.2


def _feed_two_sample(
    ticks: list[tuple[int, int, int, int]], rho0: float = RHO0
) -> dict[str, object]:
    state = judge.new_e_process()
    for n_b, x_b, n_c, x_c in ticks:
        state = judge.update_two_sample(state, n_b, x_b, n_c, x_c, rho0)
    return state


def _theta(n_b: float, n_c: float, rho: float) -> float:
    return n_c * rho / (n_c * rho + n_b)


# ---------------------------------------------------------------- reference checks against scipy


@pytest.mark.parametrize(
    ("n_b", "x_b", "n_c", "x_c"),
    [(95, 0, 5, 3), (95, 1, 5, 0), (50, 2, 50, 5), (900, 4, 100, 1), (10, 3, 90, 40), (3, 0, 1, 1)],
)
def test_one_tick_two_sample_lr_is_the_binomial_pmf_ratio(
    n_b: int, x_b: int, n_c: int, x_c: int
) -> None:
    m = x_b + x_c
    got = judge.two_sample_log_lr(n_b, x_b, n_c, x_c, RHO0)
    for multiplier, log_lr in zip(judge.RATIO_GRID, got, strict=True):
        alt = stats.binom.pmf(x_c, m, _theta(n_b, n_c, RHO0 * multiplier))
        null = stats.binom.pmf(x_c, m, _theta(n_b, n_c, RHO0))
        assert log_lr == pytest.approx(math.log(alt / null), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("n", "x", "p0"), [(100, 5, 0.05), (20, 10, 0.05), (1, 1, 0.5), (500, 0, 0.01)]
)
def test_one_sample_lr_is_the_binomial_pmf_ratio(n: int, x: int, p0: float) -> None:
    got = judge.one_sample_log_lr(n, x, p0)
    for multiplier, log_lr in zip(judge.FINE_GRID, got, strict=True):
        odds = p0 / (1 - p0) * multiplier
        p_alt = odds / (1 + odds)
        expected = math.log(stats.binom.pmf(x, n, p_alt) / stats.binom.pmf(x, n, p0))
        assert log_lr == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mixture_e_value_equals_a_direct_evaluation() -> None:
    ticks = [(95, 1, 5, 2), (94, 0, 6, 1), (96, 2, 4, 3), (90, 0, 10, 4)]
    state = _feed_two_sample(ticks)
    direct = 0.0
    for multiplier in judge.RATIO_GRID:
        product = 1.0
        for n_b, x_b, n_c, x_c in ticks:
            m = x_b + x_c
            alt = stats.binom.pmf(x_c, m, _theta(n_b, n_c, RHO0 * multiplier))
            product *= alt / stats.binom.pmf(x_c, m, _theta(n_b, n_c, RHO0))
        direct += product / len(judge.RATIO_GRID)
    assert judge.e_value(state) == pytest.approx(direct, rel=1e-5)


def test_scalar_updates_agree_with_the_vectorised_functions() -> None:
    rng = np.random.default_rng(3)
    counts = [(int(rng.poisson(90)), int(rng.poisson(1)), int(rng.poisson(10)), int(rng.poisson(1)))
              for _ in range(50)]  # fmt: skip
    state = _feed_two_sample(counts)
    n_b, x_b, n_c, x_c = np.array(counts).T
    vectorised = judge.two_sample_log_lr(n_b, x_b, n_c, x_c, RHO0).sum(axis=0)
    assert state["runs"][0]["llr"] == pytest.approx(vectorised.tolist(), abs=1e-4)  # type: ignore[index]
    one = judge.new_e_process()
    for n, x in [(100, 3), (50, 0), (80, 9)]:
        one = judge.update_one_sample(one, n, x, 0.05)
    expected = judge.one_sample_log_lr([100, 50, 80], [3, 0, 9], 0.05).sum(axis=0)
    assert one["runs"][0]["llr"] == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.parametrize(
    ("n_b", "n_c", "p_b"), [(95, 5, 0.005), (50, 50, 0.02), (10, 90, 0.1), (30, 3, 0.1)]
)
def test_two_sample_factor_has_mean_at_most_one_for_bernoulli_requests(
    n_b: int, n_c: int, p_b: float
) -> None:
    """Exact expectation by brute-force summation over two independent binomials, at the null's
    edge (p_c = rho0 p_b), and above it (where it must exceed 1: the test has power)."""
    x_b, x_c = np.arange(n_b + 1), np.arange(n_c + 1)
    grid_b, grid_c = np.meshgrid(x_b, x_c, indexing="ij")
    log_lr = judge.two_sample_log_lr(n_b, grid_b, n_c, grid_c, RHO0)
    for p_c, at_most_one in ((RHO0 * p_b, True), (p_b, True), (3 * RHO0 * p_b, False)):
        log_joint = np.add.outer(
            stats.binom.logpmf(x_b, n_b, p_b), stats.binom.logpmf(x_c, n_c, p_c)
        )
        means = np.exp(logsumexp(log_joint[..., None] + log_lr, axis=(0, 1)))
        # the closed form in judge's docstring
        a = [_theta(n_b, n_c, RHO0 * m) / _theta(n_b, n_c, RHO0) for m in judge.RATIO_GRID]
        b = [
            (1 - _theta(n_b, n_c, RHO0 * m)) / (1 - _theta(n_b, n_c, RHO0))
            for m in judge.RATIO_GRID
        ]
        closed = [
            (1 + p_c * (ak - 1)) ** n_c * (1 + p_b * (bk - 1)) ** n_b
            for ak, bk in zip(a, b, strict=True)
        ]
        assert means == pytest.approx(closed, rel=1e-9)
        if at_most_one:
            assert np.all(means <= 1 + 1e-12)
        else:
            assert means[-1] > 1


def test_one_sample_factor_has_mean_at_most_one_under_the_null() -> None:
    n, p0 = 40, 0.05
    x = np.arange(n + 1)
    for p, at_most_one in ((p0, True), (p0 / 2, True), (4 * p0, False)):
        lr = np.exp(judge.one_sample_log_lr(n, x, p0))
        means = (stats.binom.pmf(x, n, p)[:, None] * lr).sum(axis=0)
        assert np.all(means <= 1 + 1e-12) == at_most_one


def test_mean_bet_is_a_fair_bet_for_nonnegative_values_at_the_null_mean() -> None:
    """Latencies exactly on bucket lower bounds, two-point law with mean exactly mu0: every bet's
    wealth factor has mean exactly 1; with the law shifted up it exceeds 1."""
    low_index, high_index = 10, 30
    low, high = histogram.BOUNDS_MS[low_index - 1], histogram.BOUNDS_MS[high_index - 1]
    p_high = 0.25
    mu0 = low * (1 - p_high) + high * p_high
    one_low, one_high = histogram.empty(), histogram.empty()
    one_low[low_index], one_high[high_index] = 1, 1
    wealth_low = np.exp(judge.mean_bet_log_wealth(one_low, mu0))
    wealth_high = np.exp(judge.mean_bet_log_wealth(one_high, mu0))
    assert p_high * wealth_high + (1 - p_high) * wealth_low == pytest.approx(
        [1.0] * len(judge.BET_GRID)
    )
    assert np.all(0.5 * wealth_high + 0.5 * wealth_low > 1.0)


def test_mean_bet_scalar_update_matches_the_vectorised_sum() -> None:
    buckets = histogram.empty()
    for latency in (3.0, 40.0, 40.0, 900.0, 5_000.0, 12_000.0):
        buckets[histogram.bucket_of(latency)] += 1
    state = judge.update_mean(judge.new_e_process(), buckets, 2_000.0)
    expected = judge.mean_bet_log_wealth(buckets, 2_000.0)
    assert state["runs"][0]["llr"] == pytest.approx(expected.tolist(), abs=1e-5)


# ---------------------------------------------------------------- tables of counts


def test_gross_failure_flags_within_two_ticks() -> None:
    # 100 rps, 5% canary, baseline 0.2% errors, candidate 50%
    alpha = 0.004
    state = judge.new_e_process()
    ticks = [(95, 0, 5, 3), (95, 1, 5, 2), (95, 0, 5, 3)]
    flagged_at = None
    for index, tick in enumerate(ticks):
        state = judge.update_two_sample(state, *tick, RHO0)
        if judge.crossed(state, alpha):
            flagged_at = index
            break
    assert flagged_at is not None and flagged_at <= 1


def test_ten_times_the_error_rate_flags() -> None:
    # 5% canary at 100 rps for 60 s: baseline 0.5%, candidate 5% (expected counts per 10 s)
    ticks = [
        (950, 5, 50, 3),
        (950, 4, 50, 2),
        (950, 5, 50, 3),
        (950, 6, 50, 2),
        (950, 4, 50, 3),
        (950, 5, 50, 2),
    ]
    assert judge.crossed(_feed_two_sample(ticks), 0.004)


def test_identical_counts_never_flag() -> None:
    # both versions fail 0.5% of requests: 5 of 1000 per tick for the baseline, 1 of 200 over
    # four ticks for the candidate
    state = judge.new_e_process()
    for _ in range(200):
        for candidate_failures in (0, 0, 1, 0):
            state = judge.update_two_sample(state, 1000, 5, 50, candidate_failures, RHO0)
    assert judge.e_value(state) < 1e-3


@pytest.mark.parametrize(
    "ticks", [[(2, 0, 0, 0)] * 100, [(1, 0, 1, 0)] * 100, [(0, 0, 0, 0)] * 10, [(2, 0, 1, 1)]]
)
def test_tiny_counts_are_inconclusive(ticks: list[tuple[int, int, int, int]]) -> None:
    state = _feed_two_sample(ticks)
    assert not judge.crossed(state, 0.004)
    if all(x_b + x_c == 0 for _, x_b, _, x_c in ticks):
        assert judge.e_value(state) == pytest.approx(1.0)


def test_a_tick_where_one_version_served_nothing_carries_no_evidence() -> None:
    assert judge.two_sample_log_lr(0, 0, 100, 50, RHO0).tolist() == [0.0] * len(judge.RATIO_GRID)
    assert judge.two_sample_log_lr(100, 5, 0, 0, RHO0).tolist() == [0.0] * len(judge.RATIO_GRID)


def test_one_sample_flags_a_rate_above_the_threshold_and_not_one_below() -> None:
    high, low = judge.new_e_process(), judge.new_e_process()
    for _ in range(12):
        high = judge.update_one_sample(high, 5, 3, 0.05)  # 60% vs a 5% trigger
        low = judge.update_one_sample(low, 100, 1, 0.05)  # 1%
    assert judge.crossed(high, 0.001)
    assert judge.e_value(low) < 1e-3
    assert judge.update_one_sample(low, 10, 10, 1.0) == low  # p0 = 1 can never be rejected


def test_mean_test_flags_slow_means_only() -> None:
    def histogram_of(latency_ms: float, count: int) -> list[int]:
        buckets = histogram.empty()
        buckets[histogram.bucket_of(latency_ms)] = count
        return buckets

    slow, fast = judge.new_e_process(), judge.new_e_process()
    for _ in range(3):
        slow = judge.update_mean(slow, histogram_of(9_000.0, 20), 5_000.0)
        fast = judge.update_mean(fast, histogram_of(4_900.0, 20), 5_000.0)
    assert judge.crossed(slow, 0.001)
    assert judge.e_value(fast) < 1.0


# ---------------------------------------------------------------- restarts (late regressions)


def test_restarted_runs_carry_prior_weights_summing_to_at_most_one() -> None:
    restarts = judge.Restarts(every=30.0, keep=6)
    weights = [math.exp(restarts.log_weight(j)) for j in range(100_000)]
    assert sum(weights) <= 1.0
    flat = judge.Restarts(every=30.0, keep=6, horizon=12)
    assert sum(math.exp(flat.log_weight(j)) for j in range(100)) == pytest.approx(1.0)


def test_a_late_regression_is_found_faster_with_restarts() -> None:
    good = [(90, 1, 10, 0)] * 300  # 5 minutes at 1-s ticks, nothing wrong
    bad = [(90, 0, 10, 1), (90, 1, 10, 0), (90, 0, 10, 1)] * 40
    restarts = judge.Restarts(every=30.0, keep=6)

    def ticks_to_flag(use_restarts: judge.Restarts | None) -> int:
        state = judge.new_e_process()
        for t, tick in enumerate(good + bad):
            state = judge.update_two_sample(state, *tick, RHO0, now=float(t), restarts=use_restarts)
            if t >= len(good) and judge.crossed(state, 0.004):
                return t - len(good)
        return 10**9

    assert ticks_to_flag(restarts) < ticks_to_flag(None)
    state = judge.new_e_process()
    for t, tick in enumerate(good):
        state = judge.update_two_sample(state, *tick, RHO0, now=float(t), restarts=restarts)
    runs = state["runs"]
    assert runs[0]["j"] == 0 and len(runs) == 1 + restarts.keep


def test_dropping_old_runs_only_lowers_the_e_value() -> None:
    ticks = [(90, 1, 10, 0)] * 200 + [(90, 0, 10, 2)] * 10
    kept, everything = judge.new_e_process(), judge.new_e_process()
    few, many = judge.Restarts(every=10.0, keep=2), judge.Restarts(every=10.0, keep=1000)
    for t, tick in enumerate(ticks):
        kept = judge.update_two_sample(kept, *tick, RHO0, now=float(t), restarts=few)
        everything = judge.update_two_sample(everything, *tick, RHO0, now=float(t), restarts=many)
        assert judge.log_e_value(kept) <= judge.log_e_value(everything) + 1e-9


def test_state_is_json_and_updates_do_not_mutate_their_input() -> None:
    import copy
    import json

    state = _feed_two_sample([(90, 1, 10, 2)])
    frozen = copy.deepcopy(state)
    judge.update_two_sample(state, 90, 0, 10, 5, RHO0, now=100.0, restarts=judge.Restarts())
    assert state == frozen
    assert json.loads(json.dumps(state)) == state


# ---------------------------------------------------------------- Ville's bound, by Monte Carlo


def _streams(
    rng: np.random.Generator, streams: int, ticks: int, p_b: float, p_c: float
) -> tuple[np.ndarray, ...]:
    """Realistic canary counts per 1-s tick: 100 rps, the candidate's share rising 5% -> 50%."""
    share = np.repeat([0.05, 0.10, 0.25, 0.50], math.ceil(ticks / 4))[:ticks]
    n = rng.poisson(100, size=(streams, ticks))
    n_c = rng.binomial(n, share)
    n_b = n - n_c
    return n_b, rng.binomial(n_b, p_b), n_c, rng.binomial(n_c, p_c)


def _running_log_e(
    n_b: np.ndarray, x_b: np.ndarray, n_c: np.ndarray, x_c: np.ndarray, every: int
) -> np.ndarray:
    """log E_t of the restart mixture (run 0 weight 1/2, run j weight 1/(2j(j+1)), all runs kept),
    computed with cumulative sums: run j's log LR at t is C[t] - C[j*every - 1]. As in the state,
    a run that has not started yet is left out of the sum."""
    increments = judge.two_sample_log_lr(n_b, x_b, n_c, x_c, RHO0)  # (S, T, K)
    cumulative = np.cumsum(increments, axis=1)
    streams, ticks, _ = cumulative.shape
    terms = [judge.log_mixture(cumulative) - math.log(2.0)]
    for j in range(1, ticks // every + 1):
        start = j * every
        run = np.full((streams, ticks), -np.inf)
        run[:, start:] = judge.log_mixture(
            cumulative[:, start:] - cumulative[:, start - 1 : start]
        ) - math.log(2.0 * j * (j + 1))
        terms.append(run)
    return np.asarray(np.logaddexp.reduce(np.stack(terms), axis=0))


def _binomial_margin(rate: float, trials: int) -> float:
    return 3.0 * math.sqrt(rate * (1 - rate) / trials)


@pytest.mark.slow
def test_ville_bound_holds_for_a_and_a_streams_and_a_naive_z_test_breaks_it() -> None:
    rng = np.random.default_rng(20240611)
    streams, ticks, level = 2000, 300, 0.05
    # the null's edge: candidate fails rho0 times as often as baseline, 2% errors
    n_b, x_b, n_c, x_c = _streams(rng, streams, ticks, 0.02, 0.02 * RHO0)
    log_e = _running_log_e(n_b, x_b, n_c, x_c, every=30)
    sequential = float(np.mean(log_e.max(axis=1) >= math.log(1 / level)))
    assert sequential <= level + _binomial_margin(level, streams)

    # the same harness, a fixed-sample one-sided z-test (candidate rate vs rho0 x baseline) at
    # every look: its false-alarm rate is far above its nominal level
    cum = [np.cumsum(a, axis=1).astype(float) for a in (n_b, x_b, n_c, x_c)]
    rate_b = cum[1] / np.maximum(cum[0], 1)
    rate_c = cum[3] / np.maximum(cum[2], 1)
    pooled_var = (
        rate_b * (1 - rate_b) * (RHO0**2 / np.maximum(cum[0], 1) + 1 / np.maximum(cum[2], 1))
    )
    z = (rate_c - RHO0 * rate_b) / np.sqrt(np.maximum(pooled_var, 1e-12))
    naive = float(np.mean((z[:, 10:] > stats.norm.ppf(1 - level)).any(axis=1)))
    assert naive > level + _binomial_margin(level, streams)


@pytest.mark.slow
def test_ville_bound_holds_for_identical_versions_at_realistic_counts() -> None:
    rng = np.random.default_rng(7)
    streams, ticks, level = 2000, 300, 0.02
    n_b, x_b, n_c, x_c = _streams(rng, streams, ticks, 0.005, 0.005)
    log_e = _running_log_e(n_b, x_b, n_c, x_c, every=30)
    assert float(np.mean(log_e.max(axis=1) >= math.log(1 / level))) <= level + _binomial_margin(
        level, streams
    )


def test_the_vectorised_restart_mixture_matches_the_state_machine() -> None:
    rng = np.random.default_rng(11)
    n_b, x_b, n_c, x_c = _streams(rng, 1, 95, 0.02, 0.06)
    vectorised = _running_log_e(n_b, x_b, n_c, x_c, every=30)[0]
    state = judge.new_e_process()
    restarts = judge.Restarts(every=30.0, keep=1000)
    for t in range(95):
        tick = (int(n_b[0, t]), int(x_b[0, t]), int(n_c[0, t]), int(x_c[0, t]))
        state = judge.update_two_sample(state, *tick, RHO0, now=float(t), restarts=restarts)
        assert judge.log_e_value(state) == pytest.approx(vectorised[t], abs=1e-4)


# ---------------------------------------------------------------- histograms, bounds, budget


def test_threshold_bucket_holds_the_baseline_quantile_and_waits_for_data() -> None:
    buckets = histogram.empty()
    for latency, count in ((10.0, 90), (50.0, 9), (400.0, 1)):
        buckets[histogram.bucket_of(latency)] += count
    assert judge.threshold_bucket(buckets, 0.95, min_count=200) is None
    assert judge.threshold_bucket(buckets, 0.95, min_count=100) == histogram.bucket_of(50.0)
    assert judge.threshold_bucket(buckets, 0.99, min_count=100) == histogram.bucket_of(50.0)
    assert judge.threshold_bucket(buckets, 0.995, min_count=100) == histogram.bucket_of(400.0)
    tau = histogram.bucket_of(50.0)
    assert histogram.count_above(buckets, tau) == 1


@pytest.mark.parametrize(("n", "x", "delta"), [(1000, 5, 0.01), (200, 0, 0.001), (50, 49, 0.05)])
def test_rate_upper_bound_is_clopper_pearson(n: int, x: int, delta: float) -> None:
    bound = judge.rate_upper_bound(n, x, delta)
    assert stats.binom.cdf(x, n, bound) == pytest.approx(delta, rel=1e-6)
    assert judge.rate_upper_bound(0, 0, delta) == 1.0


def test_split_alpha_is_weighted_bonferroni() -> None:
    parts = judge.split_alpha(0.01, {"errors": 2, "latency": 1, "other": 1})
    assert parts == pytest.approx({"errors": 0.005, "latency": 0.0025, "other": 0.0025})
    assert sum(parts.values()) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("looks", "expected"),
    [
        ([[0.0, 90.0]], False),  # one noisy look
        ([[0.0, 90.0], [5.0, 95.0], [10.0, 99.0]], False),  # 15 s do not cover 60 s
        ([[t, 90.0] for t in range(0, 65, 5)], True),
        ([[t, 70.0 if t % 10 else 81.0] for t in range(0, 65, 5)], False),  # mean 75.1 < 80
    ],
)
def test_window_mean_exceeds_needs_the_whole_duration(
    looks: list[list[float]], expected: bool
) -> None:
    assert judge.window_mean_exceeds(looks, 80.0, 60.0) is expected


def test_log_mixture_is_a_stable_log_mean_exp() -> None:
    values = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    assert judge.log_mixture(values) == pytest.approx([math.log(2.0), 1000.0])
    assert list(itertools.chain(judge.log_mixture(np.zeros((2, 3))))) == [0.0, 0.0]


# ---------------------------------------------------------------- correlated failures: dispersion


def test_a_dispersion_factor_tempers_every_likelihood_ratio() -> None:
    """With dispersion phi the e-value is the mixture of LR_k^(1/phi), every look re-scaled."""
    ticks = [(95, 1, 5, 2), (94, 0, 6, 1), (96, 2, 4, 3), (90, 0, 10, 4)]
    plain = _feed_two_sample(ticks)
    tempered = judge.new_e_process()
    for n_b, x_b, n_c, x_c in ticks:
        tempered = judge.update_two_sample(tempered, n_b, x_b, n_c, x_c, RHO0, dispersion=5.0)
    llr = np.asarray(plain["runs"][0]["llr"])  # type: ignore[index]
    expected = float(logsumexp(llr / 5.0) - math.log(llr.size))
    assert judge.log_e_value(tempered) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert judge.log_e_value(tempered) < judge.log_e_value(plain)
    # phi below 1 would sharpen the test: it is treated as 1
    floor = judge.update_two_sample(judge.new_e_process(), 95, 1, 5, 2, RHO0, dispersion=0.5)
    one = judge.update_two_sample(judge.new_e_process(), 95, 1, 5, 2, RHO0)
    assert judge.log_e_value(floor) == judge.log_e_value(one)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_a_tempered_ratio_is_fair_for_clumps_no_larger_than_phi(size: int) -> None:
    """A clump of `size` failures goes wholly to the candidate with the null's probability theta0:
    E[LR_k^(size/phi)] <= 1 for size <= phi (Jensen), > 1 for the large alternatives when
    size > phi: why phi must follow the clump size."""
    phi = 3.0
    theta0 = _theta(95, 5, RHO0)
    for multiplier in judge.RATIO_GRID:
        theta_k = _theta(95, 5, RHO0 * multiplier)
        a, b = theta_k / theta0, (1 - theta_k) / (1 - theta0)
        mean = theta0 * a ** (size / phi) + (1 - theta0) * b ** (size / phi)
        if size <= phi:
            assert mean <= 1.0 + 1e-12
        elif multiplier >= 10:
            assert mean > 1.0


def _runs(rng: np.random.Generator, looks: int, n: int, error: float, burst: float) -> list[int]:
    """Failures per look of `n` requests, failures in geometric runs of mean `burst`."""
    out, failing = [], bool(rng.random() < error)
    left = int(rng.geometric(1 / burst if failing else error / (burst * (1 - error))))
    for _ in range(looks):
        failed, todo = 0, n
        while todo:
            take = min(todo, left)
            failed += take if failing else 0
            todo, left = todo - take, left - take
            if not left:
                failing = not failing
                left = int(rng.geometric(1 / burst if failing else error / (burst * (1 - error))))
        out.append(failed)
    return out


def _phi(base: list[int], cand: list[int], n_b: int, n_c: int) -> float:
    settings = judge.Dispersion()
    state = judge.new_dispersion()
    for x_b, x_c in zip(base, cand, strict=True):
        state = judge.update_dispersion(state, "base", n_b, x_b, settings)
        state = judge.update_dispersion(state, "cand", n_c, x_c, settings)
    return judge.dispersion_factor(state, settings)


@pytest.mark.parametrize(("burst", "low", "high"), [(1.0, 1.0, 2.0), (3.0, 3.0, 9.0), (10.0, 10.0, 30.0)])
def test_the_dispersion_factor_follows_the_mean_run_length(
    burst: float, low: float, high: float
) -> None:
    """300 looks of 95 + 5 requests at 2% errors: phi near 2 L - 1 for runs of mean L (seeded;
    median of 20 streams)."""
    rng = np.random.default_rng(7)
    values = [
        _phi(_runs(rng, 300, 95, 0.02, burst), _runs(rng, 300, 5, 0.02, burst), 95, 5)
        for _ in range(20)
    ]
    assert low <= float(np.median(values)) <= high


def test_a_steady_gross_failure_is_not_taken_for_runs() -> None:
    """A candidate failing half its requests, independently: phi stays near 1 once the candidate
    has served the warmup, while one run of 20 failures in an otherwise clean candidate raises
    it far above that."""
    rng = np.random.default_rng(3)
    base = [int(v) for v in rng.binomial(95, 0.005, 40)]
    gross = [int(v) for v in rng.binomial(5, 0.5, 40)]
    # before the candidate served 48 requests, phi is at least 2 * 10 - 1
    assert _phi(base[:9], gross[:9], 95, 5) >= 19.0
    # then it falls towards 1 as blocks show a steady rate (the prior, 3, weighs 4 failures)
    assert _phi(base[:14], gross[:14], 95, 5) < 8.0
    assert _phi(base, gross, 95, 5) < 4.0  # (3.5 with the local rate, below 3 with the global)
    run = [0, 0, 5, 5, 5, 5] + [0] * 34
    assert _phi(base, run, 95, 5) > 5.0
