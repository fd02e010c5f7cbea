"""The simulated world behind `platforms.sim` and `routing.sim`: instances that start, become ready and
crash on a virtual clock, and traffic whose errors, latencies and gauges follow a scenario.

It sits below both plug-ins so that they share one truth without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from safeship import histogram
from safeship.clock import VirtualClock
from safeship.config.scenario import Scenario

_UPPER_LOG = np.log(np.array(histogram.BOUNDS_MS))
_SQRT2 = math.sqrt(2.0)
_erf = np.vectorize(math.erf)


def bucket_probabilities(mu: float, sigma: float) -> np.ndarray:
    """P(latency in each histogram bucket) for a log-normal(mu, sigma) in ms."""
    cdf = 0.5 * (1.0 + _erf((_UPPER_LOG - mu) / (sigma * _SQRT2)))
    probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    probs = np.clip(probs, 0.0, None)
    return np.asarray(probs / probs.sum())


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
    never_ready: set[str] = field(default_factory=set)  # versions that never pass readiness (tests)
    _probs_cache: dict[tuple[float, float], np.ndarray] = field(default_factory=dict)
    _next_port: int = 20000

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    # ------------------------------------------------------------ instances

    def spawn(self, service: str, environment: str, version: str, index: int) -> SimInstance:
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

    def _crash_after(self, version: str) -> float | None:
        return self.scenario.candidate.crash_after_s if version == self.candidate_version else None

    def _ready_ever(self, version: str) -> bool:
        if version in self.never_ready:
            return False
        return self.scenario.candidate.ready if version == self.candidate_version else True

    def life(self, instance: SimInstance) -> tuple[bool, bool, int, float | None]:
        """(alive, ready, restarts, last crash time) at the current virtual time.

        A crashing version dies `crash_after_s` after each (re)start and restarts after a backoff that
        doubles, as Kubernetes' CrashLoopBackOff does."""
        now = self.clock.now()
        if instance.stopped_at is not None and instance.stopped_at <= now:
            return False, False, instance.restarts, instance.crashed_at
        crash_after = self._crash_after(instance.version)
        start, restarts, crashed_at = instance.started_at, 0, None
        if crash_after is not None:
            while start + crash_after <= now:
                crashed_at = start + crash_after
                restart_at = crashed_at + self.restart_backoff_s * 2 ** min(restarts, 5)
                restarts += 1
                if restart_at > now:
                    return False, False, restarts, crashed_at
                start = restart_at
        ready = self._ready_ever(instance.version) and now - start >= self.ready_delay_s
        return True, ready, restarts, crashed_at

    # ------------------------------------------------------------ traffic

    def _probs(self, mu: float, sigma: float) -> np.ndarray:
        key = (round(mu, 4), round(sigma, 4))
        cached = self._probs_cache.get(key)
        if cached is None:
            cached = self._probs_cache[key] = bucket_probabilities(*key)
        return cached

    def behaviour(self, version: str, t: float) -> tuple[float, float, float]:
        """(error rate, mu, sigma) of `version` at virtual time t."""
        scenario = self.scenario
        if version != self.candidate_version:
            mu, sigma = scenario.baseline.latency_ms.mu_sigma
            return scenario.baseline.error_rate, mu, sigma
        since = None if self.candidate_first_traffic is None else t - self.candidate_first_traffic
        mu, sigma = scenario.candidate_latency(since)
        return scenario.candidate_error_rate(since), mu, sigma

    def arrivals(self, t0: float, t1: float) -> int:
        """Requests to the service in [t0, t1), all versions together."""
        rate = self.scenario.traffic.rate_at((t0 + t1) / 2)
        return int(self.rng.poisson(max(0.0, rate) * (t1 - t0)))

    def serve(self, version: str, requests: int, t: float) -> tuple[int, list[int], float]:
        """(errors, latency histogram, latency sum in ms) for `requests` served by `version` at t."""
        if requests <= 0:
            return 0, histogram.empty(), 0.0
        if version == self.candidate_version and self.candidate_first_traffic is None:
            self.candidate_first_traffic = t
        error_rate, mu, sigma = self.behaviour(version, t)
        errors = int(self.rng.binomial(requests, error_rate))
        buckets = self.rng.multinomial(requests, self._probs(mu, sigma))
        mean = math.exp(mu + sigma * sigma / 2)
        return errors, [int(b) for b in buckets], mean * requests

    def gauges(self, version: str) -> Mapping[str, float]:
        values: dict[str, float] = {}
        for name, spec in self.scenario.candidate.metrics.items():
            if version == self.candidate_version and spec.candidate is not None:
                since = self.clock.now() - (self.candidate_first_traffic or self.clock.now())
                share = self.scenario._progress(since if self.candidate_first_traffic is not None else None)
                centre = spec.baseline + (spec.candidate - spec.baseline) * share
            else:
                centre = spec.baseline
            values[name] = centre + (float(self.rng.normal(0.0, spec.noise)) if spec.noise else 0.0)
        return values
