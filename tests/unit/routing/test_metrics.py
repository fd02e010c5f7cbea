"""Prometheus exposition of router counters: names, labels and cumulative `le` buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from safeship import histogram
from safeship.routing.base import RouteKey, TrafficCounters
from safeship.routing.metrics import DURATION_BUCKETS_MS, TrafficCollector, render

SHOP = RouteKey(service="shop", environment="prod")


def counters_of(*observations: tuple[float, int | None]) -> TrafficCounters:
    counters = TrafficCounters()
    for latency_ms, status in observations:
        counters.observe(latency_ms, status=status)
    return counters


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def labels(version: str, **extra: str) -> tuple[tuple[str, str], ...]:
    values = {"service": "shop", "environment": "prod", "version": version, **extra}
    return tuple(sorted(values.items()))


def test_counters_are_rendered_per_version() -> None:
    stable = counters_of((1.0, 200), (2.0, 500), (3.0, None))
    canary = counters_of((4.0, 200))

    seen = samples(render(lambda: {SHOP: {"v1": stable, "v2": canary}}))

    assert seen["safeship_requests_total", labels("v1")] == 3
    assert seen["safeship_request_errors_total", labels("v1")] == 1
    assert seen["safeship_connect_failures_total", labels("v1")] == 1
    assert seen["safeship_requests_total", labels("v2")] == 1
    assert seen["safeship_request_duration_seconds_count", labels("v1")] == 3
    assert abs(seen["safeship_request_duration_seconds_sum", labels("v1")] - 0.006) < 1e-9


def test_duration_buckets_are_cumulative_with_le_semantics() -> None:
    bound = DURATION_BUCKETS_MS[3]
    counters = counters_of((bound, 200), (bound * 1.01, 200), (10_000_000.0, 200))

    seen = samples(render(lambda: {SHOP: {"v1": counters}}))

    def bucket(le: str) -> float:
        return seen["safeship_request_duration_seconds_bucket", labels("v1", le=le)]

    les = [f"{b / 1000:.6g}" for b in DURATION_BUCKETS_MS]
    assert bucket(les[2]) == 0
    assert bucket(les[3]) == 1  # a latency equal to the bound is inside it
    assert bucket(les[4]) == 2
    assert bucket(les[-1]) == 2  # 10 000 s is beyond the last bound
    assert bucket("+Inf") == 3
    counts = [bucket(le) for le in les]
    assert counts == sorted(counts)


def test_buckets_are_a_subsample_of_the_shared_bounds() -> None:
    assert 15 <= len(DURATION_BUCKETS_MS) <= 25
    assert set(DURATION_BUCKETS_MS) <= set(histogram.BOUNDS_MS)


def test_unrouted_requests_are_rendered_when_given() -> None:
    seen = samples(render(lambda: {}, lambda: {SHOP: 7}))

    key = ("safeship_unrouted_requests_total", (("environment", "prod"), ("service", "shop")))
    assert seen[key] == 7


def test_collector_registers_in_a_shared_registry() -> None:
    registry = CollectorRegistry()
    registry.register(TrafficCollector(lambda: {SHOP: {"v1": counters_of((1.0, 200))}}))

    assert registry.get_sample_value("safeship_requests_total", dict(labels("v1"))) == 1
