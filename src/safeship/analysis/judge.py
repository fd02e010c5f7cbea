"""The statistical judge: anytime-valid sequential tests on counts, histograms and gauges.

Pure functions, no I/O. The canary policy (`policies/safeship.py`) feeds them one tick of data at a
time and keeps their state (plain JSON: dicts, lists, floats).

Why sequential tests
--------------------
A fixed-sample test checked after every tick rolls back good releases far more often than its
nominal level says (the "peeking" problem), so classic canary systems look rarely (Flagger: one
check per minute, Kayenta: one Mann-Whitney per interval) and wait minutes. An *e-process* E_t is a
nonnegative process with E_0 <= 1 that is a supermartingale while the null hypothesis holds; Ville's
inequality then gives

    P(sup_t E_t >= 1/a) <= a,

so the judge may look after every tick, forever, and still rolls back a release that satisfies
the null with probability at most `a` (Lindon et al., KDD 2022; Howard & Ramdas, 2021).

The tests
---------
* `two_sample_log_lr`: candidate vs baseline on rare events (failed requests, or requests slower
  than a latency bucket). Null H0: rate_c <= rho0 * rate_b. With Poisson counts, conditional on
  the tick's total m = x_b + x_c, x_c ~ Binomial(m, theta(rho)) with
  theta(rho) = n_c rho / (n_c rho + n_b). The per-tick factor
  LR_k = [theta(rho_k)/theta(rho0)]^x_c [(1-theta(rho_k))/(1-theta(rho0))]^x_b for rho_k > rho0 has
  conditional mean <= 1 under H0, whatever the exposures n_b, n_c of the tick (weights may change
  every tick). It also holds exactly for Bernoulli requests (independent binomial counts), which is
  what a router really sees: LR_k = a^x_c b^x_b factorises, so
      E[LR_k] = (1 + p_c (a-1))^n_c (1 + p_b (b-1))^n_b
              <= exp(n_b n_c (rho_k - rho0) (p_c/rho0 - p_b) / (n_c rho_k + n_b)) <= 1
  whenever p_c <= rho0 p_b (using log(1+u) <= u; a - 1 = n_b (rho_k-rho0) / (rho0 D_k),
  b - 1 = -n_c (rho_k-rho0) / D_k, D_k = n_c rho_k + n_b). `tests/unit/analysis/test_judge.py`
  checks this identity against scipy by brute-force summation.
* `one_sample_log_lr`: one version's rate against a fixed p0 (the seed's absolute triggers, single-
  version phases, sign tests on gauges). Null p <= p0; E[LR_k] = (p p_k/p0 + (1-p)(1-p_k)/(1-p0))^n
  <= 1 for p <= p0.
* `mean_bet_log_wealth`: mean latency above an absolute threshold mu0. For a nonnegative latency X
  with E[X] <= mu0 the bet 1 + lam (X/mu0 - 1), lam in [0, 1), is nonnegative with mean <= 1
  (testing by betting, Waudby-Smith & Ramdas 2023): no variance model, only nonnegativity. The
  router keeps a histogram, not single latencies, so each request bets on its bucket's lower
  bound L <= X; the bet is increasing in X, so this only lowers the wealth and stays valid. One
  bet per request is far stronger than one bet on each tick's mean (a tick of 100 requests
  whose mean is 1.8 mu0 multiplies the wealth by at most 1.8 as one bet, by ~e^50 as 100).

Mixtures
--------
Each test mixes a grid of alternatives with equal prior weight (a mixture of test supermartingales
is one), so a small and a huge regression are both caught without choosing the effect size in
advance; the price is log(K) nats of evidence. To catch a regression that starts late (the
delayed-errors scenario), evidence from a good early period must not dilute it: besides the run
started at time 0 (prior weight 1/2), a fresh run starts every `Restarts.every` seconds; run j has
prior weight 1/(2 j (j+1)) (these sum to 1). The sum over all runs is still a test supermartingale;
the state keeps only the most recent runs, and dropping a nonnegative term only lowers E_t, so the
bound stays valid. This is the e-detector idea of Shin, Ramdas & Rinaldo (2022) with a fixed,
summable prior over change points, so that it bounds the probability of any false alarm rather
than the average run length. A run started at two minutes (j = 4) pays log(40) = 3.7 nats for
its prior; the run from 0 would instead carry the good minutes' evidence against every
alternative. In simulation of the delayed-errors scenario (errors from 120 s) restarts cut the
candidate's failed requests before rollback from 28 to 20 (with a square-root ramp).

Correlated failures
-------------------
The bound above is exact when requests fail independently given their rates. Real failures are
not independent: a retry storm, a connection reset or a bad host fails several consecutive
requests, and an incident (a dependency goes down) fails requests of every version at once. The
judge covers two kinds of dependence, and says which it does not.

*Shocks shared by every version in the same look* (incidents, load, time of day) are covered
exactly, by conditioning. The two-sample test never compares a version with a fixed rate: within
each look it compares the candidate's share of that look's failures with its share of that
look's requests, and the factor above has mean <= 1 for any rates p_b,t and p_c,t <= rho0 p_b,t
of look t. A shock that multiplies (or raises to a common floor) both versions' rates in the same
look leaves the null true in that look, so it cannot build evidence. The seed's absolute triggers
compare one version with a fixed threshold and cannot condition this way; while a baseline serves,
the policy skips, for them, each look in which the baseline itself failed more than the
threshold. Which looks are skipped depends only on the baseline's counts, independent of the
candidate's, so the trigger's test stays valid for the looks it keeps.

*Runs of failures within a version* are covered approximately, by a quasi-likelihood correction.
A run of s failures enters the likelihood ratio as s independent trials, so the evidence of a run
is overstated about s-fold: in an A/A harness whose failures come in runs of mean 3, the
uncorrected judge rolled back 13% to 30% of identical releases. If failures come in clumps whose
sizes S are independent of which version they hit, each clump going wholly to the candidate with
the null's probability, then LR^(1/phi) still has mean <= 1 for every clump with S <= phi
(x -> x^(S/phi) is concave, Jensen), and the variance of the counts is E[S (S - 1)] / E[S] + 1 = phi
times the binomial one (2 L - 1 for geometric runs of mean L). The tests therefore use
LR^(1/phi) (`update_two_sample(..., dispersion=phi)`; every past look is re-scaled by the
current phi, as a quasi-likelihood deviance is), with phi estimated from the counts of both
versions (`Dispersion`, `dispersion_factor`): blocks of a version's consecutive requests, the
excess of x (x - 1) over its binomial value n (n - 1) p_L p_R. The rate is *local*: p_L and p_R
are the version's rates in the 8 blocks on each side of the block, leaving out the block and its
neighbours, so that a run is not mistaken for a rate (a run is short against the window and
still stands out), and a change of rate is not mistaken for runs (a late-onset regression, clean
then 3% against 0.5%, contributes excess only near the shift; compared with the version's
global rate, every block after the shift showed excess and phi read 6 to 15, hiding the
regression). The two sides share no block, so their product is unbiased for p^2 at a steady
rate. Looks of more than `Dispersion.max_look` requests (a monitoring window's 30-s looks) are
not folded in: in blocks that large any change of rate outweighs runs of 10 (the excess grows
with n^2), so phi keeps the value of the smaller looks. The state is bounded: a block's term is
summed once its window is complete, and only the last 16 blocks are kept. phi is never below 1
and, until every version has served `Dispersion.warmup` requests, never below 2 * 10 - 1, the
value for runs of mean 10. Where the replaced version's record measured its own dispersion
before the deployment (`dispersion_factor(..., known=...)`), that value is the prior and the
warmup floor instead, and side by side phi is never below it. This is what the guarantee now
claims:

    identical versions are rolled back with probability about alpha or less when failures
    come in geometric runs of mean length up to 10 requests within a version (each version's
    runs independent of the other's), and when shocks hit all versions in the same look.

It is no longer Ville's exact bound: runs longer than phi exceed the Jensen argument, and phi is
estimated from the same data. It is checked by simulation instead, and the check can fail:
`tests/unit/analysis/test_correlated_failures.py` (run it as a script for the whole sweep) feeds
the policy 200 seeded canaries per cell, runs of mean 1, 3 and 10, 5 and 100 requests/s, with and
without a shared incident (20% failures for 30 s), and asserts at most 6 false rollbacks per cell.

Not covered:

* runs much longer than 10 on average, or a single very long run at the candidate's start: 50
  failures in its first 60 requests look like a gross failure and are rolled back (at mean 10,
  a few canaries in 10,000);
* dependence tied to the candidate: failures that come with the candidate's weight changes, a
  bad host, zone or dependency that only the candidate's instances use. Those hit the candidate
  alone; the judge treats them as the candidate's regression, which is what a user sees;
* shocks that hit the versions at different times or with different strength (an incident on
  the nodes of one version only, a cache that only the baseline has warmed);
* versions whose runs differ in length at the same failure rate: phi pools both versions and
  is dominated by the busier one;
* runs that start only in looks larger than `Dispersion.max_look` (a version that serves its
  whole life in 30-s looks at high traffic, or whose runs begin after the canary): phi is not
  re-estimated there, and keeps the canary's value (or the warmup floor, if there was none);
* a rate that changes within the window as often as runs do (a rate that flaps every few
  blocks) is read as runs, as before;
* phases where one version serves alone (blue-green after the switch, recreate, monitoring
  after promotion): runs are corrected for (phi, and the remembered baseline's rate bound uses
  the effective counts n / phi, x / phi), but there is no concurrent control, so a shared incident
  there is indistinguishable from a regression and is rolled back;
* latency: the slow-request counts are assumed independent given the look. A latency shock that
  hits both versions alike cancels by the same conditioning; slow requests that come in runs do
  not get a dispersion correction.

Budget
------
`split_alpha` shares the overall alpha across tests (weighted Bonferroni): if test i rolls back at
E_i >= 1/alpha_i with sum(alpha_i) = alpha, the chance that a release equal to its baseline is
rolled back, over all metrics and all looks, is <= alpha (under the dependence described in
"Correlated failures"). "Too little data" never crosses a bound:
a tick without events multiplies every likelihood ratio by exactly 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from safeship import histogram

# Alternatives as multiples of the null: rho_k = rho0 * m (two-sample), odds_k = odds0 * m
# (one-sample). From "a bit worse than tolerated" to "everything fails".
RATIO_GRID: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
# One-sample tests hold a share to a fixed bound (1% of requests beyond the most a p99 may be, a
# record's failure rate): at high traffic a share 10-25% over it is both common and provable,
# so their grid starts closer to the null, for log(9/7) = 0.25 nats more per decision. The
# two-sample tests keep the coarser grid: their gross-failure target (15 s) has no room for it.
FINE_GRID: tuple[float, ...] = (1.1, 1.25, *RATIO_GRID)
# Alternatives for the tests of the opposite null, "the candidate is worse than tolerated"
# (early promotion): multiples of the null's ratio or odds below 1, from "a bit better than the
# tolerance" to "far better". For these alternatives the same likelihood ratios have mean <= 1
# whenever the rate is at or above the null's (the identities in "The tests" with the signs
# turned), so the tests are e-processes for that null.
WITHIN_GRID: tuple[float, ...] = (0.9, 0.75, 0.5, 0.25, 0.1)
# Fractions of wealth each request bets on "mean > mu0": small bets for heavy-tailed latencies and
# mild regressions, large ones for gross ones.
BET_GRID: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 0.9)
_LOWER_MS = np.array((0.0, *histogram.BOUNDS_MS))  # lower bound of each histogram bucket
_MAX_LOG_E = 690.0  # exp() of more overflows a float; such evidence is reported as e = 1e299

State = dict[str, Any]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Restarts:
    """Change-point runs: a fresh run every `every` seconds; keep the `keep` most recent ones.

    Run j >= 1 has prior weight 1/(2 j (j+1)), or, with `horizon` > 0, 1/(2 horizon) for
    j <= horizon and no runs after it (flat over the first `horizon` restarts)."""

    every: float = 30.0
    keep: int = 6
    horizon: int = 0

    def log_weight(self, j: int) -> float:
        if j == 0:
            return -math.log(2.0)
        if self.horizon > 0:
            return -math.log(2.0 * self.horizon) if j <= self.horizon else -math.inf
        return -math.log(2.0 * j * (j + 1))


# ---------------------------------------------------------------- likelihood ratios (vectorised)


def two_sample_log_lr(
    n_b: ArrayLike,
    x_b: ArrayLike,
    n_c: ArrayLike,
    x_c: ArrayLike,
    rho0: float,
    multipliers: Sequence[float] = RATIO_GRID,
) -> FloatArray:
    """log LR_k of one tick for every alternative rho_k = rho0 * m_k; shape counts.shape + (K,).

    log LR_k = x_c log(rho_k / rho0) + (x_b + x_c) log(D_0 / D_k), D = n_c rho + n_b.
    A tick where either version served nothing carries no information (LR = 1).
    """
    nb, xb, nc, xc = (np.asarray(v, dtype=np.float64)[..., None] for v in (n_b, x_b, n_c, x_c))
    ratios = np.asarray(multipliers, dtype=np.float64)
    rho_k = rho0 * ratios
    served = (nb > 0) & (nc > 0)
    d0 = np.where(served, nc * rho0 + nb, 1.0)
    dk = np.where(served, nc * rho_k + nb, 1.0)
    out = xc * np.log(ratios) + (xb + xc) * np.log(d0 / dk)
    return np.asarray(np.where(served, out, 0.0), dtype=np.float64)


def one_sample_log_lr(
    n: ArrayLike, x: ArrayLike, p0: float, multipliers: Sequence[float] = FINE_GRID
) -> FloatArray:
    """log LR_k of x failures in n trials, alternatives p_k with odds(p_k) = m_k * odds(p0)."""
    nn, xx = (np.asarray(v, dtype=np.float64)[..., None] for v in (n, x))
    p_k = _alternatives(p0, multipliers)
    out = xx * np.log(p_k / p0) + (nn - xx) * np.log((1 - p_k) / (1 - p0))
    return np.asarray(out, dtype=np.float64)


def mean_bet_log_wealth(
    buckets: ArrayLike, mu0: float, bets: Sequence[float] = BET_GRID
) -> FloatArray:
    """sum over requests of log(1 + lam (L/mu0 - 1)) per bet lam, L the request's bucket's lower
    bound in ms; `buckets` has the histogram's buckets on its last axis. Shape (..., len(bets))."""
    counts = np.asarray(buckets, dtype=np.float64)
    lam = np.asarray(bets, dtype=np.float64)
    per_request = np.log1p(np.multiply.outer(_LOWER_MS / mu0 - 1.0, lam))  # (buckets, bets)
    return np.asarray(counts @ per_request, dtype=np.float64)


def _alternatives(p0: float, multipliers: Sequence[float]) -> FloatArray:
    odds = p0 / (1.0 - p0) * np.asarray(multipliers, dtype=np.float64)
    return np.asarray(odds / (1.0 + odds), dtype=np.float64)


def log_mixture(log_lr: ArrayLike) -> FloatArray:
    """log of the equal-weight mixture over the last axis: log(mean_k exp(log_lr_k))."""
    values = np.asarray(log_lr, dtype=np.float64)
    top = np.max(values, axis=-1, keepdims=True)
    inner = np.log(np.mean(np.exp(values - top), axis=-1))
    return np.asarray(inner + top[..., 0], dtype=np.float64)


# ---------------------------------------------------------------- per-tick increments (scalars)
#
# The policy updates one tick at a time; plain floats are several times faster than numpy for a
# grid of seven. `test_judge.py` checks them against the vectorised functions above.


def _two_sample_step(
    n_b: float, x_b: float, n_c: float, x_c: float, rho0: float, multipliers: Sequence[float]
) -> list[float]:
    if n_b <= 0 or n_c <= 0 or x_b + x_c <= 0:
        return [0.0] * len(multipliers)
    m = x_b + x_c
    d0 = n_c * rho0 + n_b
    return [x_c * math.log(r) + m * math.log(d0 / (n_c * rho0 * r + n_b)) for r in multipliers]


def _one_sample_step(n: float, x: float, p0: float, multipliers: Sequence[float]) -> list[float]:
    if n <= 0:
        return [0.0] * len(multipliers)
    odds0 = p0 / (1.0 - p0)
    out = []
    for r in multipliers:
        p = odds0 * r / (1.0 + odds0 * r)
        out.append(x * math.log(p / p0) + (n - x) * math.log((1.0 - p) / (1.0 - p0)))
    return out


def _mean_bet_step(buckets: Sequence[int], mu0: float, bets: Sequence[float]) -> list[float]:
    table = _bet_table(mu0, tuple(bets))
    if len(buckets) > len(table):
        raise IndexError(f"a histogram of {len(buckets)} buckets, not {len(table)}")
    out = [0.0] * len(bets)
    # bucket by bucket, each bet's sum grows by count * row[k], in the same order as ever
    for count, row in zip(buckets, table, strict=False):
        if count:
            out = [o + count * r for o, r in zip(out, row, strict=True)]
    return out


@functools.lru_cache(maxsize=32)
def _bet_table(mu0: float, bets: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """log(1 + lam (L/mu0 - 1)) per bucket and bet: one row per histogram bucket."""
    return tuple(
        tuple(math.log1p(lam * (float(lower) / mu0 - 1.0)) for lam in bets) for lower in _LOWER_MS
    )


# ---------------------------------------------------------------- e-process state


def new_e_process() -> State:
    """A fresh e-process: no runs yet (E = 1 until the first update). The state holds the runs
    (start index `j`, log prior weight `lw`, log likelihood ratio per alternative `llr`, summed
    counts `n`) and `log_e`, the mixture, kept so that a look need not recompute it."""
    return {"origin": None, "runs": []}


def update_two_sample(
    state: Mapping[str, Any],
    n_b: float,
    x_b: float,
    n_c: float,
    x_c: float,
    rho0: float,
    *,
    now: float | None = None,
    restarts: Restarts | None = None,
    multipliers: Sequence[float] = RATIO_GRID,
    dispersion: float = 1.0,
) -> State:
    """Fold one tick of (requests, events) per version into a two-sample e-process.

    `dispersion` (phi >= 1) turns every likelihood ratio into the quasi-likelihood ratio
    LR^(1/phi) from this look on (see "Correlated failures")."""
    step = _two_sample_step(n_b, x_b, n_c, x_c, rho0, multipliers)
    return _advance(state, step, (n_b, x_b, n_c, x_c), now, restarts, dispersion)


def update_one_sample(
    state: Mapping[str, Any],
    n: float,
    x: float,
    p0: float,
    *,
    now: float | None = None,
    restarts: Restarts | None = None,
    multipliers: Sequence[float] = FINE_GRID,
    dispersion: float = 1.0,
) -> State:
    """Fold one tick of (trials, events) into a one-sample e-process for H0: p <= p0.

    p0 >= 1 can never be rejected: the state is returned unchanged. `dispersion` as for
    `update_two_sample`."""
    if not 0.0 < p0 < 1.0:
        return dict(state)
    step = _one_sample_step(n, x, p0, multipliers)
    return _advance(state, step, (n, x), now, restarts, dispersion)


def update_mean(
    state: Mapping[str, Any],
    buckets: Sequence[int],
    mu0: float,
    latency_sum: float = 0.0,
    *,
    now: float | None = None,
    restarts: Restarts | None = None,
    bets: Sequence[float] = BET_GRID,
) -> State:
    """Fold one tick's latency histogram into a test of H0: mean latency <= mu0 (ms).
    `latency_sum` (ms) is only kept for the report."""
    step = _mean_bet_step(buckets, mu0, bets)
    return _advance(state, step, (sum(buckets), latency_sum), now, restarts)


def _advance(
    state: Mapping[str, Any],
    step: Sequence[float],
    counts: Sequence[float],
    now: float | None,
    restarts: Restarts | None,
    phi: float = 1.0,
) -> State:
    runs: list[dict[str, Any]] = list(state.get("runs", []))
    origin = state.get("origin")
    if origin is None:
        origin = 0.0 if now is None else now
    phi = max(1.0, float(phi))
    changed = not runs or "log_e" not in state or phi != float(state.get("phi", 1.0))
    if not runs:
        runs.append(_new_run(0, len(step), len(counts), restarts))
    if restarts is not None and now is not None:
        latest = int((now - float(origin)) // restarts.every)
        fresh = latest >= 1 and latest > max(int(r["j"]) for r in runs)
        if fresh and math.isfinite(restarts.log_weight(latest)):
            runs.append(_new_run(latest, len(step), len(counts), restarts))
            runs = [runs[0], *runs[1:][-restarts.keep :]]
            changed = True
    informative = any(step)
    floor = math.floor
    updated = []
    for run in runs:
        llr = run["llr"]
        if informative:
            # Rounded down to 1e-6: a compact state; rounding down only ever lowers E_t, so the
            # Ville bound still holds. A tick without information leaves the lists as they were.
            llr = [floor((a + b) * 1e6) / 1e6 for a, b in zip(llr, step, strict=True)]
        n = [a + b for a, b in zip(run["n"], counts, strict=True)]
        updated.append({"j": run["j"], "lw": run["lw"], "llr": llr, "n": n})
    log_e = _log_e_of(updated, phi) if informative or changed else float(state["log_e"])
    out: State = {"origin": origin, "runs": updated, "log_e": log_e}
    if phi != 1.0:
        out["phi"] = phi
    return out


def _new_run(j: int, k: int, c: int, restarts: Restarts | None) -> dict[str, Any]:
    log_weight = 0.0 if restarts is None else restarts.log_weight(j)
    return {"j": j, "lw": log_weight, "llr": [0.0] * k, "n": [0] * c}


def _run_log_e(run: Mapping[str, Any], phi: float = 1.0) -> float:
    """log of the run's prior weight times its mixture of quasi-likelihood ratios LR_k^(1/phi)."""
    llr = [float(v) / phi for v in run["llr"]] if phi != 1.0 else run["llr"]
    top = float(max(llr))
    exp = math.exp
    total = 0.0
    for value in llr:
        total += exp(value - top)
    return float(run["lw"]) + top + math.log(total / len(llr))


def _log_e_of(runs: Sequence[Mapping[str, Any]], phi: float = 1.0) -> float:
    # `_run_log_e` of each run, written out here (the same operations in the same order): this
    # runs for every test at every look, and the calls cost as much as the arithmetic
    exp, log = math.exp, math.log
    logs = []
    for run in runs:
        llr = [float(v) / phi for v in run["llr"]] if phi != 1.0 else run["llr"]
        top = float(max(llr))
        total = 0.0
        for value in llr:
            total += exp(value - top)
        logs.append(float(run["lw"]) + top + log(total / len(llr)))
    top = max(logs)
    return top + log(sum([exp(v - top) for v in logs]))


def log_e_value(state: Mapping[str, Any]) -> float:
    """log E_t: the mixture over runs and alternatives (0.0 before any data)."""
    if "log_e" in state:
        return float(state["log_e"])
    runs = state.get("runs", [])
    return _log_e_of(runs, float(state.get("phi", 1.0))) if runs else 0.0


def e_value(state: Mapping[str, Any]) -> float:
    """E_t (capped at about 1e299 so that it stays a finite, JSON-friendly float)."""
    return math.exp(min(log_e_value(state), _MAX_LOG_E))


def strongest_run(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run that carries the most evidence: its start index and its summed counts."""
    runs = state.get("runs", [])
    if not runs:
        return None
    phi = float(state.get("phi", 1.0))
    best = max(runs, key=lambda run: _run_log_e(run, phi))
    return {"j": int(best["j"]), "counts": [float(v) for v in best["n"]]}


def counts_since_start(state: Mapping[str, Any]) -> list[float]:
    """The counts summed over every look the e-process has taken (its first run's); [] before any."""
    runs = state.get("runs", [])
    return [float(v) for v in runs[0]["n"]] if runs else []


def crossed(state: Mapping[str, Any], alpha: float) -> bool:
    """True once E_t >= 1/alpha: reject the null at level alpha (valid at any look)."""
    return log_e_value(state) >= -math.log(alpha)


# ---------------------------------------------------------------- dispersion of failure counts


@dataclass(frozen=True)
class Dispersion:
    """How the dispersion factor phi of failure counts is estimated (see "Correlated failures").

    Each version's requests are cut into consecutive blocks of at least `block` requests (whole
    looks); the block still being filled counts too, so a run in progress raises phi at once.
    phi - 1 is estimated by

        sum over blocks of [x (x - 1) - n (n - 1) p_L p_R]  /  failures,

    which is about 0 for independent failures at a rate that changes slowly and E[S (S - 1)] /
    E[S] when failures come in clumps of size S. p_L and p_R are *local* rates: the version's
    failures over its requests in the `window` blocks on the left and on the right of block i,
    leaving out block i and its two neighbours (a run cut by a block boundary is one run), each
    shrunk towards the pooled rate of every version by `shrink` requests; where one side has no
    blocks yet (the latest ones) the other side's rate is squared. Leaving block i out keeps a
    version's first run of failures from being taken for its rate (one run in an otherwise
    clean stream shows x (x - 1)), and a gross failure fails in every block and shows no
    excess. Taking the rate locally keeps a change of
    rate from being taken for runs: when the rate shifts (a late-onset regression) only the
    blocks within `window` of the shift see a rate other than their own, while a run, shorter
    than a block or two, still stands out against the blocks around it.

    A block's term is final once `window` blocks follow it; it is then added to a running sum and
    only the last 2 `window` blocks are kept, so the state stays small. The blocks still missing
    part of their right-hand window are re-evaluated at every look with what there is.
    The estimate is shrunk towards `prior` with the weight of `prior_weight` failures and is
    never below 1.

    Looks of more than `max_look` requests (the 30-s looks of a monitoring window at full
    traffic) are not folded in. In a block that large, runs of up to `burst` failures add about
    (2 `burst` - 2) per failure while any change of rate between neighbouring blocks adds
    n (n - 1) (p1^2 - p0 p1), which grows with n^2: a late-onset regression of 0.5% -> 3% in
    blocks of 1500 requests read as phi ~ 14. phi then keeps the value estimated from the
    smaller looks before (and is at least 2 `burst` - 1 if there were none: the warmup floor).

    Until every version has served `warmup` requests, phi is at least 2 `burst` - 1, the value
    for geometric runs of mean `burst`: a version's first run of failures and a gross failure
    look alike in its first requests (both fail in every block seen so far), and only more
    requests tell a run that ends from a rate that stays."""

    block: int = 16
    window: int = 8
    max_look: int = 1024
    prior: float = 3.0
    prior_weight: float = 4.0
    shrink: float = 16.0
    burst: float = 10.0
    warmup: int = 48

    @property
    def worst(self) -> float:
        """E[S (S - 1)] / E[S] + 1 for geometric runs S of mean `burst`."""
        return 2.0 * self.burst - 1.0


def new_dispersion() -> State:
    return {}


def _new_counts() -> dict[str, Any]:
    # n, x: the version's totals; bn, bx: the block being filled; ring: the last complete blocks
    # as [n, x], oldest first; settled: the summed terms of the blocks dropped from the ring.
    return {"n": 0.0, "x": 0.0, "bn": 0.0, "bx": 0.0, "ring": [], "settled": 0.0}


def update_dispersion(
    state: Mapping[str, Any], version: str, n: float, x: float, settings: Dispersion
) -> State:
    """Fold one look's (requests, failures) of `version` into the dispersion counts. A look of
    more than `settings.max_look` requests is left out: phi keeps the value of the smaller looks
    before it (see `Dispersion`)."""
    if n <= 0:
        return dict(state)
    if n > settings.max_look:
        # the version is still registered: with no smaller look, the warmup floor holds
        return {**state, version: state.get(version) or _new_counts()}
    old = state.get(version) or {}
    c = {key: old.get(key, value) for key, value in _new_counts().items()}
    c["n"], c["x"] = float(c["n"]) + n, float(c["x"]) + x
    c["bn"], c["bx"] = float(c["bn"]) + n, float(c["bx"]) + x
    if c["bn"] >= settings.block:
        ring = [*c["ring"], [c["bn"], c["bx"]]]
        c["bn"], c["bx"] = 0.0, 0.0
        w = settings.window
        if len(ring) > w:
            # the block `w` from the end now has its whole window: its term is final
            i = len(ring) - 1 - w
            blocks = [(float(b[0]), float(b[1])) for b in ring]
            p_ref = _reference_rate({**state, version: c})
            c["settled"] = float(c["settled"]) + _term(blocks, i, w, settings.shrink, p_ref)
        c["ring"] = ring[-2 * w :]
    return {**state, version: c}


def _reference_rate(state: Mapping[str, Any]) -> float:
    """The rate the local rates are shrunk towards: every version's failures over requests,
    pooled (the busier version's, mostly: a version's own rate would take its first run for its
    rate, the other version's alone would pull a quiet version's local rates towards a run)."""
    total_n = sum(float(v["n"]) for v in state.values())
    return sum(float(v["x"]) for v in state.values()) / total_n if total_n > 0 else 0.0


def _term(
    blocks: Sequence[tuple[float, float]], i: int, window: int, shrink: float, p_ref: float
) -> float:
    """x (x - 1) - n (n - 1) p_L p_R for block i: p_L and p_R the rates of the blocks within
    `window` of i on its left and on its right, not next to it, each shrunk towards p_ref by
    `shrink` requests. The two sides share no block, so E[p_L p_R] = p^2 at a steady rate, where
    the square of one pooled rate would be p^2 + Var and bias phi low. A side without blocks
    (the first blocks, the latest ones) is replaced by the other side."""
    n_i, x_i = blocks[i]
    left = blocks[max(0, i - window) : max(0, i - 1)]
    right = blocks[i + 2 : i + window + 1]
    if x_i < 2:
        # a block with at most one failure is expected to fail at the rate of such blocks: a
        # run nearby would otherwise count its failures in twice (as its excess and as rate)
        left = [b for b in left if b[1] < 2]
        right = [b for b in right if b[1] < 2]
    rates = [
        (sum(b[1] for b in side) + shrink * p_ref) / (sum(b[0] for b in side) + shrink)
        for side in (left, right)
        if side
    ]
    if not rates:
        rates = [p_ref]
    p_sq = rates[0] * rates[-1]
    return x_i * (x_i - 1.0) - n_i * (n_i - 1.0) * p_sq


def dispersion_factor(state: Mapping[str, Any], settings: Dispersion, known: float | None = None) -> float:
    """phi >= 1 from the counts of every version (pooled): failures seen so far, shrunk to the
    prior while they are few.

    `known`: the dispersion the service's own record measured before the deployment (the
    replaced version's failures, slice by slice, over hours). When given it is both the prior
    and the warmup floor, in place of the generic `prior` and the worst case 2 `burst` - 1: the
    service has shown how its failures cluster, so a new version that fails in runs no longer
    than its record's is judged as such from its first request, and one whose record shows
    independent failures is not judged as if they came in runs of 10."""
    excess, failures = 0.0, 0.0
    p_ref = _reference_rate(state)  # the same for every version: worked out once
    for c in state.values():
        if float(c["n"]) <= 0:
            continue
        excess += _excess(c, p_ref, settings)
        failures += float(c["x"])
    prior = settings.prior_weight
    phi = (prior * (settings.prior if known is None else known) + failures + excess) / (prior + failures)
    if any(float(c["n"]) < settings.warmup for c in state.values()):
        phi = max(phi, settings.worst if known is None else known)
    return max(1.0, phi)


def _excess(c: Mapping[str, Any], p_ref: float, settings: Dispersion) -> float:
    """The settled terms plus those of the blocks whose window is not yet complete (the last
    `window` complete blocks and the block being filled)."""
    blocks = [(float(b[0]), float(b[1])) for b in c.get("ring", [])]
    if float(c.get("bn", 0.0)) > 0:
        blocks.append((float(c["bn"]), float(c["bx"])))
    w = settings.window
    # blocks before this index had their term settled when the window behind them filled
    first = max(0, len(c.get("ring", [])) - w)
    open_terms = sum(_open_terms(blocks, first, w, settings.shrink, p_ref))
    return float(c.get("settled", 0.0)) + open_terms


def _open_terms(
    blocks: Sequence[tuple[float, float]], first: int, window: int, shrink: float, p_ref: float
) -> list[float]:
    """`_term(blocks, i, window, shrink, p_ref)` for every block i from `first` on, with each
    side's counts taken as differences of running sums instead of summed block by block: at
    every look this is done for a dozen or more blocks per version, each summing up to two
    windows. Counts are whole numbers (requests, failures), whose sums a float holds exactly in
    any order, so every term is exactly `_term`'s; other counts are left to `_term` itself."""
    ns = [b[0] for b in blocks]
    xs = [b[1] for b in blocks]
    if not (all(map(float.is_integer, ns)) and all(map(float.is_integer, xs))):
        return [_term(blocks, i, window, shrink, p_ref) for i in range(first, len(blocks))]
    # running sums of n and x over all blocks, and over the blocks with fewer than 2 failures
    # (the only ones a block with fewer than 2 failures is compared with), and how many those are
    few = [x < 2 for x in xs]
    all_n = [0.0, *accumulate(ns)]
    all_x = [0.0, *accumulate(xs)]
    few_n = [0.0, *accumulate(n if f else 0.0 for n, f in zip(ns, few, strict=True))]
    few_x = [0.0, *accumulate(x if f else 0.0 for x, f in zip(xs, few, strict=True))]
    few_k = [0, *accumulate(few)]
    count = len(blocks)
    pulled = shrink * p_ref
    terms = []
    for i in range(first, count):
        n_i, x_i = ns[i], xs[i]
        if few[i]:
            sum_n, sum_x, present = few_n, few_x, few_k
        else:
            sum_n, sum_x, present = all_n, all_x, None
        # the same sides as `_term`: [i - window, i - 1) on the left, [i + 2, i + window + 1) on the right
        lo, hi = max(0, i - window), max(0, i - 1)
        left = hi > lo and (present is None or present[hi] > present[lo])
        r_lo, r_hi = i + 2, min(count, i + window + 1)
        right = r_hi > r_lo and (present is None or present[r_hi] > present[r_lo])
        if left:
            rate = (sum_x[hi] - sum_x[lo] + pulled) / (sum_n[hi] - sum_n[lo] + shrink)
            if right:
                p_sq = rate * ((sum_x[r_hi] - sum_x[r_lo] + pulled) / (sum_n[r_hi] - sum_n[r_lo] + shrink))
            else:
                p_sq = rate * rate
        elif right:
            rate = (sum_x[r_hi] - sum_x[r_lo] + pulled) / (sum_n[r_hi] - sum_n[r_lo] + shrink)
            p_sq = rate * rate
        else:
            p_sq = p_ref * p_ref
        terms.append(x_i * (x_i - 1.0) - n_i * (n_i - 1.0) * p_sq)
    return terms


# ---------------------------------------------------------------- histograms and bounds


def threshold_bucket(baseline_buckets: Sequence[int], q: float, min_count: int = 200) -> int | None:
    """The bucket holding the baseline's q-quantile; None while fewer than `min_count` requests.

    The bucket must be fixed before the tick's data is seen, so callers pass baseline data from
    earlier ticks only. (safeship's latency tests count requests beyond a declared bound on the
    quantile instead: `tolerated_bound`.)
    """
    total = sum(baseline_buckets)
    if total < min_count:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(baseline_buckets):
        seen += count
        if seen >= rank:
            return index
    return len(baseline_buckets) - 1


def tolerated_bound(
    control_buckets: Sequence[int], q: float, ratio: float, absolute_ms: float = 0.0, min_count: int = 200,
    *, lower: bool = False,
) -> tuple[float, float] | None:
    """(bound, the control's q-quantile), in ms, for "the candidate's q-quantile may be `ratio`
    times the control's, or `absolute_ms` more, whichever is larger"; None while the control has
    fewer than `min_count` requests.

    The control's quantile is read at an upper confidence rank (q n plus two binomial standard
    deviations, interpolated log-linearly inside its bucket), so that a control seen for a short
    while is not taken for faster than it is. A candidate within the tolerance has at most a
    share 1 - q of its requests slower than the bound (`histogram.count_slower`), whatever the
    shape of its distribution: that share is what the one-sample test checks.

    `lower`: read the control's quantile at the lower confidence rank instead (q n minus two
    standard deviations), for a test that must show the candidate *within* the tolerance: a
    control seen for a short while is then not taken for slower than it is."""
    total = sum(control_buckets)
    if total < min_count or not 0.0 < q < 1.0:
        return None
    spread = 2.0 * math.sqrt(q * (1.0 - q) / total)
    rank = max(0.0, q - spread) if lower else min(1.0, q + spread)
    control_ms = histogram.quantile(control_buckets, rank)
    if not math.isfinite(control_ms):
        return None
    return max(ratio * control_ms, control_ms + absolute_ms), control_ms


def rate_upper_bound(n: float, x: float, delta: float) -> float:
    """Clopper-Pearson upper confidence bound for a rate at level 1 - delta (1.0 without data)."""
    if n <= 0 or x >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - delta, x + 1, n - x))


def split_alpha(alpha: float, shares: Mapping[str, float]) -> dict[str, float]:
    """Weighted Bonferroni: alpha_i = alpha * share_i / sum(shares)."""
    total = sum(shares.values())
    return {name: alpha * share / total for name, share in shares.items()}


# ---------------------------------------------------------------- gauges


def window_mean_exceeds(
    looks: Sequence[Sequence[float]], threshold: float, duration: float, min_looks: int = 3
) -> bool:
    """The seed's "gauge above threshold for `duration`", made robust to one noisy look.

    `looks` are (time, value) pairs, oldest first, already trimmed to the window. True when they
    cover `duration`, number at least `min_looks` and their mean exceeds `threshold`. This alone
    is not a test; the policy requires a sign-test e-process to cross as well.
    """
    if len(looks) < min_looks:
        return False
    if looks[-1][0] - looks[0][0] < duration * (1.0 - 1.0 / len(looks)):
        return False
    return sum(v for _, v in looks) / len(looks) > threshold


def z_above(x1: float, n1: int, x2: float, n2: int) -> float:
    """How far the share x1/n1 lies above x2/n2, in standard errors of their pooled share (a
    two-proportion z statistic with a continuity correction of half an event towards equal
    shares, and half an event in the pooled share so that it is never 0); 0 when either is
    empty. Two versions that both failed nothing are not apart: z = 0, however unequal their
    requests (adding half a request to each side's own share read 35 for 0 of 1,000 against 0
    of 5 million)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0
    p1, p2 = max(0.0, x1 - 0.5) / n1, x2 / n2
    pooled = (x1 + x2 + 0.5) / (n1 + n2 + 1)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return max(0.0, p1 - p2) / spread if spread > 0 else 0.0
