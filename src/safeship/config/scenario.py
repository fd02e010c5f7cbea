"""Release scenarios for the simulator and the analysis benchmark.

A scenario is one YAML mapping: `name`, `description`, `seed`, `duration_s`, `strategy`,
`history_s`, `traffic`, `baseline`, `candidate` and `expect` (rollback | promote). It is read with
the same strict YAML reader as the config (duplicate keys, non-UTF-8 text, unknown fields and
nonsense values are one-sentence errors), and its numbers are bounded: a simulation runs at most
7 virtual days at most 1,000,000 requests/s.

Correlated failures are part of the format:

- `error_burst` (baseline and candidate) is the mean length of a run of consecutive failed
  requests of one version. 1 means independent failures; the candidate takes the baseline's
  value unless it gives its own. It is at least 1 and at most MAX_BURST.
- `traffic.incidents` are shocks that hit every version alike: during
  [at_s, at_s + duration_s) after the deployment's start, every version fails at least
  `error_rate` of its requests and its latencies are multiplied by `latency_factor`. The factor
  is at least 1 (an incident never makes a service faster) and at most MAX_LATENCY_FACTOR.

A candidate's regression (its error rate, failure runs, latency and custom metrics differing
from the baseline's) can be confined in three ways, which combine with each other and with onset
and ramp: to the times the candidate serves at least `min_weight_percent` of the traffic, to its
first `bad_instances` instances, and to the "on" part of an `intermittent` cycle. Outside them
the candidate behaves exactly like the baseline. `Scenario.regression_share` is the one place
that says how much of the regression is present; the simulator and anyone computing what a
release ought to cost both ask it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from safeship.config.base import MAX_COUNT, Int, Model, Number
from safeship.config.loader import read_yaml, validate
from safeship.config.models import DeploymentStrategy
from safeship.errors import ConfigError

MAX_SECONDS = 7 * 86400.0
MAX_LATENCY_MS = 3_600_000.0
MAX_BURST = 10_000.0
MAX_LATENCY_FACTOR = 1000.0
DEFAULT_HISTORY_S = 1800.0
_EDGE_EPS = 1e-6  # edges closer than this after a point count as behind it, so slicing always advances
_BURST_SHARE = 0.1  # a bursty pattern's high part, as a share of its period


class LatencySpec(Model):
    p50: Number = Field(default=40.0, gt=0, le=MAX_LATENCY_MS)
    p99: Number = Field(default=180.0, gt=0, le=MAX_LATENCY_MS)

    @model_validator(mode="after")
    def _ordered(self) -> LatencySpec:
        if self.p99 < self.p50:
            raise ValueError(f"p99 must be >= p50, got p50={self.p50} p99={self.p99}")
        return self

    @property
    def mu_sigma(self) -> tuple[float, float]:
        """Log-normal parameters fitted through p50 and p99 (z(0.99) = 2.3263)."""
        mu = math.log(self.p50)
        return mu, (math.log(self.p99) - mu) / 2.3263478740408408


class IncidentSpec(Model):
    """A shock that hits every version alike (a shared dependency goes down), `at_s` seconds after
    the deployment starts, for `duration_s` seconds."""

    at_s: Number = Field(ge=0, le=MAX_SECONDS)
    duration_s: Number = Field(gt=0, le=MAX_SECONDS)
    error_rate: Number = Field(default=0.0, ge=0, le=1)
    latency_factor: Number = Field(default=1.0, ge=1, le=MAX_LATENCY_FACTOR)

    def covers(self, since_start: float) -> bool:
        return self.at_s <= since_start < self.at_s + self.duration_s


class TrafficSpec(Model):
    rps: Number = Field(default=100.0, gt=0, le=1_000_000)
    pattern: Literal["constant", "diurnal", "bursty"] = "constant"
    amplitude: Number = Field(default=0.0, ge=0, le=1)
    period_s: Number = Field(default=600.0, gt=0, le=MAX_SECONDS)
    incidents: list[IncidentSpec] = Field(default_factory=list, max_length=1000)

    def incident_at(self, since_start: float | None) -> tuple[float, float]:
        """(error-rate floor, latency factor) that incidents impose `since_start` seconds after the
        deployment's start: the highest floor and the product of the factors of every incident in
        force; (0, 1) when none is, or when the deployment has not started."""
        floor, factor = 0.0, 1.0
        if since_start is None:
            return floor, factor
        for incident in self.incidents:
            if incident.covers(since_start):
                floor = max(floor, incident.error_rate)
                factor *= incident.latency_factor
        return floor, factor

    def incident_edges(self) -> list[float]:
        """Every incident's start and end, in seconds after the deployment's start, sorted."""
        return sorted({e for i in self.incidents for e in (i.at_s, i.at_s + i.duration_s)})

    def rate_at(self, t: float) -> float:
        if self.pattern == "diurnal":
            return self.rps * (1 + self.amplitude * math.sin(2 * math.pi * t / self.period_s))
        if self.pattern == "bursty":
            phase = (t % self.period_s) / self.period_s
            return self.rps * (1 + self.amplitude if phase < _BURST_SHARE else 1 - self.amplitude / 9)
        return self.rps

    def requests_between(self, t0: float, t1: float) -> float:
        """Expected requests in [t0, t1): the integral of `rate_at`, exact for every pattern, so that
        a slice of traffic may be long."""
        span = max(0.0, t1 - t0)
        if self.pattern == "diurnal":
            turn = 2 * math.pi / self.period_s
            return self.rps * (span + self.amplitude * (math.cos(turn * t0) - math.cos(turn * t1)) / turn)
        if self.pattern == "bursty":
            return self._bursty_before(t1) - self._bursty_before(t0) if span else 0.0
        return self.rps * span

    def _bursty_before(self, t: float) -> float:
        """Requests a bursty pattern expects in [0, t)."""
        high, low = self.rps * (1 + self.amplitude), self.rps * (1 - self.amplitude / 9)
        width = _BURST_SHARE * self.period_s
        cycles, rest = divmod(t, self.period_s)
        return cycles * (high * width + low * (self.period_s - width)) + high * min(rest, width) + low * max(
            0.0, rest - width)

    def steady_slice_s(self) -> float:
        """The longest slice over which the pattern may be taken as one block: a twentieth of its
        period for the patterns that swing, unlimited for a constant rate."""
        return math.inf if self.pattern == "constant" else self.period_s / 20

    def next_rate_step(self, t: float) -> float:
        """The first time strictly after t at which a bursty rate jumps; inf for the other patterns."""
        if self.pattern != "bursty":
            return math.inf
        start = math.floor(t / self.period_s) * self.period_s
        edges = (start, start + _BURST_SHARE * self.period_s, start + self.period_s,
                 start + (1 + _BURST_SHARE) * self.period_s)
        return min(e for e in edges if e > t + _EDGE_EPS)


class MetricSpec(Model):
    baseline: Number = 0.0
    candidate: Number | None = None
    noise: Number = Field(default=0.0, ge=0)
    fail_above: Number | None = None

    def centre(self, share: float) -> float:
        """The candidate's mean reading when `share` of its regression is present (0: the baseline's)."""
        if self.candidate is None:
            return self.baseline
        return self.baseline + (self.candidate - self.baseline) * share


class VersionSpec(Model):
    error_rate: Number = Field(default=0.005, ge=0, le=1)
    latency_ms: LatencySpec = Field(default_factory=LatencySpec)
    error_burst: Number = Field(default=1.0, ge=1, le=MAX_BURST)


class IntermittentSpec(Model):
    """The regression is on for the first `duty` share of every `period_s` seconds, counted from the
    candidate's first request, and off for the rest."""

    period_s: Number = Field(gt=0, le=MAX_SECONDS)
    duty: Number = Field(gt=0, le=1)

    def on(self, since: float) -> bool:
        return (since % self.period_s) < self.duty * self.period_s

    def next_edge(self, since: float) -> float:
        """The first switch on or off strictly after `since` (seconds from the first request)."""
        period, width = self.period_s, self.duty * self.period_s
        if width >= period:
            return math.inf
        start = math.floor(since / period) * period
        # Float rounding may put `start` one period off near an edge, so look at three periods.
        edges = (start - period + width, start, start + width, start + period, start + period + width)
        return min((e for e in edges if e > since + _EDGE_EPS), default=start + 2 * period)

    def on_seconds(self, begin: float, end: float) -> float:
        """Seconds of [begin, end) (from the first request) during which the regression is on."""
        if end <= begin:
            return 0.0
        width = self.duty * self.period_s

        def on_before(t: float) -> float:  # on-seconds in [0, t)
            cycles, rest = divmod(max(t, 0.0), self.period_s)
            return cycles * width + min(rest, width)

        return on_before(end) - on_before(begin)


class CandidateSpec(Model):
    error_rate: Number | None = Field(default=None, ge=0, le=1)
    latency_ms: LatencySpec | None = None
    error_burst: Number | None = Field(default=None, ge=1, le=MAX_BURST)
    onset_s: Number = Field(default=0.0, ge=0, le=MAX_SECONDS)
    ramp_s: Number = Field(default=0.0, ge=0, le=MAX_SECONDS)
    ready: bool = True
    crash_after_s: Number | None = Field(default=None, gt=0, le=MAX_SECONDS)
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    min_weight_percent: Number = Field(default=0.0, ge=0, le=100)
    bad_instances: Int | None = Field(default=None, ge=1, le=MAX_COUNT)
    intermittent: IntermittentSpec | None = None


class Scenario(Model):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    seed: Int = Field(default=0, ge=0, lt=2**64)  # numpy's generators refuse negative seeds
    duration_s: Number = Field(default=1800.0, gt=0, le=MAX_SECONDS)
    strategy: DeploymentStrategy = DeploymentStrategy.CANARY
    history_s: Number = Field(default=DEFAULT_HISTORY_S, ge=0, le=MAX_SECONDS)
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    baseline: VersionSpec = Field(default_factory=VersionSpec)
    candidate: CandidateSpec = Field(default_factory=CandidateSpec)
    expect: Literal["rollback", "promote"]

    # ------------------------------------------------------------ the candidate's regression

    def regression_active(
        self, since_first_request: float | None, weight_percent: float | None = None,
        instance_index: int | None = None,
    ) -> bool:
        """Whether the candidate behaves as the candidate (True) or exactly as the baseline (False):
        its routed share of the traffic, in percent, is at least `min_weight_percent`, the instance
        is one of the first `bad_instances`, and an intermittent regression is in its "on" part.
        None for the share or the instance means not known, and does not confine the regression;
        neither does an unknown time (before any request nothing of the regression is present
        anyway, see `regression_share`)."""
        spec = self.candidate
        if weight_percent is not None and weight_percent < spec.min_weight_percent:
            return False
        if instance_index is not None and spec.bad_instances is not None and instance_index >= spec.bad_instances:
            return False
        return not (since_first_request is not None and spec.intermittent is not None
                    and not spec.intermittent.on(since_first_request))

    def regression_share(
        self, since_first_request: float | None, weight_percent: float | None = None,
        instance_index: int | None = None,
    ) -> float:
        """How much of the candidate's regression is present, 0 (it behaves like the baseline) to 1
        (fully), `since_first_request` seconds after its first request (None: before it), while it
        serves `weight_percent` of the traffic, on the instance of that index."""
        if not self.regression_active(since_first_request, weight_percent, instance_index):
            return 0.0
        return self.progress(since_first_request)

    def regressed_instances(self, replicas: int) -> int:
        """How many of a version's first `replicas` instances carry the regression."""
        bad = self.candidate.bad_instances
        return replicas if bad is None else min(bad, replicas)

    def error_rate_at(self, share: float) -> float:
        """The candidate's error rate with `share` of its regression present."""
        target = self.candidate.error_rate if self.candidate.error_rate is not None else self.baseline.error_rate
        return self.baseline.error_rate + (target - self.baseline.error_rate) * share

    def latency_at(self, share: float) -> tuple[float, float]:
        """The candidate's log-normal (mu, sigma) with `share` of its regression present."""
        base_mu, base_sigma = self.baseline.latency_ms.mu_sigma
        mu, sigma = (self.candidate.latency_ms or self.baseline.latency_ms).mu_sigma
        return base_mu + (mu - base_mu) * share, base_sigma + (sigma - base_sigma) * share

    def candidate_error_rate(
        self, since_traffic: float | None, weight_percent: float | None = None, instance_index: int | None = None
    ) -> float:
        return self.error_rate_at(self.regression_share(since_traffic, weight_percent, instance_index))

    def candidate_error_burst(self) -> float:
        burst = self.candidate.error_burst
        return self.baseline.error_burst if burst is None else burst

    def candidate_latency(
        self, since_traffic: float | None, weight_percent: float | None = None, instance_index: int | None = None
    ) -> tuple[float, float]:
        return self.latency_at(self.regression_share(since_traffic, weight_percent, instance_index))

    def ramping(self, since_first_request: float | None) -> bool:
        """Whether the regression is part-way through its ramp (it changes from moment to moment)."""
        spec = self.candidate
        return (since_first_request is not None and spec.ramp_s > 0
                and spec.onset_s <= since_first_request < spec.onset_s + spec.ramp_s)

    def next_regression_change(self, since_first_request: float) -> float:
        """The first time strictly after `since_first_request` (seconds from the first request) at
        which the regression may change by a step: its onset, the end of its ramp, an intermittent
        edge; inf when none is left. Inside a ramp it changes all the time (see `ramping`)."""
        spec = self.candidate
        after = since_first_request + _EDGE_EPS
        points = [p for p in (spec.onset_s, spec.onset_s + spec.ramp_s) if p > after]
        if spec.intermittent is not None:
            points.append(spec.intermittent.next_edge(since_first_request))
        return min(points, default=math.inf)

    def progress(self, since_traffic: float | None) -> float:
        """0 before onset, rising linearly to 1 over ramp_s."""
        if since_traffic is None or since_traffic < self.candidate.onset_s:
            return 0.0
        if self.candidate.ramp_s <= 0:
            return 1.0
        return min(1.0, (since_traffic - self.candidate.onset_s) / self.candidate.ramp_s)


def load_scenario(path: str | Path) -> Scenario:
    data: Any = read_yaml(Path(path))
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(str(path), "", f"a scenario must be a mapping, got {kind}")
    return validate(Scenario, data, str(path))
