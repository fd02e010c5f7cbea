"""The Prometheus traffic source against a real Prometheus: per-version counts for the Istio,
generic and ingress-nginx query sets, latency histograms re-bucketed, template overrides, failed queries as
TemporaryError, the record before a deployment, and counter resets.

Every number asserted is one the test exporter served and Prometheus scraped (`caught_up` waits for
the scrape by the exporter's generation gauge, never for a fixed time)."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promkit import (
    GENERIC_BUCKETS_S,
    ISTIO_BUCKETS_MS,
    Exporter,
    PromStack,
    free_port,
    needs_prometheus,
    prom_stack_fixture,  # noqa: F401  (the prom_stack fixture)
    serve_generic,
    serve_istio,
)

from safeship import histogram
from safeship.analysis.base import StepContext, TickSample, Verdict
from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.analysis.providers.prometheus import PrometheusTraffic, rebucket
from safeship.clock import RealClock
from safeship.config.models import Environment, PrometheusSourceConfig, SafeshipConfig
from safeship.errors import InputError, TemporaryError
from safeship.routing.metrics import DURATION_BUCKETS_MS, TrafficCollector
from safeship.traffic import RouteKey, TrafficCounters, TrafficSetup, traffic_source_class

ENV, NAMESPACE = "production", "shop"
DURATION_INDEXES = [histogram.bucket_of(bound) for bound in DURATION_BUCKETS_MS]  # the router's exposed bounds


def source(url: str, **settings: Any) -> PrometheusTraffic:
    return PrometheusTraffic([Environment(name=ENV, namespace=NAMESPACE,
                                          prometheus=PrometheusSourceConfig(url=url, **settings))])


def last_sample_time(stack: PromStack, selector: str) -> float:
    """The time of Prometheus's latest sample of a series: a window ending there is not extrapolated."""
    result = stack.query(f"max(timestamp({selector}))")
    assert result, f"no samples of {selector}"
    return float(result[0]["value"][1])


def at_zero(exporter: Exporter, labels: dict[str, str]) -> None:
    """The generic series of one version, at zero: a later window's increase starts from a sample."""
    for code in ("200", "500"):
        exporter.add("http_requests_total", {**labels, "code": code}, 0)
    exporter.observe("http_request_duration_seconds", labels, 0.0, 0, GENERIC_BUCKETS_S)


# ---------------------------------------------------------------- building the source


def test_registered_and_built_from_the_environments_prometheus_block(tmp_path: Path) -> None:
    env = Environment(name=ENV, traffic_source="prometheus",
                      prometheus=PrometheusSourceConfig(url="http://127.0.0.1:9090/", queries="istio"))
    built = traffic_source_class("prometheus").create(
        TrafficSetup(router=None, clock=RealClock(), state_dir=tmp_path, environment=env))
    assert isinstance(built, PrometheusTraffic)
    assert built.queries[ENV].url == "http://127.0.0.1:9090"
    assert built.queries[ENV].namespace == ENV  # no namespace: the environment's name
    assert built.queries[ENV].selector("requests", "cart") == (
        'istio_requests_total{reporter="destination",destination_canonical_service="cart",'
        'destination_workload_namespace="production"}')
    with pytest.raises(InputError, match="prometheus: block"):
        traffic_source_class("prometheus").create(
            TrafficSetup(router=None, clock=RealClock(), state_dir=tmp_path, environment=Environment(name="bare")))


def test_a_source_built_from_the_config_serves_each_prometheus_environment(tmp_path: Path) -> None:
    config = SafeshipConfig.model_validate({"environment_management": {"environments": [
        {"name": "production", "namespace": "shop", "traffic_source": "prometheus",
         "prometheus": {"url": "http://prom-a:9090", "queries": "istio"}},
        {"name": "staging", "traffic_source": "prometheus", "prometheus": {"url": "http://prom-b:9090"}},
        {"name": "development"},
    ]}})
    cls = traffic_source_class("prometheus")
    assert cls.per_environment  # the controller builds one per environment
    for environment in (config.environment("staging"), None):
        built = cls.create(TrafficSetup(router=None, clock=RealClock(), state_dir=tmp_path, config=config,
                                        environment=environment))
        assert {name: (q.url, q.namespace, q.flavour) for name, q in built.queries.items()} == {
            "production": ("http://prom-a:9090", "shop", "istio"),
            "staging": ("http://prom-b:9090", "staging", "generic"),
        }


@pytest.mark.parametrize(("templates", "named"), [
    ({"request": "x"}, "unknown template 'request'"),
    ({"requests": 'http_requests_total{svc="$svc"}'}, r"unknown placeholder \$svc"),
    ({"errors": 'http_requests_total{path=~"/a$"}'}, r"templates\.errors: .*write \$\$"),
    ({"latency_unit": "minutes"}, "latency_unit: 'minutes'"),
    ({"version": "not a label"}, "templates.version: 'not a label'"),
    ({"latency_sum": " "}, "templates.latency_sum: empty"),  # (connect_failures may be empty: not measured)
])
def test_bad_templates_are_input_errors_naming_them(templates: dict[str, str], named: str) -> None:
    with pytest.raises(InputError, match=named):
        source("http://127.0.0.1:9", templates=templates)


def test_bad_url_and_version_label_are_input_errors() -> None:
    with pytest.raises(InputError, match=r"url: 'localhost:9090' is not an http"):
        source("localhost:9090")
    with pytest.raises(InputError, match="version_label: 'app-version'"):
        source("http://127.0.0.1:9", version_label="app-version")


# ---------------------------------------------------------------- re-bucketing (pure)


def test_rebucket_spreads_log_uniformly_and_keeps_the_total() -> None:
    bounds = histogram.BOUNDS_MS
    # Bounds that are safeship's own: every count lands exactly below its bound.
    cumulative = {bounds[10]: 7.0, bounds[20]: 107.0, bounds[30]: 1107.0, math.inf: 1110.0}
    buckets = rebucket(cumulative, unit_ms=1.0)
    assert sum(buckets) == 1110
    assert buckets[10] == 7 and sum(buckets[:10]) == 0  # (0, b10]: whole at its bound, none below
    assert sum(buckets[11:21]) == 100 and sum(buckets[21:31]) == 1000
    assert buckets[31] == 3  # +Inf: just above the last finite bound
    # log-uniform inside a bucket: ten equal log-widths get equal shares
    assert set(buckets[21:31]) == {100}
    assert set(buckets[11:21]) == {10}


def test_rebucket_rounds_to_whole_requests_and_never_goes_negative() -> None:
    # increase() answers fractions, and buckets of separate series may disagree by a scrape
    buckets = rebucket({0.01: 3.4, 0.05: 3.0, 0.1: 9.9, math.inf: 10.2}, unit_ms=1000.0)
    assert min(buckets) >= 0
    assert sum(buckets) == 10  # the +Inf total, rounded
    assert rebucket({}, 1000.0) == histogram.empty()


# ---------------------------------------------------------------- counts from real PromQL


@needs_prometheus
async def test_istio_counters_per_version(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    serve_istio(exporter, service="reviews", namespace=NAMESPACE, version="v1", requests=900, errors=9, latency_ms=20)
    serve_istio(exporter, service="reviews", namespace=NAMESPACE, version="v2", requests=100, errors=40,
                latency_ms=300)
    # Not counted: the same requests as the calling sidecar reports them, another service, another namespace.
    exporter.add("istio_requests_total", {"reporter": "source", "destination_canonical_service": "reviews",
                                    "destination_workload_namespace": NAMESPACE, "destination_version": "v1",
                                    "response_code": "200"}, 900)
    serve_istio(exporter, service="ratings", namespace=NAMESPACE, version="v1", requests=55)
    serve_istio(exporter, service="reviews", namespace="other", version="v1", requests=66)
    prom_stack.caught_up()

    counters = await source(prom_stack.url, queries="istio").counters(RouteKey("reviews", ENV))

    assert set(counters) == {"v1", "v2"}
    v1, v2 = counters["v1"], counters["v2"]
    assert (v1.requests, v1.errors, v2.requests, v2.errors) == (900, 9, 100, 40)
    assert sum(v1.latency_buckets) == 900 and sum(v2.latency_buckets) == 100
    assert v1.latency_sum_ms == pytest.approx(900 * 20) and v2.latency_sum_ms == pytest.approx(100 * 300)
    assert v1.mean_ms == pytest.approx(20) and v2.error_rate == pytest.approx(0.4)
    # 20 ms is in Istio's (10, 25] bucket and 300 ms in (250, 500]: the re-bucketed p50 stays inside them
    assert 10 < v1.quantile_ms(0.5) <= 25 * 1.15 and 250 < v2.quantile_ms(0.5) <= 500 * 1.15


@needs_prometheus
async def test_generic_counters_per_version(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    serve_generic(exporter, service="checkout", namespace=NAMESPACE, version="1.4.0", requests=400, errors=2,
                  latency_s=0.04)
    serve_generic(exporter, service="checkout", namespace=NAMESPACE, version="1.5.0-rc.1", requests=50, errors=25,
                  latency_s=0.04)
    serve_generic(exporter, service="checkout-db", namespace=NAMESPACE, version="1.4.0", requests=77)
    prom_stack.caught_up()

    counters = await source(prom_stack.url, timeout=1.5).counters(RouteKey("checkout", ENV))  # a fractional timeout

    assert {v: (c.requests, c.errors) for v, c in counters.items()} == {"1.4.0": (400, 2), "1.5.0-rc.1": (50, 25)}
    assert counters["1.4.0"].latency_sum_ms == pytest.approx(400 * 40)  # seconds to milliseconds
    assert sum(counters["1.5.0-rc.1"].latency_buckets) == 50
    assert counters["1.4.0"].connect_failures == 0


@needs_prometheus
async def test_ingress_nginx_counters_per_version(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    # The controller's series, with the version label a scrape rule added from the canary backend.
    for version, canary, requests, errors in (("v3", "", 200, 1), ("v4", "shop-storefront-canary-80", 20, 5)):
        labels = {"namespace": NAMESPACE, "ingress": "storefront", "service": "storefront", "canary": canary,
                  "version": version}
        exporter.add("nginx_ingress_controller_requests", {**labels, "status": "200"}, requests - errors)
        exporter.add("nginx_ingress_controller_requests", {**labels, "status": "504"}, errors)
        exporter.observe("nginx_ingress_controller_request_duration_seconds", labels, 0.2, requests,
                         GENERIC_BUCKETS_S)
    prom_stack.caught_up()

    counters = await source(prom_stack.url, queries="ingress-nginx").counters(RouteKey("storefront", ENV))

    assert {v: (c.requests, c.errors) for v, c in counters.items()} == {"v3": (200, 1), "v4": (20, 5)}
    assert counters["v4"].latency_sum_ms == pytest.approx(20 * 200)
    assert 100 < counters["v3"].quantile_ms(0.5) <= 250 * 1.15  # 0.2 s is in the (0.1, 0.25] bucket


@needs_prometheus
async def test_histogram_rebucketed_against_known_observations(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    bounds = histogram.BOUNDS_MS
    edges = (bounds[20], bounds[40], bounds[60])  # Prometheus buckets on safeship bounds (ms)
    labels = {"reporter": "destination", "destination_canonical_service": "search",
              "destination_workload_namespace": NAMESPACE, "destination_version": "v7"}
    observations = {3.0: 200, 40.0: 300, 900.0: 100, 60_000.0: 10}  # ms -> how many
    for latency, times in observations.items():
        exporter.observe("istio_request_duration_milliseconds", labels, latency, times, edges)
    exporter.add("istio_requests_total", {**labels, "response_code": "200"}, 610)
    prom_stack.caught_up()

    got = (await source(prom_stack.url, queries="istio").counters(RouteKey("search", ENV)))["v7"].latency_buckets

    assert sum(got) == 610
    # at or below each Prometheus bound: exactly what was observed at or below it
    assert sum(got[: 20 + 1]) == 200  # 3 ms <= bounds[20] (~3.3 ms)
    assert sum(got[: 40 + 1]) == 500  # 40 ms <= bounds[40] (~134 ms)
    assert sum(got[: 60 + 1]) == 600  # 900 ms <= bounds[60] (~2.2 s)
    assert got[61] == 10  # above the last finite bound: placed just above it
    assert sum(got[:20]) == 0  # the first bucket's mass sits at its bound, not below


@needs_prometheus
async def test_template_override_reads_other_series(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    for track, requests, errors in (("stable", 300, 3), ("canary", 30, 12)):
        labels = {"app": "payments", "env": ENV, "track": track}
        exporter.add("app_requests_total", {**labels, "status": "200"}, requests - errors)
        exporter.add("app_requests_total", {**labels, "status": "502"}, errors)
        exporter.observe("app_latency_ms", labels, 12.0, requests, ISTIO_BUCKETS_MS)
    prom_stack.caught_up()
    templates = {
        "version": "track",
        "requests": 'app_requests_total{app="$service",env="$environment"}',
        "errors": 'app_requests_total{app="$service",env="$environment",status=~"5.."}',
        "latency_buckets": 'app_latency_ms_bucket{app="$service"}',
        "latency_sum": 'app_latency_ms_sum{app="$service"}',
        "latency_unit": "milliseconds",
    }

    counters = await source(prom_stack.url, templates=templates).counters(RouteKey("payments", ENV))

    assert {v: (c.requests, c.errors) for v, c in counters.items()} == {"stable": (300, 3), "canary": (30, 12)}
    assert counters["canary"].latency_sum_ms == pytest.approx(30 * 12.0)
    assert sum(counters["stable"].latency_buckets) == 300


@needs_prometheus
async def test_safeships_own_router_metrics_read_back_through_promql(prom_stack: PromStack) -> None:
    """One host (issue 12): the builtin router's /metrics exposition, scraped by Prometheus and read
    back with templates, gives the router's own counters again, latency included."""
    route = RouteKey("api", ENV)
    served = {"v1": TrafficCounters(), "v2": TrafficCounters()}
    for i in range(600):  # known observations: 0.5 ms .. ~9 s, spread over many buckets
        served["v1"].observe(0.5 * 1.013 ** i, status=500 if i % 100 == 0 else 200)
    for i in range(90):
        served["v2"].observe(3.0 + i, status=None if i % 30 == 0 else (503 if i % 3 == 0 else 200))
    prom_stack.exporter.include(TrafficCollector(lambda: {route: served}))
    prom_stack.exporter.touch()
    prom_stack.caught_up()
    where = 'service="$service",environment="$environment"'
    templates = {
        "version": "version",
        "requests": f"safeship_requests_total{{{where}}}",
        "errors": f"safeship_request_errors_total{{{where}}}",
        "connect_failures": f"safeship_connect_failures_total{{{where}}}",
        "latency_buckets": f"safeship_request_duration_seconds_bucket{{{where}}}",
        "latency_sum": f"safeship_request_duration_seconds_sum{{{where}}}",
    }

    got = await source(prom_stack.url, templates=templates).counters(route)

    for version, original in served.items():
        back = got[version]
        assert (back.requests, back.errors, back.connect_failures) == (
            original.requests, original.errors, original.connect_failures)
        assert back.latency_sum_ms == pytest.approx(original.latency_sum_ms, rel=1e-6)
        assert sum(back.latency_buckets) == original.requests
        # at every bound the exposition has (every fourth of safeship's), the same count at or below it
        for index in DURATION_INDEXES:
            assert sum(back.latency_buckets[: index + 1]) == sum(original.latency_buckets[: index + 1]), index


@needs_prometheus
async def test_version_label_setting_fills_the_placeholder(prom_stack: PromStack) -> None:
    serve_generic(prom_stack.exporter, service="inventory", namespace=NAMESPACE, version="b", requests=12,
                  version_label="app_version")
    prom_stack.caught_up()
    counters = await source(prom_stack.url, version_label="app_version").counters(RouteKey("inventory", ENV))
    assert {v: c.requests for v, c in counters.items()} == {"b": 12}


# ---------------------------------------------------------------- failed queries


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@needs_prometheus
async def test_a_bad_query_is_a_temporary_error(prom_stack: PromStack) -> None:
    broken = source(prom_stack.url, templates={"requests": 'http_requests_total{service="$service"'})
    with pytest.raises(TemporaryError, match=r"query requests\) answered HTTP 400: .*parse error"):
        await broken.counters(RouteKey("checkout", ENV))
    with pytest.raises(TemporaryError, match="HTTP 400"):
        await broken.before(RouteKey("checkout", ENV), at=RealClock().now(), span=60)


async def test_unreachable_and_silent_prometheus_are_temporary_errors(silent_port: int) -> None:
    with pytest.raises(TemporaryError, match="cannot be reached") as refused:
        await source(f"http://bob:s3cret@127.0.0.1:{free_port()}").counters(RouteKey("checkout", ENV))
    assert refused.value.delay > 0
    assert "s3cret" not in str(refused.value) and "http://***@127.0.0.1" in str(refused.value)
    with pytest.raises(TemporaryError, match=r"did not answer within 0\.5s"):
        await source(f"http://127.0.0.1:{silent_port}", timeout=0.5).counters(RouteKey("checkout", ENV))


@needs_prometheus
async def test_requests_without_the_version_label_are_a_temporary_error(prom_stack: PromStack) -> None:
    serve_generic(prom_stack.exporter, service="ledger", namespace=NAMESPACE, version="v1", requests=10)
    prom_stack.caught_up()
    with pytest.raises(TemporaryError, match="requests of ledger carry no 'track' label"):
        await source(prom_stack.url, version_label="track").counters(RouteKey("ledger", ENV))
    assert (await source(prom_stack.url).counters(RouteKey("ledger", ENV)))["v1"].requests == 10


@needs_prometheus
async def test_an_answer_that_is_not_the_api_is_a_temporary_error(prom_stack: PromStack) -> None:
    # Prometheus's own web UI answers 404 outside the API: a wrong url prefix
    with pytest.raises(TemporaryError, match="HTTP 404"):
        await source(f"{prom_stack.url}/not-prometheus").counters(RouteKey("checkout", ENV))


async def test_an_environment_it_was_not_built_for_is_a_temporary_error() -> None:
    with pytest.raises(TemporaryError, match="no prometheus: block for environment staging"):
        await source("http://127.0.0.1:9").counters(RouteKey("checkout", "staging"))


# ---------------------------------------------------------------- the record before a deployment


@needs_prometheus
async def test_before_returns_the_stable_versions_window(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    route = RouteKey("catalog", ENV)
    selector = f'http_requests_total{{service="catalog",namespace="{NAMESPACE}"}}'
    # The series exist at zero first, so the window's increase is not extrapolated below its first sample.
    at_zero(exporter, {"service": "catalog", "namespace": NAMESPACE, "version": "v1"})
    prom_stack.caught_up()
    started = last_sample_time(prom_stack, selector)
    serve_generic(exporter, service="catalog", namespace=NAMESPACE, version="v1", requests=300, errors=6,
                  latency_s=0.03)
    prom_stack.caught_up()
    at = last_sample_time(prom_stack, selector)  # a window ending at a sample is not extrapolated past it
    span = at - started + 30  # reaches back before the series existed

    window = await source(prom_stack.url).before(route, at=at, span=span)

    assert window is not None
    assert set(window.counters) == {"v1"}
    v1 = window.counters["v1"]
    assert (v1.requests, v1.errors) == (300, 6)
    assert sum(v1.latency_buckets) == 300 and v1.latency_sum_ms == pytest.approx(300 * 30)
    assert window.end == at
    # real bounds: from the first sample inside the window, not from before the series existed
    assert at - span < window.start <= started + 1e-6

    assert await source(prom_stack.url).before(route, at=at - 86_400, span=600) is None  # before any data
    assert await source(prom_stack.url).before(RouteKey("never-served", ENV), at=at, span=span) is None


# ---------------------------------------------------------------- counter resets


@needs_prometheus
async def test_a_counter_reset_gives_no_negative_counts(prom_stack: PromStack) -> None:
    exporter = prom_stack.exporter
    route = RouteKey("billing", ENV)
    selector = f'http_requests_total{{service="billing",namespace="{NAMESPACE}"}}'
    labels = {"service": "billing", "namespace": NAMESPACE, "version": "v1"}
    at_zero(exporter, labels)
    prom_stack.caught_up()
    started = last_sample_time(prom_stack, selector)
    serve_generic(exporter, service="billing", namespace=NAMESPACE, version="v1", requests=500)
    prom_stack.caught_up()
    prom = source(prom_stack.url)
    before_reset = await prom.counters(route)

    exporter.restart(labels)  # the process restarted: its counters start again at zero
    serve_generic(exporter, service="billing", namespace=NAMESPACE, version="v1", requests=20, errors=1)
    prom_stack.caught_up()
    after_reset = await prom.counters(route)

    # Cumulative counts are the raw counters: never negative, and lower than before the restart.
    assert (before_reset["v1"].requests, after_reset["v1"].requests, after_reset["v1"].errors) == (500, 20, 1)
    assert min(after_reset["v1"].latency_buckets) >= 0
    window = after_reset["v1"].minus(before_reset["v1"])
    assert window.requests < 0  # the protocol's sign that the window measured nothing
    # ... which the judge takes as a failed measurement, not as a negative rate
    sample = TickSample(t=2, dt=1, baseline=TrafficCounters(), candidate=window, candidate_weight=10)
    policy = SafeshipPolicy()
    _, decision = policy.observe(policy.start(), sample, StepContext(step_index=0, time_in_step=1,
                                                                     time_in_analysis=1, compare=False))
    assert decision.verdict is Verdict.ERROR

    # A window across the restart, read with increase(), counts both sides of it.
    at = last_sample_time(prom_stack, selector)
    record = await prom.before(route, at=at, span=at - started + 5)
    assert record is not None
    assert (record.counters["v1"].requests, record.counters["v1"].errors) == (520, 1)
    assert min(record.counters["v1"].latency_buckets) >= 0
