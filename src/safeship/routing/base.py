"""The Router protocol: who gets traffic. Only the interface and its value types live here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from safeship import histogram


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
            latency_buckets=[a - b for a, b in zip(self.latency_buckets, earlier.latency_buckets, strict=True)],
        )

    def plus(self, other: TrafficCounters) -> TrafficCounters:
        return TrafficCounters(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            connect_failures=self.connect_failures + other.connect_failures,
            latency_sum_ms=self.latency_sum_ms + other.latency_sum_ms,
            latency_buckets=[a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=True)],
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


@dataclass(frozen=True)
class Backend:
    """One upstream instance of a version: its address and whether it may get new requests."""

    instance_id: str
    host: str
    port: int


class Router(Protocol):
    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        """The ready instances of `version`. A backend that leaves the list is drained: it gets no
        new requests and its in-flight requests finish."""
        ...

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        """Percent of new requests per version (sums to 100). Ends any hold on the route."""
        ...

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        """Queue new requests for up to `max_wait` seconds instead of failing them (the
        recreate gap). Released by the next `set_weights` that names a version with backends."""
        ...

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        """Cumulative counters per version."""
        ...

    async def close(self) -> None: ...
