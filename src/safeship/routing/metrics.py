"""Prometheus exposition of router traffic counters.

A collector reads the counters when scraped instead of mirroring them into prometheus_client
metric objects, so the routers' hot paths stay free of any metrics library.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from safeship import histogram
from safeship.routing.base import RouteKey, TrafficCounters

__all__ = ["CONTENT_TYPE_LATEST", "DURATION_BUCKETS_MS", "TrafficCollector", "render"]

CountersSource = Callable[[], Mapping[RouteKey, Mapping[str, TrafficCounters]]]
UnroutedSource = Callable[[], Mapping[RouteKey, int]]

# Every fourth histogram bound (x1.75 apart, 0.5 ms .. ~110 s): ~20 buckets keep scrapes small
# while still resolving the latencies a judge compares.
_BUCKET_STEP = 4
_BUCKET_INDEXES: tuple[int, ...] = tuple(range(0, len(histogram.BOUNDS_MS), _BUCKET_STEP))
DURATION_BUCKETS_MS: tuple[float, ...] = tuple(histogram.BOUNDS_MS[i] for i in _BUCKET_INDEXES)
_BUCKET_LABELS: tuple[str, ...] = tuple(f"{bound / 1000.0:.6g}" for bound in DURATION_BUCKETS_MS)

_LABELS = ("service", "environment", "version")


class TrafficCollector:
    """A prometheus_client collector over `counters()`, e.g. `BuiltinRouter.snapshot`.

    `unrouted`, when given, adds `safeship_unrouted_requests_total{service,environment}`.
    """

    def __init__(self, counters: CountersSource, unrouted: UnroutedSource | None = None) -> None:
        self._counters = counters
        self._unrouted = unrouted

    def describe(self) -> Iterable[Metric]:
        families: list[Metric] = list(self._families())
        if self._unrouted is not None:
            families.append(self._unrouted_family())
        return families

    def collect(self) -> Iterable[Metric]:
        requests, errors, connect_failures, duration = families = self._families()
        for route, versions in self._counters().items():
            for version, counters in versions.items():
                labels = [route.service, route.environment, version]
                requests.add_metric(labels, counters.requests)
                errors.add_metric(labels, counters.errors)
                connect_failures.add_metric(labels, counters.connect_failures)
                duration.add_metric(
                    labels, _cumulative_buckets(counters), counters.latency_sum_ms / 1000.0
                )
        if self._unrouted is None:
            return families
        unrouted = self._unrouted_family()
        for route, count in self._unrouted().items():
            unrouted.add_metric([route.service, route.environment], count)
        return (*families, unrouted)

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily
    ]:
        return (
            CounterMetricFamily(
                "safeship_requests", "Requests routed to a version.", labels=_LABELS
            ),
            CounterMetricFamily(
                "safeship_request_errors", "Requests a version answered with 5xx.", labels=_LABELS
            ),
            CounterMetricFamily(
                "safeship_connect_failures",
                "Requests a version never answered (refused, reset before the first byte).",
                labels=_LABELS,
            ),
            HistogramMetricFamily(
                "safeship_request_duration_seconds",
                "Time from dispatch to an upstream until the response was relayed.",
                labels=_LABELS,
            ),
        )

    @staticmethod
    def _unrouted_family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "safeship_unrouted_requests",
            "Requests answered 503 because no version had a ready backend.",
            labels=("service", "environment"),
        )


def _cumulative_buckets(counters: TrafficCounters) -> list[tuple[str, float]]:
    """`le` buckets: a latency equal to a bound is counted in that bound's bucket, as
    `histogram.bucket_of` does; +Inf holds every observation."""
    running = list(itertools.accumulate(counters.latency_buckets))
    buckets: list[tuple[str, float]] = [
        (label, float(running[index]))
        for label, index in zip(_BUCKET_LABELS, _BUCKET_INDEXES, strict=True)
    ]
    buckets.append(("+Inf", float(running[-1]) if running else 0.0))
    return buckets


def render(counters: CountersSource, unrouted: UnroutedSource | None = None) -> bytes:
    """The Prometheus text exposition of every route's counters (serve as CONTENT_TYPE_LATEST)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrafficCollector(counters, unrouted))
    return generate_latest(registry)
