"""What a deployment measures: requests, failures and latency histograms per version of a route.

Measuring traffic is kept apart from steering it. A `TrafficSource` only reads; a router steers
and, by default, also measures (`safeship.routing.traffic.RouterTraffic`); a metrics system such
as Prometheus can be a source of its own. This module sits below the routers and the analysis:
the analysis and the engine read it, the routers implement it, and it imports neither.
"""

from __future__ import annotations

import bisect
import operator
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from safeship import histogram
from safeship.clock import Clock
from safeship.config.models import Environment, SafeshipConfig
from safeship.plugins import load, register_in


@dataclass(frozen=True)
class RouteKey:
    service: str
    environment: str

    def __str__(self) -> str:
        return f"{self.environment}/{self.service}"


@dataclass
class TrafficCounters:
    """Cumulative per-version counters since the router started serving the route.

    `errors` are 5xx responses; `connect_failures` are requests that never got a response from
    an upstream (refused, reset before the first byte). A request retried on another instance
    is still counted once as a connect failure on the version that failed it.
    """

    requests: int = 0
    errors: int = 0
    connect_failures: int = 0
    latency_sum_ms: float = 0.0
    latency_buckets: list[int] = field(default_factory=histogram.empty)

    @property
    def failed(self) -> int:
        return self.errors + self.connect_failures

    def observe(self, latency_ms: float, *, status: int | None) -> None:
        self.requests += 1
        if status is None:
            self.connect_failures += 1
        elif status >= 500:
            self.errors += 1
        self.latency_sum_ms += latency_ms
        self.latency_buckets[histogram.bucket_of(latency_ms)] += 1

    def minus(self, earlier: TrafficCounters) -> TrafficCounters:
        """What happened between `earlier` and now (both cumulative)."""
        return TrafficCounters(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            connect_failures=self.connect_failures - earlier.connect_failures,
            latency_sum_ms=self.latency_sum_ms - earlier.latency_sum_ms,
            latency_buckets=_bucketwise(operator.sub, self.latency_buckets, earlier.latency_buckets),
        )

    def plus(self, other: TrafficCounters) -> TrafficCounters:
        return TrafficCounters(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            connect_failures=self.connect_failures + other.connect_failures,
            latency_sum_ms=self.latency_sum_ms + other.latency_sum_ms,
            latency_buckets=_bucketwise(operator.add, self.latency_buckets, other.latency_buckets),
        )

    def quantile_ms(self, q: float) -> float:
        return histogram.quantile(self.latency_buckets, q)

    @property
    def mean_ms(self) -> float:
        return self.latency_sum_ms / self.requests if self.requests else float("nan")

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else float("nan")

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "connect_failures": self.connect_failures,
            "latency_sum_ms": self.latency_sum_ms,
            "latency_buckets": list(self.latency_buckets),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TrafficCounters:
        buckets = data.get("latency_buckets")
        return cls(
            requests=int(data.get("requests", 0)),  # type: ignore[call-overload]
            errors=int(data.get("errors", 0)),  # type: ignore[call-overload]
            connect_failures=int(data.get("connect_failures", 0)),  # type: ignore[call-overload]
            latency_sum_ms=float(data.get("latency_sum_ms", 0.0)),  # type: ignore[arg-type]
            latency_buckets=list(buckets) if isinstance(buckets, list) else histogram.empty(),
        )



def _bucketwise(op: Callable[[int, int], int], a: list[int], b: list[int]) -> list[int]:
    """`op` of two histograms bucket by bucket (map runs it in C: counters are copied and
    differenced at every look and every read of a simulated router)."""
    if len(a) != len(b):
        raise ValueError(f"histograms of {len(a)} and {len(b)} buckets do not match")
    return list(map(op, a, b))


@dataclass(frozen=True)
class TrafficWindow:
    """What a route served between `start` and `end` (seconds on the source's clock), per version."""

    start: float
    end: float
    counters: Mapping[str, TrafficCounters]
    # Per version, when the source can tell: the variance of its failures per slice of the window
    # over the binomial variance (Pearson's dispersion, 1 for independent failures, about
    # 2 x run length - 1 for failures in runs). Absent: unknown.
    dispersion: Mapping[str, float] = field(default_factory=dict)


class SnapshotRing:
    """Timestamped copies of a source's cumulative counters per route, the last `size` of them,
    from which `window` answers `TrafficSource.before`.

    `keep` drops a snapshot less than `min_spacing` seconds after the last one kept (or earlier
    than it: a clock that went back), so the ring stays ordered. `window(route, at, span)` is the
    difference between the latest snapshot at or before `at - span` and the latest at or before
    `at`, with their real times as bounds; with `from_first`, the first snapshot stands in for
    the start when none is that early (a source that kept an empty snapshot when it started). It
    is None when there is no such pair, or when the counters went back in between (a restarted
    router: that window measured nothing)."""

    def __init__(self, size: int, *, min_spacing: float) -> None:
        self.size = size
        self.min_spacing = min_spacing
        self._kept: dict[RouteKey, deque[tuple[float, dict[str, TrafficCounters]]]] = {}

    def keep(self, route: RouteKey, now: float, counters: Mapping[str, TrafficCounters]) -> None:
        kept = self._kept.setdefault(route, deque(maxlen=self.size))
        if kept and now - kept[-1][0] < self.min_spacing:
            return
        kept.append((now, {version: c.plus(TrafficCounters()) for version, c in counters.items()}))

    def window(self, route: RouteKey, at: float, span: float, *, from_first: bool = False) -> TrafficWindow | None:
        kept = self._kept.get(route)
        if not kept or span <= 0:
            return None
        times = [t for t, _ in kept]
        start_i = bisect.bisect_right(times, at - span) - 1
        if from_first:
            start_i = max(start_i, 0)
        end_i = bisect.bisect_right(times, at) - 1
        if start_i < 0 or end_i <= start_i:
            return None
        (t0, first), (t1, last) = kept[start_i], kept[end_i]
        window: dict[str, TrafficCounters] = {}
        for version, counters in last.items():
            delta = counters.minus(first.get(version, TrafficCounters()))
            if delta.requests < 0 or any(b < 0 for b in delta.latency_buckets):
                return None
            window[version] = delta
        return TrafficWindow(start=t0, end=t1, counters=window)


class TrafficSource(Protocol):
    """Reads what a route served, per version; never changes any routing.

    Contract:
    - `counters(route)` returns cumulative counters per version since an origin the source picks
      (for a router: since it started serving the route). Two reads, differenced with
      `TrafficCounters.minus`, are the window between them: this is how a deployment's analysis
      measures each look. A version's counters never decrease while the origin stays; when they
      do (a restarted router), a window across that moment measured nothing.
    - `before(route, at, span)` returns the window `[at - span, at]` (or the closest window the
      source recorded inside it, with its real bounds), e.g. the stable version's own record before
      a deployment started; None when the source has no record covering that time. It never
      guesses.
    - A failure to measure is a `TemporaryError` (look again later); nothing else escapes.
    """

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]: ...

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TrafficSetup:
    """What a registered traffic source may be built from. `router` is the environment's router
    (the default source reads it); `clock` timestamps what the source records; `config` and
    `environment` are the settings it serves (None where a test builds it bare)."""

    router: Any  # a safeship.routing.base.Router; typed loosely since routing sits above this module
    clock: Clock
    state_dir: Path
    config: SafeshipConfig | None = None
    environment: Environment | None = None


class TrafficSourceClass(Protocol):
    """The class side of a registered traffic source: how the controller builds one."""

    name: ClassVar[str]

    def create(self, setup: TrafficSetup) -> TrafficSource: ...


DEFAULT_TRAFFIC_SOURCE = "router"

# name -> "module:Class" (loaded on first use) or the class itself (registered at run time)
TRAFFIC_SOURCES: dict[str, str | type] = {
    "router": "safeship.routing.traffic:RouterTraffic",
    "sim": "safeship.routing.sim:SimTraffic",
    "prometheus": "safeship.analysis.providers.prometheus:PrometheusTraffic",
    "haproxy": "safeship.routing.haproxy_log:HAProxyLogTraffic",
}


def traffic_source_class(name: str) -> Any:
    """The traffic source class registered as `name`; an unknown name is an InputError."""
    return load(TRAFFIC_SOURCES, name, "traffic source")


def register_traffic_source(name: str, cls_or_path: str | type) -> None:
    """Register (or replace) the traffic source called `name`: a class or a "module:Class" path."""
    register_in(TRAFFIC_SOURCES, name, cls_or_path, "traffic source")
