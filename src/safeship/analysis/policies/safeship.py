"""safeship's own policy: a paced canary schedule judged by anytime-valid sequential tests.

Judge (see `analysis/judge.py` for the math). While a baseline serves beside the candidate, every
look folds the tick into two-sample tests: failed requests (null: candidate rate <= error_tolerance
x baseline), slow requests above the baseline's p95 and p99 buckets (null: slow share <=
latency_tolerance x baseline's), and a sign test per custom gauge. The seed's absolute triggers
run as one-sample tests on the candidate in every phase. In single-version phases (blue-green
after the switch, recreate, post-promotion monitoring) the candidate is tested against the
baseline rates remembered from the compare phase, or, where there was none (blue-green,
recreate), the replaced version's own record from before the deployment (`StepContext.history`):
the null is tolerance x an upper confidence bound of that rate.
The moment any e-value reaches 1/alpha_i the policy says FAILED.

alpha (AnalysisConfig.alpha) is split across tests by fixed shares (weighted Bonferroni; see
`SHARES`), so the chance of rolling back a release equal to its baseline, over every metric and
every look, is at most alpha, also when failures come in runs (mean length up to 10) within a
version and when an incident hits both versions in the same looks; `judge.py`, "Correlated
failures", says how and what is not covered. For that the failure tests are quasi-likelihood
tests: each version's failure counts feed a dispersion estimate phi (`judge.Dispersion`) and the
errors, single_errors and error-rate-trigger tests use LR^(1/phi). While a baseline serves, the
error-rate trigger skips looks in which the baseline itself failed above the trigger's threshold:
both versions above it is an incident, which rolling back would not cure.

Because every look is valid, the policy looks every second and a look costs no statistical
budget: gross failure is decided within 15 s of the candidate's first request (about 50 of its
requests: before that, a run of failures and a gross failure look alike).

Schedule. The configured weights are used as they are (seed default 5, 10, 25, 50, 75, 100). A
step advances when all of these hold:

* `min_step_duration` has passed in the step;
* no test is "suspicious" (e >= (1/alpha_i)^0.25, 4 for errors): a growing regression is judged
  at the current, cheaper weight rather than at a larger one, and a mild one gets more time (held
  at most 2 x step_duration). Under the null an e-process rarely climbs even that far (Ville:
  at most 1/4 of the time for errors; with the null's negative drift, in none of 200 simulated
  good releases), so this costs good releases nothing measurable; in simulation (100 rps,
  0.5% vs 1% errors, 200 runs) it raised the share of such 2x regressions rolled back from 29%
  to 43%;
* the ramp envelope allows it: weight w may be left once the analysis has run
  ramp_time x (w/100)^ramp_shape seconds (defaults 300 s and 0.25: leave 5% at 142 s, 10% at
  169 s, 25% at 212 s, 50% at 252 s, 75% at 279 s; a step never waits longer than its
  step_duration for the envelope). The envelope is strongly convex in time: most of the minimum
  canary time is spent at low weights, because a regression that starts late (errors two
  minutes after the first request) costs the fewest failed requests to detect there. At weight
  w the two-sample test compares the candidate with the baseline's own counts in the same tick;
  at 75% the baseline's few failures are the bottleneck, and an 8x error regression at 50 rps
  costs about six times as many candidate failures to prove as at 10% (7 vs 1.2 per nat). In
  our simulation of the delayed-errors scenario, shape 0.5 (a square-root ramp) cost 19 failed
  requests, 0.25 cost 14, and a release whose errors start at 200 s cost 80 vs 34;
* enough evidence: the candidate served `min_candidate_requests`, and enough requests that at the
  baseline's error rate it would have failed `min_expected_failures` times, so a large regression
  (say 10x) would have shown by now. This is a power argument rather than a second sequential
  test for "no worse than tolerance": proving a ratio below 1.2 at a 0.5% error rate takes tens of
  thousands of candidate requests, so such a test would almost never end a step early, while
  the envelope already sets the pace.

A step whose `step_duration` ran out with no harm shown advances anyway: `step_duration` is "the
longest a step waits for evidence". This is how a quiet service (2 rps) gets through: its tests
stay inconclusive, never fail, and the schedule advances on time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safeship import histogram
from safeship.analysis import judge
from safeship.analysis.base import (
    Decision,
    SplitEvidence,
    SplitKind,
    SplitOutcome,
    StepContext,
    ThresholdTrigger,
    TickSample,
    Verdict,
)
from safeship.config.models import (
    AnalysisConfig,
    CustomMetricTrigger,
    ErrorRateThresholdTrigger,
    ResponseTimeThresholdTrigger,
)
from safeship.routing.base import TrafficCounters

State = dict[str, Any]

# Shares of alpha. Errors get the most: they are the commonest regression and the costliest.
SHARES: Mapping[str, float] = {
    "errors": 0.35,
    "latency": 0.20,  # p95 and p99, half each
    "triggers": 0.15,  # the seed's absolute triggers, equal parts
    "metrics": 0.05,  # custom gauges vs baseline: 1/2, 1/4, ... of this, in order of discovery
    "single": 0.25,  # single-version phases (the monitoring window): see SINGLE_SHARES
}
# The same budget shared by where each strategy gathers its evidence, fixed before the first look.
# A canary judges side by side for minutes and alone only in its monitoring window (SHARES).
# Blue-green and recreate never serve two versions side by side except in a confirmation split:
# nearly all their evidence is the candidate alone against the record, so the single-version
# tests get the side-by-side tests' shares. Rolling judges side by side for tens of seconds and
# alone for its whole monitoring window: in between.
SHARES_BY_STRATEGY: Mapping[str, Mapping[str, float]] = {
    "blue_green": {"errors": 0.05, "latency": 0.05, "triggers": 0.15, "metrics": 0.05, "single": 0.70},
    "recreate": {"errors": 0.05, "latency": 0.05, "triggers": 0.15, "metrics": 0.05, "single": 0.70},
    "rolling": {"errors": 0.20, "latency": 0.15, "triggers": 0.15, "metrics": 0.05, "single": 0.45},
}
# Within the single-version share: errors half (of which half bounds the record's rate, half is
# the test's), each latency quantile a quarter.
SINGLE_SHARES: Mapping[str, float] = {"single_errors": 0.25, "single_p95": 0.25, "single_p99": 0.25}
RECORD_BOUND_SHARE = 0.25  # of the single-version share: the record's error-rate bound
QUANTILES: Mapping[str, float] = {"latency_p95": 0.95, "latency_p99": 0.99}
SINGLE_TESTS = ("single_errors", "single_p95", "single_p99")
TRIGGER_SHARE_OF_SLOW = {"p95": 0.05, "p99": 0.01}  # "p95 above T" <=> more than 5% slower than T


# (alpha, trigger keys, gauge order) -> each test's share of alpha (SafeshipPolicy._alphas): the
# same at nearly every look, and the engine asks for a new policy object at every look
_ALPHAS: dict[tuple[float, str, tuple[str, ...], tuple[str, ...]], dict[str, float]] = {}


@dataclass(frozen=True)
class Score:
    log_e: float
    alpha: float

    @property
    def log_bound(self) -> float:
        return -math.log(self.alpha)

    @property
    def e(self) -> float:
        return math.exp(min(self.log_e, 690.0))


@dataclass(frozen=True)
class SafeshipSettings:
    look_interval: float = 1.0  # seconds between looks (never more than analysis.interval)
    ramp_time: float = 300.0  # envelope: weight w may be left after ramp_time * (w/100)^shape
    ramp_shape: float = 0.25
    min_candidate_requests: int = 200
    min_expected_failures: float = 1.0  # candidate requests x baseline error rate
    rate_floor: float = 0.001  # a baseline without failures is treated as failing this often
    latency_warmup: int = 200  # baseline requests before the slow-request thresholds exist
    suspicion: float = 0.25  # hold while log e >= suspicion * log(1/alpha_i)
    custom_tolerance: float = 0.2  # a gauge may be this much (relative) above the baseline's
    restarts: judge.Restarts = field(default_factory=judge.Restarts)
    dispersion: judge.Dispersion = field(default_factory=judge.Dispersion)


class SafeshipPolicy:
    name = "safeship"
    safeship_mechanisms = True  # the confirmation split and the record before the deployment (analysis.base)

    def __init__(self, settings: SafeshipSettings | None = None) -> None:
        self.settings = settings or SafeshipSettings()

    # ------------------------------------------------------------ Policy protocol

    def weights(self, configured: Sequence[int]) -> list[int]:
        """The configured weights, ending at 100. Pacing, not skipping, keeps a bad release small:
        a regression costs fewer failed requests to detect at a low weight than at a high one."""
        steps = sorted({int(w) for w in configured if 0 < int(w) <= 100})
        return steps if steps and steps[-1] == 100 else [*steps, 100]

    def interval(self, analysis: AnalysisConfig) -> float:
        """One second, or analysis.interval when that is shorter: the field is the longest time
        between looks. Every look is valid, so looking often costs no alpha; it decides gross
        failure within seconds of the first request (the target is 15 s, which looks every 5 s,
        the field's default, would miss) and trims the overshoot of every other detection to
        under a second."""
        return min(float(analysis.interval), self.settings.look_interval)

    def start(self) -> State:
        return {
            "clock": 0.0,
            "base": {"n": 0, "x": 0, "h": histogram.empty()},
            "cand": {"n": 0, "x": 0},
            "tests": {},
            "bounds_ms": {},
            "gauges": {"order": [], "last": {}, "windows": {}},
            "single": None,
            "disp": judge.new_dispersion(),
        }

    def observe(
        self, state: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], Decision]:
        broken = _broken_counters(sample)
        if broken:
            return dict(state), Decision(
                Verdict.ERROR, f"{broken}: the router's counters went back"
            )
        new = {**state, "clock": float(state.get("clock", 0.0)) + max(0.0, sample.dt)}
        keys = [_trigger_key(t) for t in ctx.triggers]  # once per look: each is a formatted string
        if ctx.compare:
            new = self._fold_compare(new, sample, ctx)
        else:
            new = self._fold_single(new, sample, ctx)
        new = self._fold_triggers(new, sample, ctx, keys)
        new = _fold_blind(new, sample, ctx)
        new = _checkpoint(new)
        scores = self._scores(new, ctx, keys)
        failure = self._failure(new, scores, ctx, keys)
        if failure is not None:
            return new, failure
        blind = new.get("blind")
        if blind is not None and blind["expected"] >= NO_DATA_EXPECTED:
            return new, _no_data(blind, new["clock"], ctx)
        if ctx.compare:
            return new, self._schedule(new, scores, sample, ctx)
        return new, self._single_schedule(new, scores, ctx)

    # ------------------------------------------------------------ settling a split

    def split_ledger(self, ledger: State) -> State:
        """What a confirmation split carries on from the deployment's ledger: the side-by-side
        failure test, so that its evidence from the canary's steps, the split and the looks after
        it is one e-process. It compares the versions' shares of each look's failures, so a shock
        both versions see in the same look cannot build evidence. The latency tests begin afresh:
        their bounds must come from the split's own seconds (bounds from before an incident made
        the incident's slow requests count against the candidate: 10 more false rollbacks in 195
        good canaries of the generated benchmark)."""
        state = self.start()
        errors = (ledger.get("tests") or {}).get("errors")
        if errors is not None:
            state["tests"] = {"errors": errors}
        return state

    def settle_split(self, ledger: State, split: SplitEvidence) -> SplitOutcome:
        """An alarm raised on the candidate alone stands unless the version it replaces, serving
        beside it in the split, is shown raised too over its own record: then the cause is
        shared (an incident) and the split holds until that version is back within its record;
        the deployment then resumes with its ledger, the alarm set aside on that evidence. No
        alarm is cleared for lack of proof: a split that shows nothing either way (a quiet
        service, a regression that only shows at full traffic) leaves the alarm standing."""
        old, record = split.baseline_version, split.history
        if record is None or record.requests <= 0:
            return SplitOutcome(SplitKind.ROLLBACK, f"{split.reason}; no record of {old} from before the "
                                "deployment tells an incident from the release: the alarm stands")
        if split.incident_since is None:
            # asked at every look of the split before its end: a stricter bar for the many looks
            raised = _raised_over_record(split.baseline, record, z=INCIDENT_EARLY_Z if split.early else INCIDENT_Z,
                                         dispersion=split.history_dispersion)
            if raised is None:
                return SplitOutcome(SplitKind.ROLLBACK, f"{split.reason}; side by side for {split.seconds:.0f}s "
                                    f"{old} is not raised over its record "
                                    f"({_share(split.baseline)} vs {_share(record)}): the alarm stands")
            return SplitOutcome(SplitKind.INCIDENT, f"incident: {old} shows the same {raised} "
                                f"({_share(split.baseline)} vs {_share(record)} in its record); holding")
        held = split.seconds - split.incident_since
        if _raised_over_record(split.recent_baseline, record, z=INCIDENT_PASSED_Z,
                               dispersion=split.history_dispersion) is not None:
            if held >= MAX_INCIDENT_HOLD_S:
                return SplitOutcome(SplitKind.ROLLBACK, f"{split.reason}; the incident on {old} has not passed "
                                    f"in {held:.0f}s: rolling back to be safe")
            return SplitOutcome(SplitKind.INCIDENT, f"incident: {old} still raised "
                                f"({_share(split.recent_baseline)} vs {_share(record)} in its record); holding")
        # Set aside, on the evidence that their cause was shared, what the incident added to the
        # alarm and to every test whose control is a record or a fixed threshold: the incident
        # raised them all alike. Each goes back to its value at the last checkpoint from before
        # the incident (at least INCIDENT_MARGIN_S before the alarm), so the evidence gathered
        # before it stands: a regression shown before an incident is not cleared by the
        # incident. The side-by-side tests (candidate against the version beside it in the same
        # looks) are immune to a shared shock and keep all their evidence.
        name = str(split.alarm.get("test", ""))
        clock = float(ledger.get("clock", 0.0))
        cut, before = _checkpoint_at(ledger, clock - INCIDENT_MARGIN_S)
        tests = {key: (before.get(key, judge.new_e_process())
                       if key == name or not key.startswith(SIDE_BY_SIDE) else test)
                 for key, test in ledger.get("tests", {}).items()}
        carried = ((split.split_state or {}).get("tests") or {}).get("errors")
        if carried is not None:
            tests["errors"] = carried  # the side-by-side failure test went on through the split
        # The seconds whose evidence was set aside (from the checkpoint to the alarm) and those of
        # the split (no single-version test ran in it) judged nothing: the window is that much
        # longer (`_single_schedule`), so an incident cannot use up the time a regression that
        # starts during it needs to show.
        unjudged = float(ledger.get("unjudged_s", 0.0)) + max(0.0, clock - cut) + max(0.0, split.seconds)
        return SplitOutcome(SplitKind.RESUME, f"incident passed: {old} is back within its record after "
                            f"{held:.0f}s; resuming with the evidence from before it, the alarm on "
                            f"{name or 'the candidate'} set aside, the window {unjudged:.0f}s longer",
                            {**ledger, "tests": tests, "checkpoints": [], "unjudged_s": unjudged})

    def incident_passed(self, counts: TrafficCounters, record: TrafficCounters, *,
                        dispersion: float | None = None) -> bool:
        """After an incident rollback: the restored version's recent `counts` are back within its
        record (no more than INCIDENT_PASSED_Z standard errors above it, errors and latency;
        `dispersion`: the record's, see `_raised_over_record`)."""
        return counts.requests > 0 and _raised_over_record(counts, record, z=INCIDENT_PASSED_Z,
                                                           dispersion=dispersion) is None

    def incident_over_record(self, counts: TrafficCounters, record: TrafficCounters, *,
                             dispersion: float | None = None) -> str | None:
        """After a rollback from a phase with no concurrent control: how the restored version,
        serving alone again, is raised over its own record ("errors" or "latency"), or None. A
        raised restored version means the alarm's cause was shared: an incident."""
        return _raised_over_record(counts, record, dispersion=dispersion)

    # ------------------------------------------------------------ folding one tick in

    def _fold_compare(self, st: State, sample: TickSample, ctx: StepContext) -> State:
        b, c = sample.baseline, sample.candidate
        now, restarts = st["clock"], self.settings.restarts
        settings = self.settings.dispersion
        disp = judge.update_dispersion(st.get("disp", {}), "base", b.requests, b.failed, settings)
        disp = judge.update_dispersion(disp, "cand", c.requests, c.failed, settings)
        # The replaced version's record, where it measured its own failure runs, says how
        # clustered this service's failures are: never judge them as less clustered than that
        # (the first looks of a canary hold too few runs to tell a run from a regression).
        known = ctx.history_dispersion
        phi = max(judge.dispersion_factor(disp, self.settings.dispersion, known), known or 1.0)
        # The rollback test's null is "the candidate fails like the baseline", runs included: where
        # the record measured the baseline's runs, the candidate's failures are judged with no
        # more dispersion than the baseline's (its record's, or its own live estimate when that is
        # larger, as in a shared incident): runs the candidate shows beyond the baseline's are not
        # noise (see `_baseline_dispersion`). Showing the candidate within the tolerance keeps the
        # pooled estimate: under that null the candidate's own runs are allowed.
        measured = _baseline_dispersion(ctx)
        test_phi = phi
        if measured is not None:
            live = {key: value for key, value in disp.items() if key == "base"}
            baseline_phi = max(measured, judge.dispersion_factor(live, settings, measured) if live else measured)
            test_phi = min(phi, baseline_phi)
        tests = dict(st["tests"])
        tests["errors"] = judge.update_two_sample(
            tests.get("errors", judge.new_e_process()),
            b.requests, b.failed, c.requests, c.failed,
            ctx.analysis.error_tolerance, now=now, restarts=restarts, dispersion=test_phi,
        )  # fmt: skip
        analysis = ctx.analysis
        within = dict(st.get("within") or {})
        if analysis.early_promotion:
            # The opposite null, "the candidate is worse than tolerated", for early promotion:
            # relative to the version beside it, or above the declared absolute error rate.
            within["errors"] = judge.update_two_sample(
                within.get("errors", judge.new_e_process()), b.requests, b.failed, c.requests, c.failed,
                analysis.error_tolerance, multipliers=judge.WITHIN_GRID, dispersion=phi,
            )  # fmt: skip
            if analysis.error_tolerance_abs > 0:
                within["errors_abs"] = judge.update_one_sample(
                    within.get("errors_abs", judge.new_e_process()), c.requests, c.failed,
                    analysis.error_tolerance_abs, multipliers=judge.WITHIN_GRID, dispersion=phi,
                )  # fmt: skip
        bounds, controls = dict(st["bounds_ms"]), dict(st.get("controls_ms", {}))
        pending = dict(st.get("latency_pending") or {})
        n_b, n_c = sum(b.latency_buckets), sum(c.latency_buckets)
        for name, q in QUANTILES.items():
            found = self._tolerated(st["base"]["h"], q, ctx)
            if found is None:
                continue
            bound, controls[name] = found
            bounds[name] = bound
            # the bound for showing the candidate within the tolerance: the control's quantile
            # read at its lower confidence rank, so that a short record does not flatter it
            strict = self._tolerated(st["base"]["h"], q, ctx, lower=True)
            allowed = 1.0 - q
            # Is the baseline itself beyond the bound in this look (a slowdown both versions
            # share: an incident, load, which rolling back would not cure), or did it serve
            # nothing to tell? A candidate look counts only when the baseline was clear in it
            # and in the look after it (a shared slowdown that starts within a look may show on
            # the baseline only in the next): each look is held for one look. Which looks count
            # depends on the baseline's requests only, so the test stays valid.
            held = pending.get(name)
            beyond = _beyond(n_b, histogram.count_slower(b.latency_buckets, bound), allowed)
            if n_b <= 0 and held is not None:
                beyond = bool(held[3])  # nothing served: as the baseline's last look with requests
            clear = n_b > 0 and not beyond
            if held is not None and held[2] and clear:
                tests[name] = judge.update_one_sample(
                    tests.get(name, judge.new_e_process()), held[0], held[1], allowed, now=now, restarts=restarts,
                )  # fmt: skip
                if analysis.early_promotion and len(held) > 4 and held[4] is not None:
                    within[name] = judge.update_one_sample(
                        within.get(name, judge.new_e_process()), held[0], held[4], allowed,
                        multipliers=judge.WITHIN_GRID,
                    )  # fmt: skip
            slow_strict = None if strict is None else histogram.count_slower(c.latency_buckets, strict[0])
            pending[name] = [n_c, histogram.count_slower(c.latency_buckets, bound), clear, beyond, slow_strict]
        tests, gauges = self._fold_gauge_comparisons(st, tests, sample, ctx)
        base, cand = st["base"], st["cand"]
        return {
            **st,
            "disp": disp,
            "phi": phi,
            "tests": tests,
            "gauges": gauges,
            "bounds_ms": bounds,
            "controls_ms": controls,
            "latency_pending": pending,
            "within": within,
            "base": {
                "n": base["n"] + b.requests,
                "x": base["x"] + b.failed,
                "h": _added(base["h"], b.latency_buckets),
            },
            "cand": {"n": cand["n"] + c.requests, "x": cand["x"] + c.failed},
        }

    def _tolerated(self, control: Sequence[int], q: float, ctx: StepContext, *,
                   lower: bool = False) -> tuple[float, float] | None:
        """The latency (ms) a request may not exceed at quantile q under the declared tolerance
        (`analysis.latency_tolerance` times the control's, or `latency_tolerance_ms` more), and
        the control's q-quantile in ms (`lower`: read at its lower confidence rank)."""
        analysis = ctx.analysis
        return judge.tolerated_bound(control, q, analysis.latency_tolerance, analysis.latency_tolerance_ms,
                                      self.settings.latency_warmup, lower=lower)

    def _fold_gauge_comparisons(
        self, st: State, tests: dict[str, Any], sample: TickSample, ctx: StepContext
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sign test per gauge: is the candidate worse than baseline x (1 + tolerance) in more
        than half of the looks? Exact when the look-to-look noise is symmetric, whatever its size;
        looks are spaced at least analysis.interval apart to keep them close to independent."""
        gauges = st["gauges"]
        last = gauges["last"]
        tolerance = self.settings.custom_tolerance
        for name in sorted(set(sample.candidate_gauges) & set(sample.baseline_gauges)):
            if st["clock"] - float(last.get(name, -math.inf)) < ctx.analysis.interval - 1e-9:
                continue
            base, cand = sample.baseline_gauges[name], sample.candidate_gauges[name]
            if not (math.isfinite(base) and math.isfinite(cand)):
                continue
            worse = 1.0 if cand > base + tolerance * abs(base) else 0.0
            key = f"metric:{name}"
            tests[key] = judge.update_one_sample(
                tests.get(key, judge.new_e_process()), 1.0, worse, 0.5,
                now=st["clock"], restarts=self.settings.restarts,
            )  # fmt: skip
            last = {**last, name: st["clock"]}
            if name not in gauges["order"]:
                gauges = {**gauges, "order": [*gauges["order"], name]}
        return tests, {**gauges, "last": last}

    def _fold_single(self, st: State, sample: TickSample, ctx: StepContext) -> State:
        single = st.get("single") or self._single_nulls(st, ctx)
        if single is None:
            return st
        c = sample.candidate
        disp = judge.update_dispersion(
            st.get("disp", {}), "cand", c.requests, c.failed, self.settings.dispersion
        )
        phi = judge.dispersion_factor(disp, self.settings.dispersion, ctx.history_dispersion)
        # judged with no more than the replaced version's dispersion where its record measured it:
        # runs the candidate shows and the record does not are part of the regression, not noise
        measured = _baseline_dispersion(ctx)
        error_phi = phi if measured is None else min(phi, measured)
        tests = dict(st["tests"])
        counts: dict[str, tuple[float, float]] = {"single_errors": (c.requests, c.failed)}
        n_lat = sum(c.latency_buckets)
        for name in ("single_p95", "single_p99"):
            if name in single:
                counts[name] = (
                    n_lat,
                    histogram.count_slower(c.latency_buckets, single[name]["bound_ms"]),
                )
        for name, (n, x) in counts.items():
            tests[name] = judge.update_one_sample(
                tests.get(name, judge.new_e_process()), n, x, single[name]["p0"],
                now=st["clock"], restarts=self.settings.restarts,
                dispersion=error_phi if name == "single_errors" else 1.0,
            )  # fmt: skip
        return {**st, "tests": tests, "single": single, "disp": disp, "phi": phi}

    def _single_nulls(self, st: State, ctx: StepContext) -> dict[str, Any] | None:
        """Nulls for single-version phases, frozen at the first such look: tolerance x an upper
        confidence bound of the baseline's rate (level 1 - delta, delta = half the test's alpha),
        so a wrong bound and a false alarm together stay within the test's alpha."""
        base = st["base"]
        source = "compare"
        # Failures that come in runs carry less information than as many independent ones: the
        # bound uses the quasi-binomial effective counts n / phi, x / phi.
        phi = float(st.get("phi", 1.0))
        if ctx.history is not None and ctx.history.requests > base["n"]:
            # No compare phase (blue-green, recreate), or one too short to know the replaced
            # version's rate (rolling: about 10 s side by side): the replaced version's own record
            # from before the deployment is the control. Its failures may come in runs, so its
            # counts are discounted by its dispersion.
            record = ctx.history
            base = {"n": record.requests, "x": record.failed, "h": list(record.latency_buckets)}
            # the record's own dispersion where its source measured it, slice by slice; else the
            # longest runs the guarantee covers
            known = ctx.history_dispersion
            phi = max(phi, known if known is not None else 2 * self.settings.dispersion.burst - 1)
            source = "history"
        if base["n"] <= 0:
            return None
        delta = _shares(ctx)["single"] * ctx.analysis.alpha * RECORD_BOUND_SHARE
        bound = judge.rate_upper_bound(base["n"] / phi, base["x"] / phi, delta)
        nulls: dict[str, Any] = {
            "single_errors": {
                "p0": ctx.analysis.error_tolerance * bound,
                "rate": base["x"] / base["n"],
                "source": source,
            }
        }
        n_hist = sum(base["h"])
        for name, q in (("single_p95", 0.95), ("single_p99", 0.99)):
            found = self._tolerated(base["h"], q, ctx)
            if found is None:
                continue
            bound, control_ms = found
            # the declared tolerance on the quantile: at most 1 - q of the candidate's requests
            # may be slower than the bound; the record's own uncertainty is in its quantile's rank
            nulls[name] = {"p0": 1.0 - q, "bound_ms": bound, "control_ms": control_ms, "source": source,
                           "rate": histogram.count_slower(base["h"], bound) / n_hist}
        return nulls

    def _fold_triggers(
        self, st: State, sample: TickSample, ctx: StepContext, keys: Sequence[str]
    ) -> State:
        tests = dict(st["tests"])
        gauges = st["gauges"]
        now, restarts, c = st["clock"], self.settings.restarts, sample.candidate
        looked = [sample.baseline.requests, sample.baseline.failed]
        recent = [*(st.get("recent_base") or [])[-(RECENT_LOOKS - 1):], looked]
        if ctx.compare:
            st = {**st, "recent_base": recent}
        for trigger, key in zip(ctx.triggers, keys, strict=True):
            prior = tests.get(key, judge.new_e_process())
            if isinstance(trigger, ErrorRateThresholdTrigger):
                # what the seed's rule itself sees: the candidate's looks of its last `duration`
                # (a shared incident included: traffic does not move through one either)
                looks = [*(st.get("promise") or {}).get(key, []), [now, c.requests, c.failed]]
                promise = {**(st.get("promise") or {}),
                           key: [look for look in looks if now - look[0] < max(trigger.duration, 1e-9)]}
                st = {**st, "promise": promise}
                if ctx.compare and _baseline_above(recent, trigger.threshold):
                    # the baseline above the trigger over its last few looks, or nothing served
                    # to tell: a shared incident, not the release (the looks left out depend on
                    # the baseline's counts only)
                    continue
                tests[key] = judge.update_one_sample(
                    prior, c.requests, c.failed, trigger.threshold, now=now, restarts=restarts,
                    dispersion=float(st.get("phi", 1.0)),
                )
            elif isinstance(trigger, ResponseTimeThresholdTrigger):
                tests[key] = _fold_response_time(prior, trigger, c, now, restarts)
            elif isinstance(trigger, CustomMetricTrigger):
                value = sample.candidate_gauges.get(trigger.metric)
                if value is None or not math.isfinite(value):
                    continue
                windows = dict(gauges["windows"])
                looks = [*windows.get(key, []), [now, float(value)]]
                windows[key] = [look for look in looks if now - look[0] <= trigger.duration]
                gauges = {**gauges, "windows": windows}
                last = float(gauges["last"].get(key, -math.inf))
                if now - last >= ctx.analysis.interval - 1e-9:
                    above = 1.0 if value > trigger.threshold else 0.0
                    tests[key] = judge.update_one_sample(
                        prior, 1.0, above, 0.5, now=now, restarts=restarts
                    )
                    gauges = {**gauges, "last": {**gauges["last"], key: now}}
        return {**st, "tests": tests, "gauges": gauges}

    # ------------------------------------------------------------ deciding

    def _alphas(self, st: State, ctx: StepContext, keys: Sequence[str]) -> dict[str, float]:
        cache_key = (ctx.analysis.alpha, ctx.strategy, tuple(keys), tuple(st["gauges"]["order"]))
        found = _ALPHAS.get(cache_key)
        if found is None:
            if len(_ALPHAS) >= 64:
                _ALPHAS.clear()
            found = _ALPHAS[cache_key] = self._split(st, ctx, keys)
        return dict(found)  # a copy: the cached one is shared by every look of every policy

    def _split(self, st: State, ctx: StepContext, keys: Sequence[str]) -> dict[str, float]:
        parts = judge.split_alpha(ctx.analysis.alpha, _shares(ctx))
        alphas = {
            "errors": parts["errors"],
            **{name: parts["latency"] / len(QUANTILES) for name in QUANTILES},
            **{name: parts["single"] * share for name, share in SINGLE_SHARES.items()},
        }
        triggers = list(keys)
        for key in triggers:
            alphas[key] = parts["triggers"] / len(triggers)
        for index, name in enumerate(st["gauges"]["order"]):
            alphas[f"metric:{name}"] = parts["metrics"] / 2 ** (index + 1)
        return alphas

    def _scores(self, st: State, ctx: StepContext, keys: Sequence[str]) -> dict[str, Score]:
        """(log e, alpha) of every test that has a share of alpha, computed once per look."""
        alphas = self._alphas(st, ctx, keys)
        return {
            name: Score(judge.log_e_value(test), alphas[name])
            for name, test in st["tests"].items()
            if name in alphas
        }

    def _failure(
        self, st: State, scores: Mapping[str, Score], ctx: StepContext, keys: Sequence[str]
    ) -> Decision | None:
        by_key: dict[str, ThresholdTrigger] = {}
        for key, each in zip(keys, ctx.triggers, strict=True):
            by_key.setdefault(key, each)  # the first trigger with the key, as _trigger_by_key finds
        for name, score in scores.items():
            trigger = by_key.get(name)
            if isinstance(trigger, CustomMetricTrigger):
                # The seed's "gauge above threshold for `duration`": the window's mean must exceed
                # it, and either the sign test has crossed or every look of a window that covers
                # the duration was above (a monitoring window looks too seldom for the sign test).
                window = st["gauges"]["windows"].get(name, [])
                if not judge.window_mean_exceeds(window, trigger.threshold, trigger.duration):
                    continue
                crossed = score.log_e >= score.log_bound
                if not crossed and not all(v > trigger.threshold for _, v in window):
                    continue
                stat = None if crossed else "the seed's rule: every look of the window above"
                return _explain_failure(st, name, scores, trigger, self.settings.restarts, ctx, stat=stat)
            if score.log_e < score.log_bound:
                continue
            return _explain_failure(st, name, scores, trigger, self.settings.restarts, ctx)
        return None

    def _schedule(
        self, st: State, scores: Mapping[str, Score], sample: TickSample, ctx: StepContext
    ) -> Decision:
        in_step, longest = ctx.time_in_step, ctx.step_duration
        evidence = _summary(st, scores)
        if in_step < ctx.min_step_duration:
            return Decision(Verdict.INCONCLUSIVE, "minimum step duration", evidence)
        suspect = self._suspect(scores)
        if suspect is not None and in_step < 2 * longest:
            return Decision(Verdict.INCONCLUSIVE, f"holding: {suspect} is growing", evidence)
        shared = _shared_slowdown(st)
        if shared is not None and in_step < 2 * longest:
            # traffic does not move while both versions are beyond a bound: the looks of a shared
            # slowdown prove nothing about the candidate, and the next weight would meet it alone
            return Decision(Verdict.INCONCLUSIVE, f"holding: the baseline is beyond its {shared} bound too "
                            "(an incident both versions see)", evidence)
        promised = _promise_pending(st, ctx)
        if promised is not None:
            return Decision(Verdict.INCONCLUSIVE, promised, evidence)
        if in_step >= longest:
            return Decision(Verdict.ADVANCE, "step duration reached, no harm shown", evidence)
        shown = _within_tolerance(st, ctx)
        if shown is not None:
            return Decision(Verdict.ADVANCE, shown, evidence)
        share = min(100, max(0, sample.candidate_weight)) / 100
        ramp = ctx.analysis.ramp_time if ctx.analysis.ramp_time is not None else self.settings.ramp_time
        envelope = ramp * share**self.settings.ramp_shape
        if ctx.time_in_analysis < envelope:
            return Decision(
                Verdict.INCONCLUSIVE, f"pacing: weight held until {envelope:.0f}s", evidence
            )
        if not self._enough_evidence(st):
            return Decision(Verdict.INCONCLUSIVE, "too little candidate traffic yet", evidence)
        return Decision(Verdict.ADVANCE, "no regression beyond tolerance", evidence)

    def _single_schedule(
        self, st: State, scores: Mapping[str, Score], ctx: StepContext
    ) -> Decision:
        # Seconds an incident made the policy set aside (see `settle_split`) were not judged: the
        # window lasts that much longer.
        unjudged = float(st.get("unjudged_s", 0.0))
        if ctx.time_in_step < ctx.step_duration + unjudged:
            if unjudged > 0 and ctx.time_in_step >= ctx.step_duration:
                return Decision(Verdict.INCONCLUSIVE, f"watching {unjudged:.0f}s longer: the seconds an incident "
                                "set aside judged nothing")
            return Decision(Verdict.INCONCLUSIVE, "watching")
        # A release promoted before its plan's analysis time ran out (the evidence sufficed) is
        # watched, at full traffic, for as long as the whole plan and the monitoring window would
        # have judged it: promoting early must not shorten the watch. A regression that starts
        # ten minutes in is caught as it would have been by the configured schedule.
        watch = ctx.planned_analysis_s + ctx.step_duration + unjudged
        if ctx.promoted and ctx.time_in_analysis < watch:
            return Decision(Verdict.INCONCLUSIVE, f"watching until {watch:.0f}s, the plan's whole analysis time")
        promised = _promise_pending(st, ctx)
        if promised is not None:
            return Decision(Verdict.INCONCLUSIVE, promised)
        return Decision(Verdict.SUCCESSFUL, "no regression during the window", _summary(st, scores))

    def _suspect(self, scores: Mapping[str, Score]) -> str | None:
        for name, score in scores.items():
            if score.log_e >= self.settings.suspicion * score.log_bound:
                return f"{name} (e={score.e:.3g})"
        return None

    def _enough_evidence(self, st: State) -> bool:
        base, cand = st["base"], st["cand"]
        if base["n"] <= 0 or cand["n"] < self.settings.min_candidate_requests:
            return False
        rate = max(base["x"] / base["n"], self.settings.rate_floor)
        return bool(cand["n"] * rate >= self.settings.min_expected_failures)


# ---------------------------------------------------------------- helpers


SIDE_BY_SIDE = ("errors", "latency_p95", "latency_p99", "metric:")  # tests against the version beside it
INCIDENT_Z = 3.0  # the replaced version is raised over its record: an incident under way
INCIDENT_EARLY_Z = 4.5  # ... shown before the split's end, at any of its looks
INCIDENT_PASSED_Z = 1.0  # ... and back within it once its recent share is no more than this above
MAX_INCIDENT_HOLD_S = 600.0  # an incident that lasts longer is not waited out: roll back


CHECKPOINT_S = 20.0  # the record and threshold tests are kept this often ...
CHECKPOINTS = 3  # ... this many times back
INCIDENT_MARGIN_S = 20.0  # an incident is taken to have begun this long before its alarm


def _promise_pending(st: State, ctx: StepContext) -> str | None:
    """The seed's error-rate rule is the user's promise ("roll back above 5% for 2 s"). Its test
    needs more evidence than the rule states: with a few dozen requests, 8% is not yet proven
    above 5%. While the candidate's own rate over the rule's last `duration` is above the
    threshold, the release is kept where it is (no step up, no promotion) until the test decides
    or the rate falls back: never moved on without that evidence. Only a hold, never a rollback."""
    for trigger in ctx.triggers:
        if not isinstance(trigger, ErrorRateThresholdTrigger):
            continue
        key = _trigger_key(trigger)
        looks = (st.get("promise") or {}).get(key, [])
        n, x = sum(look[1] for look in looks), sum(look[2] for look in looks)
        if n > 0 and x / n > trigger.threshold:
            return (f"holding: error rate {_pct(x / n)} over the last {trigger.duration:.0f}s, above the "
                    f"{_pct(trigger.threshold)} trigger and not yet proven either way")
        # ... and over every look its test has counted: at a few requests a second the rule's own
        # window often holds no failure at all, while the release fails above the threshold
        counted = judge.counts_since_start(st["tests"].get(key, {}))
        if counted:
            n, x = counted[0], counted[1]
            if n > 0 and x / n > trigger.threshold:
                return (f"holding: error rate {_pct(x / n)} over {n:.0f} requests, above the "
                        f"{_pct(trigger.threshold)} trigger and not yet proven either way")
            # ... and, where the rule is all there is to judge by (no version beside it, and no
            # record of the replaced version, or one too short to tell a breach of the rule: a
            # recreate right after a controller start), until the rate is shown at or below the
            # threshold: an 8% release may show 4% over its first 150 requests, and the rule's
            # point estimate alone would promote it one time in twenty.
            delta = ctx.analysis.early_promotion_alpha
            if (n > 0 and not ctx.compare and not _below(n, x, delta, trigger.threshold)
                    and _record_too_thin(ctx, trigger.threshold, n)):
                bound = judge.rate_upper_bound(n, x, delta)
                if bound > trigger.threshold:
                    return (f"holding: error rate {_pct(x / n)} over {n:.0f} requests, not yet shown at or "
                            f"below the {_pct(trigger.threshold)} trigger (up to {_pct(bound)}), with no "
                            "record long enough to judge it against")
    return None


def _record_too_thin(ctx: StepContext, threshold: float, judged: float) -> bool:
    """No record of the replaced version, or one that holds fewer requests than the candidate has
    been judged on (a few seconds of it: HAProxy's counters outlive a controller that has just
    started), or one whose failure rate, at its upper confidence bound and with the declared
    tolerance, reaches `threshold`: a candidate above the threshold could not be shown worse
    than it (34 requests without a failure bound the rate at 8%)."""
    record = ctx.history
    if record is None or record.requests <= judged:
        return True
    return not _below(record.requests, record.failed, ctx.analysis.early_promotion_alpha,
                      threshold / ctx.analysis.error_tolerance, strict=True)


def _below(n: float, x: float, delta: float, limit: float, *, strict: bool = False) -> bool:
    """The rate of x failures in n is shown at or below `limit` (below it, when `strict`): its
    Clopper-Pearson upper bound at 1 - delta. Hoeffding's bound, which is never below it, answers
    first without scipy when it suffices (most looks of a busy window: this runs at every look)."""
    cheap = x / n + math.sqrt(math.log(1.0 / delta) / (2.0 * n))
    if cheap < limit:
        return True
    bound = judge.rate_upper_bound(n, x, delta)
    return bound < limit if strict else bound <= limit


def _within_tolerance(st: State, ctx: StepContext) -> str | None:
    """Early promotion: the sentence saying the candidate is shown within the declared tolerance
    on errors and on both latency quantiles, or None. Each metric's test of "worse than
    tolerated" must be rejected at early_promotion_alpha on its own (errors: relative to the
    version beside it, or above the absolute rate); only then is the union "worse on some
    metric" rejected, at that same level (an intersection-union test)."""
    analysis = ctx.analysis
    if not analysis.early_promotion:
        return None
    within = st.get("within") or {}
    needed = -math.log(analysis.early_promotion_alpha)

    def shown(key: str) -> float | None:
        test = within.get(key)
        log_e = judge.log_e_value(test) if test is not None else -math.inf
        return math.exp(min(log_e, 690.0)) if log_e >= needed else None

    errors = shown("errors") or shown("errors_abs")
    latency = [shown(name) for name in QUANTILES]
    if errors is None or any(e is None for e in latency):
        return None
    return (f"within the declared tolerance on evidence (errors e={_format_e(errors)}, "
            + ", ".join(f"{name.removeprefix('latency_')} e={_format_e(e or 0.0)}"
                        for name, e in zip(QUANTILES, latency, strict=True))
            + f" >= {1 / analysis.early_promotion_alpha:.0f}): the step ends early")


def _checkpoint(st: State) -> State:
    """Keep, every CHECKPOINT_S, the tests an incident can raise (those against a record or a
    fixed threshold), so that an incident's part of their evidence can be taken out again."""
    points = st.get("checkpoints") or []
    clock = float(st["clock"])
    if points and clock - float(points[-1][0]) < CHECKPOINT_S:
        return st
    kept = {key: test for key, test in st["tests"].items() if not key.startswith(SIDE_BY_SIDE)}
    return {**st, "checkpoints": [*points[-(CHECKPOINTS - 1):], [clock, kept]]}


def _checkpoint_before(st: State, clock: float) -> dict[str, Any]:
    """The record and threshold tests as they were at the last checkpoint at or before `clock`
    (none: fresh tests)."""
    return _checkpoint_at(st, clock)[1]


def _checkpoint_at(st: State, clock: float) -> tuple[float, dict[str, Any]]:
    """(when, tests) of the last checkpoint at or before `clock`; (0, fresh tests) when there is
    none: everything since the ledger began is set aside."""
    found: tuple[float, dict[str, Any]] = (0.0, {})
    for at, tests in st.get("checkpoints") or []:
        if float(at) <= clock:
            found = (float(at), dict(tests))
    return found


MIN_RECORD_FAILURES = 20  # a record with this many failures has shown its runs (two of mean length 10)


def _baseline_dispersion(ctx: StepContext) -> float | None:
    """The replaced version's dispersion of failures, where its record measured it from at least
    MIN_RECORD_FAILURES failures; None where the record is missing or too thin to tell.

    The failure tests' null is that the new version fails as the old one does, runs included. A
    record of hours holds many of the old version's runs, and its slice-by-slice dispersion (raised
    by two standard errors) says how clustered they are. A new version whose failures come in
    longer runs than that (a lock held too long, a retry storm) has changed: judged with its own
    larger dispersion, its runs would hide the very regression they are part of. With fewer
    failures in the record, the runs of the old version may not have shown: the candidate's own
    estimate stays."""
    known = ctx.history_dispersion
    record = ctx.history
    if known is None or record is None or record.failed < MIN_RECORD_FAILURES:
        return None
    return max(1.0, float(known))


def _shares(ctx: StepContext) -> Mapping[str, float]:
    return SHARES_BY_STRATEGY.get(ctx.strategy, SHARES)


def _beyond(n: float, x: float, allowed: float) -> bool:
    """More than three binomial standard deviations above the share `allowed` (and at least one
    request): a look whose control is itself beyond a latency bound."""
    return x >= 1 and x > n * allowed + 3.0 * math.sqrt(n * allowed * (1.0 - allowed))


def _raised_over_record(counts: TrafficCounters, record: TrafficCounters, z: float = INCIDENT_Z,
                        dispersion: float | None = None) -> str | None:
    """"errors" or "latency" when `counts` lie more than z standard errors above the record's
    failure share or its share of requests slower than its own p99; None otherwise."""
    if counts.requests <= 0:
        return None
    # failures that come in runs vary more than independent ones: their z is read in standard
    # errors widened by the record's dispersion (a run of 15 on a service whose record shows
    # runs of 15 is no incident)
    spread = math.sqrt(max(1.0, dispersion or 1.0))
    if judge.z_above(counts.failed, counts.requests, record.failed, record.requests) > z * spread:
        return "errors"
    tau = histogram.bucket_of(record.quantile_ms(0.99))
    slow = histogram.count_above(counts.latency_buckets, tau)
    record_slow = histogram.count_above(record.latency_buckets, tau)
    if judge.z_above(slow, sum(counts.latency_buckets), record_slow, sum(record.latency_buckets)) > z:
        return "latency"
    return None


def _share(counts: TrafficCounters) -> str:
    return f"{counts.failed}/{counts.requests} failed" if counts.requests else "no requests"


NO_DATA_EXPECTED = 10.0  # candidate requests expected but not seen: P(none | Poisson 10) = 5e-5


def _fold_blind(st: State, sample: TickSample, ctx: StepContext) -> State:
    """Count how many candidate requests the looks since the candidate's last one should have
    seen: from the traffic beside it and its weight, or, where it serves alone, from the replaced
    version's record. A look with a candidate request ends the blind spell."""
    weight = min(100, max(0, sample.candidate_weight))
    if sample.candidate.requests > 0 or weight <= 0:
        return {**st, "blind": None} if st.get("blind") is not None else st
    if weight < 100:
        expected = sample.baseline.requests * weight / (100 - weight)
    elif ctx.history is not None and ctx.history_span_s:
        expected = ctx.history.requests / ctx.history_span_s * sample.dt
    else:
        expected = 0.0
    blind = st.get("blind") or {"since": st["clock"] - sample.dt, "expected": 0.0}
    return {**st, "blind": {**blind, "expected": float(blind["expected"]) + expected}}


def _no_data(blind: Mapping[str, Any], now: float, ctx: StepContext) -> Decision:
    seconds = now - float(blind["since"])
    evidence = {"no_data": {"since_s": round(float(blind["since"]), 3), "seconds": round(seconds, 3),
                            "expected_requests": round(float(blind["expected"]), 1)}}
    what = (f"no data for {ctx.candidate_version or 'the candidate'} for {seconds:.0f}s (about "
            f"{float(blind['expected']):.0f} of its requests expected)")
    if ctx.analysis.on_no_data == "rollback":
        return Decision(Verdict.FAILED, f"{what}: rolling back (analysis.on_no_data: rollback)",
                        {**evidence, "trigger": "no_data"})
    return Decision(Verdict.INCONCLUSIVE, f"{what}: holding", evidence)


def _trigger_key(trigger: ThresholdTrigger) -> str:
    if isinstance(trigger, CustomMetricTrigger):
        return f"trigger:custom_metric:{trigger.metric}:{trigger.threshold:g}"
    if isinstance(trigger, ResponseTimeThresholdTrigger):
        return f"trigger:response_time:{trigger.statistic}:{trigger.threshold:g}"
    return f"trigger:error_rate:{trigger.threshold:g}"


def _added(histogram_a: Sequence[int], histogram_b: Sequence[int]) -> list[int]:
    """Two histograms added bucket by bucket (of one length, as every histogram)."""
    if len(histogram_a) != len(histogram_b):
        raise ValueError(f"histograms of {len(histogram_a)} and {len(histogram_b)} buckets cannot be added")
    return list(map(operator.add, histogram_a, histogram_b))


RECENT_LOOKS = 5  # the baseline's last looks that tell whether it is above a trigger itself


def _shared_slowdown(st: State) -> str | None:
    """The latency quantile ("p95", "p99") whose bound the baseline was beyond in the last look."""
    for name, held in (st.get("latency_pending") or {}).items():
        if held[3]:
            return str(name).removeprefix("latency_")
    return None


def _baseline_above(recent: Sequence[Sequence[float]], threshold: float) -> bool:
    """The baseline, over its recent looks ([requests, failed] each, this one last), served
    nothing in this look or failed more than `threshold` of its requests."""
    requests, failed = sum(n for n, _ in recent), sum(x for _, x in recent)
    return recent[-1][0] <= 0 or failed > threshold * requests


def _trigger_by_key(triggers: Sequence[ThresholdTrigger], key: str) -> ThresholdTrigger | None:
    return next((t for t in triggers if _trigger_key(t) == key), None)


def _fold_response_time(
    prior: Mapping[str, Any],
    trigger: ResponseTimeThresholdTrigger,
    c: TrafficCounters,
    now: float,
    restarts: judge.Restarts,
) -> dict[str, Any]:
    """p95/p99: the share of requests surely slower than the threshold (above its bucket) against
    5% / 1%. mean: testing by betting, one bet per request, on its bucket's lower bound."""
    threshold_ms = trigger.threshold * 1000.0
    if trigger.statistic == "mean":
        return judge.update_mean(
            prior, c.latency_buckets, threshold_ms, c.latency_sum_ms, now=now, restarts=restarts
        )
    slow = histogram.count_above(c.latency_buckets, histogram.bucket_of(threshold_ms))
    p0 = TRIGGER_SHARE_OF_SLOW[trigger.statistic]
    return judge.update_one_sample(
        prior, sum(c.latency_buckets), slow, p0, now=now, restarts=restarts
    )


def _summary(st: State, scores: Mapping[str, Score]) -> dict[str, Any]:
    base, cand = st["base"], st["cand"]
    return {
        "candidate_requests": cand["n"],
        "candidate_failed": cand["x"],
        "baseline_requests": base["n"],
        "baseline_failed": base["x"],
        "e_values": {name: round(score.e, 3) for name, score in scores.items()},
        "bounds": {name: round(1.0 / score.alpha, 3) for name, score in scores.items()},
    }


def _pct(rate: float) -> str:
    """A share as people write it: 100%, 48%, 5%, 1.5%, 0.52%, 0.007%."""
    percent = 100 * rate
    if percent >= 10 or percent == 0:
        return f"{percent:.0f}%"
    if percent >= 1:
        return f"{percent:.1f}".rstrip("0").rstrip(".") + "%"
    return f"{percent:.2g}%"


def _broken_counters(sample: TickSample) -> str:
    """Which version's counters decreased (a restarted router): that look measured nothing."""
    for version, counters in (("baseline", sample.baseline), ("candidate", sample.candidate)):
        if counters.requests < 0 or counters.failed < 0 or min(counters.latency_buckets) < 0:
            return version
    return ""


def _format_e(e: float) -> str:
    return f"{e:.0f}" if e < 1e5 else f"{e:.2g}"


def _explain_failure(
    st: State,
    name: str,
    scores: Mapping[str, Score],
    trigger: ThresholdTrigger | None,
    restarts: judge.Restarts,
    ctx: StepContext,
    *,
    stat: str | None = None,
) -> Decision:
    score = scores[name]
    test = st["tests"][name]
    e, bound = score.e, 1.0 / score.alpha
    run = judge.strongest_run(test) or {"j": 0, "counts": [0, 0]}
    counts = run["counts"]
    window_start = float(test.get("origin") or 0.0) + run["j"] * restarts.every
    evidence: dict[str, Any] = {
        "trigger": trigger.type if trigger is not None else "analysis",
        "test": name,
        "e_value": e,
        "bound": bound,
        "alpha": score.alpha,
        "window_start_s": window_start,  # on the policy's clock: seconds of analysis looked at
        **_evidence_counts(counts, trigger),
        "e_values": {other: s.e for other, s in scores.items()},
        "bounds": {other: 1.0 / s.alpha for other, s in scores.items()},
    }
    stat = stat or f"sequential test, e={_format_e(e)} > {bound:.0f}"
    return Decision(Verdict.FAILED, f"{_describe(st, name, counts, trigger, ctx.baseline_version)} ({stat})",
                    evidence)


def _evidence_counts(counts: Sequence[float], trigger: ThresholdTrigger | None) -> dict[str, Any]:
    def side(n: float, x: float) -> dict[str, float]:
        return {"requests": n, "events": x, "rate": _rate(x, n)}

    if isinstance(trigger, ResponseTimeThresholdTrigger) and trigger.statistic == "mean":
        n, total = counts
        return {"candidate": {"requests": n, "latency_sum_ms": total, "mean_ms": _rate(total, n)}}
    if len(counts) == 4:
        return {"baseline": side(counts[0], counts[1]), "candidate": side(counts[2], counts[3])}
    return {"candidate": side(counts[0], counts[1])}


def _rate(events: float, trials: float) -> float:
    return events / trials if trials > 0 else 0.0


def _describe(
    st: State, name: str, counts: Sequence[float], trigger: ThresholdTrigger | None, old: str = ""
) -> str:
    """The decision in one sentence, naming its control: "3.1x the errors of v1.4.0 side by side
    (1.5% vs 0.49%)", "error rate 1.3% vs v1.4.0's 0.5% before the deployment (null 0.61%)"."""
    control = old or "the baseline"
    if name == "errors":
        n_b, x_b, n_c, x_c = counts
        rate_b, rate_c = _rate(x_b, n_b), _rate(x_c, n_c)
        said = f"error rate {_pct(rate_c)} vs {_pct(rate_b)} for {control} side by side"
        if rate_b <= 0:
            return said
        ratio = rate_c / rate_b
        return f"{said}, {ratio:.1f}x" if ratio < 10 else f"{said}, {ratio:.0f}x"
    n, x = counts
    if name in QUANTILES:
        quantile = name.removeprefix("latency_")
        return _describe_latency(quantile, n, x, st["bounds_ms"][name], st["controls_ms"][name],
                                 f"{control}'s side by side")
    if name in SINGLE_TESTS:
        null = st["single"][name]
        when = "before the deployment" if null.get("source") == "history" else "before the switch"
        if name != "single_errors":
            return _describe_latency(name[-3:], n, x, null["bound_ms"], null["control_ms"], f"{control}'s {when}")
        return f"error rate {_pct(_rate(x, n))} vs {control}'s {_pct(null['rate'])} {when} (null {_pct(null['p0'])})"
    if name.startswith("metric:"):
        return f"{name[7:]}: candidate worse than {control} in {x:.0f} of {n:.0f} looks"
    return _describe_trigger(trigger, n, x)


def _describe_latency(quantile: str, n: float, x: float, bound: float, control_ms: float, whose: str) -> str:
    """"p99 latency: 3.1% of candidate requests slower than 250 ms, the most its p99 may be
    (the baseline's 190 ms, with the declared tolerance); at most 1% may be"."""
    allowed = 1.0 - QUANTILES[f"latency_{quantile}"]
    return (f"{quantile} latency: {_pct(_rate(x, n))} of candidate requests slower than {bound:.0f} ms, the most "
            f"its {quantile} may be ({whose} {control_ms:.0f} ms, with the declared tolerance); at most "
            f"{_pct(allowed)} may be")


def _describe_trigger(trigger: ThresholdTrigger | None, n: float, x: float) -> str:
    if isinstance(trigger, ErrorRateThresholdTrigger):
        return f"error rate {_pct(_rate(x, n))} above the {_pct(trigger.threshold)} trigger"
    if isinstance(trigger, ResponseTimeThresholdTrigger):
        ms = trigger.threshold * 1000
        if trigger.statistic == "mean":
            return f"mean latency {_rate(x, n):.0f} ms above the {ms:.0f} ms trigger"
        return (
            f"{trigger.statistic} latency above {ms:.0f} ms: {_pct(_rate(x, n))} of requests slower"
        )
    if isinstance(trigger, CustomMetricTrigger):
        looks = f"{x:.0f} of {n:.0f} looks above"
        return f"{trigger.metric} above {trigger.threshold:g} for {trigger.duration:.0f}s ({looks})"
    return "analysis failed"
