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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from safeship.config.base import Int, Model, Number
from safeship.config.loader import read_yaml, validate
from safeship.config.models import DeploymentStrategy
from safeship.errors import ConfigError

MAX_SECONDS = 7 * 86400.0
MAX_LATENCY_MS = 3_600_000.0
MAX_BURST = 10_000.0
MAX_LATENCY_FACTOR = 1000.0
DEFAULT_HISTORY_S = 1800.0


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

    def rate_at(self, t: float) -> float:
        if self.pattern == "diurnal":
            return self.rps * (1 + self.amplitude * math.sin(2 * math.pi * t / self.period_s))
        if self.pattern == "bursty":
            phase = (t % self.period_s) / self.period_s
            return self.rps * (1 + self.amplitude if phase < 0.1 else 1 - self.amplitude / 9)
        return self.rps


class MetricSpec(Model):
    baseline: Number = 0.0
    candidate: Number | None = None
    noise: Number = Field(default=0.0, ge=0)
    fail_above: Number | None = None


class VersionSpec(Model):
    error_rate: Number = Field(default=0.005, ge=0, le=1)
    latency_ms: LatencySpec = Field(default_factory=LatencySpec)
    error_burst: Number = Field(default=1.0, ge=1, le=MAX_BURST)


class CandidateSpec(Model):
    error_rate: Number | None = Field(default=None, ge=0, le=1)
    latency_ms: LatencySpec | None = None
    error_burst: Number | None = Field(default=None, ge=1, le=MAX_BURST)
    onset_s: Number = Field(default=0.0, ge=0, le=MAX_SECONDS)
    ramp_s: Number = Field(default=0.0, ge=0, le=MAX_SECONDS)
    ready: bool = True
    crash_after_s: Number | None = Field(default=None, gt=0, le=MAX_SECONDS)
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)


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

    def candidate_error_rate(self, since_traffic: float | None) -> float:
        target = self.candidate.error_rate if self.candidate.error_rate is not None else self.baseline.error_rate
        return self.baseline.error_rate + (target - self.baseline.error_rate) * self._progress(since_traffic)

    def candidate_error_burst(self) -> float:
        burst = self.candidate.error_burst
        return self.baseline.error_burst if burst is None else burst

    def candidate_latency(self, since_traffic: float | None) -> tuple[float, float]:
        base_mu, base_sigma = self.baseline.latency_ms.mu_sigma
        spec = self.candidate.latency_ms or self.baseline.latency_ms
        mu, sigma = spec.mu_sigma
        share = self._progress(since_traffic)
        return base_mu + (mu - base_mu) * share, base_sigma + (sigma - base_sigma) * share

    def _progress(self, since_traffic: float | None) -> float:
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
