"""The simulated world behind `platforms.sim` and `routing.sim`: instances that start, become ready and
crash on a virtual clock, and traffic whose errors, latencies and gauges follow a scenario.

It sits below both plug-ins so that they share one truth without importing each other.

Failures of one version follow a two-state Markov chain over that version's requests (see
`chain_parameters`): its long-run failure share is the version's error rate and its failures come
in runs whose mean length is the version's `error_burst`. With `error_burst` 1 the chain is a
sequence of independent trials. Counts are drawn per slice of traffic, not per request, by drawing
the alternating runs of successes and failures (geometric lengths) that cover the slice and
carrying the chain's state from one slice to the next, so that the counts of a slice have the
chain's overdispersion and consecutive slices are correlated as the chain makes them.

Incidents (`traffic.incidents`) are placed relative to the deployment's start
(`start_deployment`): while one is in force every version fails at least its error rate and its
latencies are multiplied by its factor.

A candidate's regression may be confined to a share of the traffic, to some of its instances and
to the "on" part of a cycle (see `safeship.config.scenario`); `serve` is told the candidate's
routed share and the instance, and a version keeps one failure chain per behaviour (regressed or
not), so the runs of a regressed instance do not leak into a healthy one's. The router cuts
traffic into slices at every point where behaviour steps (`next_step`), so a slice never
straddles one and may be long where nothing happens.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from safeship import histogram
from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario
from safeship.traffic import TrafficCounters

_UPPER_LOG = np.log(np.array(histogram.BOUNDS_MS))
_SQRT2 = math.sqrt(2.0)
_EDGE_EPS = 1e-6  # a change closer than this after a point counts as behind it, so slicing advances


def bucket_probabilities(mu: float, sigma: float) -> np.ndarray:
    """P(latency in each histogram bucket) for a log-normal(mu, sigma) in ms."""
    scaled = ((_UPPER_LOG - mu) / (sigma * _SQRT2)).tolist()
    cdf = 0.5 * (1.0 + np.array([math.erf(x) for x in scaled]))
    probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    probs = np.clip(probs, 0.0, None)
    return np.asarray(probs / probs.sum())


HISTORY_SLICE_S = 5.0  # the baseline's record before the deployment is generated in slices this long
MAX_HISTORY_SLICES = 20_000  # a longer record uses longer slices
_MAX_BATCH = 1 << 20  # runs drawn at once when counting failures


def chain_parameters(error_rate: float, burst: float) -> tuple[float, float]:
    """(P(a request fails | the one before failed), P(it fails | the one before succeeded)) of the
    failure chain whose long-run failure share is `error_rate` and whose failure runs have mean
    length `burst`.

    A failure run's length is geometric with mean 1 / (1 - stay). Independent trials at rate p have
    runs of mean 1 / (1 - p), so the mean run length is max(burst, 1 / (1 - p)): a burst of 1 means
    independent trials (both probabilities equal p). The chance of entering a run is then set so
    that the stationary failure share is p: enter = p (1 - stay) / (1 - p)."""
    p = min(max(error_rate, 0.0), 1.0)
    if p <= 0.0 or p >= 1.0:
        return p, p
    stay = max(1.0 - 1.0 / max(burst, 1.0), p)
    return stay, p * (1.0 - stay) / (1.0 - p)


def chain_failures(
    rng: np.random.Generator, requests: int, error_rate: float, burst: float, failing: bool | None
) -> tuple[int, bool | None]:
    """(failed requests among `requests` consecutive ones, the chain's state after the last).

    `failing` is whether the request before the first failed; None means unknown, and it is drawn
    from the chain's stationary law. Independent trials are one binomial draw and leave the state
    unknown, since the next slice does not depend on it."""
    if requests <= 0:
        return 0, failing
    stay, enter = chain_parameters(error_rate, burst)
    if stay == enter:
        return int(rng.binomial(requests, error_rate)), None
    state = bool(rng.random() < error_rate) if failing is None else failing
    leave = {True: 1.0 - stay, False: enter}  # chance that a run of this state ends at each request
    mean_cycle = 1.0 / leave[True] + 1.0 / leave[False]
    remaining, failures, continuing = requests, 0, True
    while True:
        # Segments alternate between runs of `state` and of `not state`. The first segment of the
        # slice continues the run the previous request belongs to, so it may be empty; every later
        # one is a whole run. After a batch that ends with a whole run, the next run starts fresh.
        count = int(min(_MAX_BATCH, 2 * math.ceil(1.2 * remaining / mean_cycle) + 4))
        states = np.resize(np.array([state, not state]), count)
        lengths = rng.geometric(np.where(states, leave[True], leave[False]))
        if continuing:
            lengths[0] -= 1
        ends = np.cumsum(lengths)
        last = int(np.searchsorted(ends, remaining))
        if last < count:
            lengths[last] -= int(ends[last]) - remaining
            failures += int(lengths[: last + 1][states[: last + 1]].sum())
            return failures, bool(states[last])
        failures += int(lengths[states].sum())
        remaining -= int(ends[-1])
        state, continuing = not bool(states[-1]), False


@dataclass
class _Timeline:
    """When one instance's process dies and comes back: crash, restart, crash, restart, ... in
    order, extended only as far as anyone asks. Kept per instance so that asking about a crash
    loop does not replay it from the start each time."""

    started_at: float
    crash_after: float | None
    backoff: float
    events: list[float] = field(default_factory=list)

    def _extend(self, t: float) -> None:
        if self.crash_after is None:
            return
        while not self.events or self.events[-1] <= t:
            start = self.events[-1] if self.events else self.started_at
            crashed = start + self.crash_after
            self.events += [crashed, crashed + self.backoff * 2 ** min(len(self.events) // 2, 5)]

    def at(self, t: float) -> tuple[bool, int, float | None, float]:
        """(alive, restarts, last crash time, last start) at t."""
        if self.crash_after is None:
            return True, 0, None, self.started_at
        self._extend(t)
        seen = bisect.bisect_right(self.events, t)
        crashes = (seen + 1) // 2
        crashed_at = self.events[2 * crashes - 2] if crashes else None
        if seen % 2:
            return False, crashes, crashed_at, self.started_at
        return True, crashes, crashed_at, self.events[seen - 1] if seen else self.started_at

    def next_change(self, t: float) -> float:
        if self.crash_after is None:
            return math.inf
        self._extend(t + _EDGE_EPS)
        return self.events[bisect.bisect_right(self.events, t + _EDGE_EPS)]


@dataclass(frozen=True)
class _Regime:
    """How a version serves while nothing changes: failures, latency histogram, mean latency."""

    error_rate: float
    burst: float
    mu: float
    sigma: float
    probs: np.ndarray
    mean_ms: float
    chain: bool  # which failure chain of its version: the regressed candidate's or the plain one


_MAX_REGIMES = 4096  # a ramp makes a new regime every slice; forget them all past this many


def record_dispersion(slices: Sequence[tuple[int, int]]) -> float:
    """Pearson's dispersion of failures over a record's slices ((requests, failures) each): the
    chi-square of the counts around the record's own rate over its degrees of freedom, raised by
    two of its standard errors (sqrt(2 / df)) so that a record that happened to look calm is not
    taken for calmer than it is; at least 1. A record without failures has nothing to show: 1."""
    total = sum(n for n, _ in slices)
    failed = sum(x for _, x in slices)
    used = [(n, x) for n, x in slices if n > 0]
    if failed <= 0 or failed >= total or len(used) < 3:
        return 1.0
    rate = failed / total
    chi2 = sum((x - n * rate) ** 2 / (n * rate * (1 - rate)) for n, x in used)
    df = len(used) - 1
    return max(1.0, chi2 / df) * (1.0 + 2.0 * math.sqrt(2.0 / df))


@dataclass
class SimInstance:
    id: str
    service: str
    environment: str
    version: str
    index: int
    started_at: float
    stopped_at: float | None = None
    restarts: int = 0
    crashed_at: float | None = None  # when the running process last died
    port: int = 0


@dataclass
class SimWorld:
    """One scenario's world. Versions named `candidate_version` behave as the scenario's candidate;
    every other version behaves as its baseline."""

    scenario: Scenario
    clock: VirtualClock
    candidate_version: str = "candidate"
    seed: int = 0
    ready_delay_s: float = 2.0
    restart_backoff_s: float = 10.0
    instances: dict[str, SimInstance] = field(default_factory=dict)
    candidate_first_traffic: float | None = None
    deployment_start: float | None = None  # virtual time the deployment started; incidents count from it
    never_ready: set[str] = field(default_factory=set)  # versions that never pass readiness (tests)
    _probs_cache: dict[tuple[float, float], np.ndarray] = field(default_factory=dict)
    _failing: dict[tuple[str, bool], bool | None] = field(default_factory=dict)  # per (version, behaviour)
    _timelines: dict[str, _Timeline] = field(default_factory=dict)
    _regimes: dict[tuple[bool, bool, float, float, float], _Regime] = field(default_factory=dict)
    _incident_edges: list[float] | None = None
    _history_cache: dict[tuple[str, float, float], tuple[TrafficCounters, float]] = field(default_factory=dict)
    _next_port: int = 20000

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def start_deployment(self, at: float | None = None) -> None:
        """Mark the deployment's start (default: now). Incidents are placed from it, and the
        baseline's record before the deployment ends at it. Until it is called, the first spawn
        of the candidate version marks it."""
        self.deployment_start = self.clock.now() if at is None else at

    # ------------------------------------------------------------ instances

    def spawn(self, service: str, environment: str, version: str, index: int) -> SimInstance:
        if version == self.candidate_version and self.deployment_start is None:
            self.start_deployment()
        self._next_port += 1
        instance = SimInstance(
            id=f"{environment}/{service}/{version}-{index}",
            service=service,
            environment=environment,
            version=version,
            index=index,
            started_at=self.clock.now(),
            port=self._next_port,
        )
        self.instances[instance.id] = instance
        return instance

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever an instance is added to or removed from `instances` (spawns count up
        the ports; removals shrink the mapping), so a caller can keep what it derived from them."""
        return self._next_port, len(self.instances)

    def _crash_after(self, version: str) -> float | None:
        return self.scenario.candidate.crash_after_s if version == self.candidate_version else None

    def _ready_ever(self, version: str) -> bool:
        if version in self.never_ready:
            return False
        return self.scenario.candidate.ready if version == self.candidate_version else True

    def _timeline(self, instance: SimInstance) -> _Timeline:
        crash_after = self._crash_after(instance.version)
        line = self._timelines.get(instance.id)
        if line is None or (line.started_at, line.crash_after, line.backoff) != (
                instance.started_at, crash_after, self.restart_backoff_s):
            line = self._timelines[instance.id] = _Timeline(instance.started_at, crash_after, self.restart_backoff_s)
        return line

    def life(self, instance: SimInstance, at: float | None = None) -> tuple[bool, bool, int, float | None]:
        """(alive, ready, restarts, last crash time) at virtual time `at` (default: now).

        A crashing version dies `crash_after_s` after each (re)start and restarts after a backoff that
        doubles, as Kubernetes' CrashLoopBackOff does."""
        now = self.clock.now() if at is None else at
        if instance.stopped_at is not None and instance.stopped_at <= now:
            return False, False, instance.restarts, instance.crashed_at
        alive, restarts, crashed_at, start = self._timeline(instance).at(now)
        if not alive:
            return False, False, restarts, crashed_at
        ready = self._ready_ever(instance.version) and now - start >= self.ready_delay_s
        return True, ready, restarts, crashed_at

    def alive(self, instance: SimInstance, at: float) -> bool:
        if instance.stopped_at is not None and instance.stopped_at <= at:
            return False
        return self._crash_after(instance.version) is None or self._timeline(instance).at(at)[0]

    def next_step(self, t: float, instances: Iterable[SimInstance], candidate: bool) -> float:
        """The first time after t at which serving may change by a step: an incident starts or
        ends, one of `instances` dies or comes back, a bursty rate jumps, and, when `candidate`
        (it is served), its regression starts, ends its ramp or switches on or off. Traffic cut
        at these points can be drawn in long slices; inside a ramp see `changing`."""
        best = self.scenario.traffic.next_rate_step(t)
        if self.deployment_start is not None and self.scenario.traffic.incidents:
            if self._incident_edges is None:
                self._incident_edges = self.scenario.traffic.incident_edges()
            since = t - self.deployment_start
            after = bisect.bisect_right(self._incident_edges, since + _EDGE_EPS)
            if after < len(self._incident_edges):
                best = min(best, self.deployment_start + self._incident_edges[after])
        first = self.candidate_first_traffic
        if candidate and first is not None:
            best = min(best, first + self.scenario.next_regression_change(t - first))
        for instance in instances:
            if self._crash_after(instance.version) is not None:
                best = min(best, self._timeline(instance).next_change(t))
            if instance.stopped_at is not None and instance.stopped_at > t + _EDGE_EPS:
                best = min(best, instance.stopped_at)
        return best

    def changing(self, t: float) -> bool:
        """Whether the candidate's behaviour moves continuously at t, so that its traffic must be
        drawn in short slices: it is ramping, or has not had its first request (from which onset
        and cycles count)."""
        first = self.candidate_first_traffic
        return first is None or self.scenario.ramping(t - first)

    # ------------------------------------------------------------ traffic

    def _probs(self, mu: float, sigma: float) -> np.ndarray:
        key = (round(mu, 4), round(sigma, 4))
        cached = self._probs_cache.get(key)
        if cached is None:
            cached = self._probs_cache[key] = bucket_probabilities(*key)
        return cached

    def _regime(self, version: str, t: float, weight_percent: float | None, instance: int | None) -> _Regime:
        scenario = self.scenario
        candidate = version == self.candidate_version
        active, progress = False, 0.0
        if candidate:
            since = None if self.candidate_first_traffic is None else t - self.candidate_first_traffic
            active = scenario.regression_active(since, weight_percent, instance)
            progress = scenario.progress(since) if active else 0.0
        floor, factor = self.incident_at(t)
        key = (candidate, active, progress, floor, factor)
        regime = self._regimes.get(key)
        if regime is None:
            if len(self._regimes) >= _MAX_REGIMES:
                self._regimes.clear()
            if active:
                error_rate, burst = scenario.error_rate_at(progress), scenario.candidate_error_burst()
                mu, sigma = scenario.latency_at(progress)
            else:  # the baseline, or a candidate whose regression is confined elsewhere
                error_rate, burst = scenario.baseline.error_rate, scenario.baseline.error_burst
                mu, sigma = scenario.baseline.latency_ms.mu_sigma
            mu += math.log(factor)
            regime = self._regimes[key] = _Regime(
                max(error_rate, floor), burst, mu, sigma, self._probs(mu, sigma),
                math.exp(mu + sigma * sigma / 2), active,
            )
        return regime

    def behaviour(
        self, version: str, t: float, *, weight_percent: float | None = None, instance: int | None = None
    ) -> tuple[float, float, float]:
        """(error rate, mu, sigma) of `version` at virtual time t, incidents included, while the
        candidate serves `weight_percent` of the traffic, on the instance of that index (None:
        not known, which does not confine the regression)."""
        regime = self._regime(version, t, weight_percent, instance)
        return regime.error_rate, regime.mu, regime.sigma

    def incident_at(self, t: float) -> tuple[float, float]:
        """(error-rate floor, latency factor) the scenario's incidents impose at virtual time t."""
        since = None if self.deployment_start is None else t - self.deployment_start
        return self.scenario.traffic.incident_at(since)

    def error_burst(self, version: str) -> float:
        """Mean length of a run of failed requests of `version` while its regression is present."""
        if version == self.candidate_version:
            return self.scenario.candidate_error_burst()
        return self.scenario.baseline.error_burst

    def arrivals(self, t0: float, t1: float) -> int:
        """Requests to the service in [t0, t1), all versions together."""
        return int(self.rng.poisson(self.scenario.traffic.requests_between(t0, t1)))

    def serve_array(
        self, version: str, requests: int, t: float, *, weight_percent: float | None = None,
        instance: int | None = None,
    ) -> tuple[int, np.ndarray, float]:
        """`serve`, with the latency histogram as a numpy array (for adding in place)."""
        if requests <= 0:
            return 0, np.zeros(histogram.N_BUCKETS, dtype=np.int64), 0.0
        if version == self.candidate_version and self.candidate_first_traffic is None:
            self.candidate_first_traffic = t
        regime = self._regime(version, t, weight_percent, instance)
        chain = (version, regime.chain)
        errors, self._failing[chain] = chain_failures(
            self.rng, requests, regime.error_rate, regime.burst, self._failing.get(chain)
        )
        return errors, self.rng.multinomial(requests, regime.probs), regime.mean_ms * requests

    def serve(
        self, version: str, requests: int, t: float, *, weight_percent: float | None = None,
        instance: int | None = None,
    ) -> tuple[int, list[int], float]:
        """(errors, latency histogram, latency sum in ms) for `requests` served by `version` at t,
        while the candidate serves `weight_percent` of the traffic (None: not known, taken as
        enough for its regression), on the instance of index `instance` (None: not known, taken
        as a regressed one)."""
        errors, buckets, latency_sum = self.serve_array(
            version, requests, t, weight_percent=weight_percent, instance=instance
        )
        return errors, buckets.tolist(), latency_sum

    def history_window(
        self, version: str, span_s: float | None = None, end: float | None = None
    ) -> tuple[float, float, TrafficCounters] | None:
        """(start, end, counters): the record of `version` serving all of the service's traffic over
        the `span_s` seconds (default: the scenario's `history_s`) before `end` (default: the
        deployment's start, else now), drawn from the same model as live traffic: arrivals, the
        failure chain and the latency histogram. None when there is no record: the candidate never
        served before, or the window holds no time the version served alone.

        The window is clipped to the time the version served alone, and the bounds returned are
        the clipped ones: it ends no later than the deployment's start and begins no earlier than
        `history_s` before it. The record is drawn from a generator of its own (seeded from the
        world's seed and the version), so asking for it changes no live traffic, and the same
        question always gets the same answer."""
        start = self.deployment_start if self.deployment_start is not None else self.clock.now()
        stop = min(start, end) if end is not None else start
        span = self.scenario.history_s if span_s is None else max(0.0, span_s)
        begin = max(stop - span, start - self.scenario.history_s)
        if version == self.candidate_version or begin >= stop:
            return None
        return begin, stop, self._record(version, begin, stop)[0].plus(TrafficCounters())

    def history_dispersion(self, version: str, span_s: float | None = None, end: float | None = None) -> float | None:
        """The dispersion of `history_window`'s failures slice by slice (see `record_dispersion`);
        None when there is no record."""
        window = self.history_window(version, span_s, end)
        return None if window is None else self._record(version, window[0], window[1])[1]

    def _record(self, version: str, begin: float, stop: float) -> tuple[TrafficCounters, float]:
        key = (version, begin, stop)
        cached = self._history_cache.get(key)
        if cached is None:
            cached = self._history_cache[key] = self._draw_history(version, begin, stop)
        return cached

    def history(self, version: str, span_s: float | None = None, end: float | None = None) -> TrafficCounters:
        """The counters of `history_window`; empty when there is no record."""
        window = self.history_window(version, span_s, end)
        return TrafficCounters() if window is None else window[2]

    def _draw_history(self, version: str, begin: float, stop: float) -> tuple[TrafficCounters, float]:
        seed = np.random.SeedSequence([self.seed, 0x48495354, zlib.crc32(version.encode())])
        rng = np.random.default_rng(seed)
        spec = self.scenario.baseline
        mu, sigma = spec.latency_ms.mu_sigma
        probs = self._probs(mu, sigma)
        mean = math.exp(mu + sigma * sigma / 2)
        slices = max(1, min(MAX_HISTORY_SLICES, math.ceil((stop - begin) / HISTORY_SLICE_S)))
        width = (stop - begin) / slices
        record = TrafficCounters()
        buckets = np.zeros(len(probs), dtype=np.int64)
        failing: bool | None = None
        per_slice: list[tuple[int, int]] = []
        for i in range(slices):
            t0 = begin + i * width
            rate = self.scenario.traffic.rate_at(t0 + width / 2)
            requests = int(rng.poisson(max(0.0, rate) * width))
            if requests <= 0:
                continue
            errors, failing = chain_failures(rng, requests, spec.error_rate, spec.error_burst, failing)
            per_slice.append((requests, errors))
            record.requests += requests
            record.errors += errors
            record.latency_sum_ms += mean * requests
            buckets += rng.multinomial(requests, probs)
        record.latency_buckets = [int(b) for b in buckets]
        return record, record_dispersion(per_slice)

    def gauges(
        self, version: str, *, weight_percent: float | None = None, instances: Sequence[int] | None = None
    ) -> Mapping[str, float]:
        """One reading of each custom metric of `version`: the mean over its `instances` (indexes;
        None: not known), as an average over a version's pods reads, while the candidate serves
        `weight_percent` of the traffic."""
        values: dict[str, float] = {}
        for name, spec in self.scenario.candidate.metrics.items():
            if version == self.candidate_version and spec.candidate is not None:
                first = self.candidate_first_traffic
                since = None if first is None else self.clock.now() - first
                indexes: Sequence[int | None] = instances if instances else [None]
                share = sum(self.scenario.regression_share(since, weight_percent, i) for i in indexes) / len(indexes)
                centre = spec.centre(share)
            else:
                centre = spec.baseline
            values[name] = centre + (float(self.rng.normal(0.0, spec.noise)) if spec.noise else 0.0)
        return values
