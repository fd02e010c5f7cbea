"""The Prometheus traffic source (`traffic_source: prometheus`): what each version served, read
through PromQL from the HTTP API (`/api/v1/query`).

Query sets. `prometheus.queries` picks one of `QUERY_SETS`; `prometheus.templates` replaces single
entries of it by name. The names:

    version          the label whose value is the version (a label name, not a query)
    requests         a series selector for the request counter
    errors           the same counter, selecting the 5xx responses
    connect_failures optional (empty in every set but `safeship`): a counter of requests that got
                     no response at all, e.g. `safeship_connect_failures_total` from safeship's own router
    latency_buckets  a selector for the latency histogram's `_bucket` series (with their `le`)
    latency_sum      a selector for that histogram's `_sum` series
    latency_unit     `seconds` or `milliseconds`: the unit of `le` and of `_sum`

Each query template is a plain series selector (a metric name and label matchers). safeship
wraps it: `sum by (<version>) (<selector>)` for cumulative counts, and
`sum by (<version>) (increase(<selector>[<span>]))` for a window. Placeholders, written `$name`
(or `${name}`; `$$` is a literal `$`, e.g. for a regex anchor):

    $service        the route's service
    $namespace      the environment's Kubernetes namespace (`namespace`, else its name)
    $environment    the environment's name
    $version_label  `prometheus.version_label` (default `version`)

An unknown template name or placeholder is an InputError naming it, when the source is built.

The sets:

- `generic`: `http_requests_total{service, namespace, code}` and
  `http_request_duration_seconds` with the version in `$version_label`: what a service's own
  `/metrics` exposes under the common client-library names, with `service` and `namespace` added by
  the scrape (a Kubernetes service monitor does; on one host, label the scrape target).
- `kubernetes`: the same series as `generic`, selected by the pods' own labels as Prometheus'
  Kubernetes discovery gives them (a PodMonitor, or a `role: pod` scrape with `labelmap` of
  `__meta_kubernetes_pod_label_(.+)`): `app_kubernetes_io_name="$service"` and `namespace`, the
  version in `app_kubernetes_io_version`. Not the Service name: with the gateway-api router the
  candidate's pods are behind `<service>-canary`, and a pod behind two Services scraped through
  both (a ServiceMonitor) would be counted twice.
- `istio`: `istio_requests_total` and `istio_request_duration_milliseconds` as the sidecars report
  them (`reporter="destination"`, so a request is counted once), selected by
  `destination_canonical_service` (the pods' `app.kubernetes.io/name`, whichever Service,
  `<service>` or `<service>-canary`, the request was sent to) and `destination_workload_namespace`,
  5xx by `response_code`, the version in `destination_version` (the pods'
  `app.kubernetes.io/version`).
- `ingress-nginx`: the controller's `nginx_ingress_controller_requests` and
  `nginx_ingress_controller_request_duration_seconds`, selected by the Ingress (`ingress`, named
  after the service) and its `namespace`, 5xx by `status`. That exporter labels a request with
  the Service that served it (`service`, and `canary` for a canary Ingress's backend) but knows
  no version: the version is read from `$version_label`, which the scrape adds (a
  `metric_relabel_configs` rule from the canary label, say), or override `version` with the
  label that carries it where each version has a Service of its own named after it.

- `safeship`: the controller's own `/metrics` (`safeship.routing.metrics`): the router's
  `safeship_requests_total`, `safeship_request_errors_total` (5xx), `safeship_connect_failures_total`
  and `safeship_request_duration_seconds`, selected by `service` and `environment` (the
  environment's name, not its namespace), the version in `version`. `environment-manager
  --prepare` writes the scrape job for it (`safeship.environments.scrape`).

Versions. A version that is not a valid Kubernetes label value (`1.2.3+build.4`, more than 63
characters) is labelled `<cleaned>-<8 hex digits of its hash>` on its pods
(`safeship.kube.objects.version_label`), and Prometheus reads that value. Each value is named back
to its exact version: a value without such a hash is the version itself; a hashed one is looked up
among the service's `versions` (the config refuses two that would share a label), then among the
Deployments the environment's cluster runs (their `safeship.io/version` annotation), read when a
hashed value is first seen. A value found nowhere is counted as it is, with a warning.

Counts. `counters(route)` sums the raw counters per version: cumulative values, never `rate` or
`increase`, so two reads differenced are exactly what Prometheus scraped in between. When a
process restarts, its counter starts again at zero and the sum decreases; the protocol treats
such a window as one that measured nothing, and no negative count is ever invented here.
`before(route, at, span)` is `increase(...[span])` evaluated at `at` (the `time=` parameter):
Prometheus handles counter resets inside the window and extrapolates to its bounds, so those
counts are rounded. The window's start is the later of `at - span` and the first sample of the
request counter inside it (found to the subquery's resolution); None when Prometheus has no
requests there.

Latency. Prometheus histograms are cumulative `le` buckets with bounds of the exporter's choosing;
safeship's (`safeship.histogram`) are log-spaced. Each Prometheus bucket's count `(lower, upper]`
is spread over the safeship buckets it overlaps in proportion to the overlap on a log scale (the
mass is taken as log-uniform inside the bucket, the same assumption `histogram.quantile`
interpolates with). Two buckets have no finite log-width: the first, `(0, upper]`, is put whole
into the safeship bucket that holds `upper` (no faster than its bound: conservative, and equal for
both versions), and `+Inf`, `(last, inf)`, whole into the safeship bucket just above `last`
(at least that slow). Each Prometheus bucket's shares are rounded to whole requests by largest
remainder within it, so the count at or below every Prometheus bound, and the total, stay
Prometheus's (rounded, for increase()'s fractions).

Failures. A query that fails (connection refused, timeout, a status other than 200,
`"status": "error"`, an answer that is not an instant vector) is a `TemporaryError`, which the
analysis counts against `analysis.error_limit`; nothing else escapes `counters` or `before`.
So are requests of which none carries the version label: a label that is not there would
otherwise measure nothing, look after look, and let every step run out its time unharmed.

Clock. `before`'s `at` is the engine clock's time, which Prometheus reads as Unix time: true for
the real clock. On a virtual clock (simulations) this source has nothing to read.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from string import Template
from typing import Any, ClassVar

import httpx

from safeship import histogram
from safeship.config.kubernetes import is_hashed, version_label
from safeship.config.models import Environment, PrometheusSourceConfig, SafeshipConfig
from safeship.errors import InputError, TemporaryError
from safeship.traffic import RouteKey, TrafficCounters, TrafficSetup, TrafficWindow

QUERY_NAMES = ("version", "requests", "errors", "connect_failures", "latency_buckets", "latency_sum", "latency_unit")
OPTIONAL = frozenset({"connect_failures"})  # an empty template: not measured
PLACEHOLDERS = ("service", "namespace", "environment", "version_label")
UNITS_MS: Mapping[str, float] = {"seconds": 1000.0, "milliseconds": 1.0}

_GENERIC = 'service="$service",namespace="$namespace"'
_ISTIO = 'reporter="destination",destination_canonical_service="$service",destination_workload_namespace="$namespace"'
_NGINX = 'namespace="$namespace",ingress="$service"'
_SAFESHIP = 'service="$service",environment="$environment"'
# The pod's own labels, as Prometheus' Kubernetes discovery gives them (`labelmap` of
# `__meta_kubernetes_pod_label_(.+)` turns `app.kubernetes.io/name` into `app_kubernetes_io_name`):
# every version's pods, whichever Service (`<service>`, `<service>-canary`) sends them traffic.
_KUBERNETES = 'app_kubernetes_io_name="$service",namespace="$namespace"'

QUERY_SETS: Mapping[str, Mapping[str, str]] = {
    "generic": {
        "version": "$version_label",
        "requests": f"http_requests_total{{{_GENERIC}}}",
        "errors": f'http_requests_total{{{_GENERIC},code=~"5.."}}',
        "latency_buckets": f"http_request_duration_seconds_bucket{{{_GENERIC}}}",
        "latency_sum": f"http_request_duration_seconds_sum{{{_GENERIC}}}",
        "latency_unit": "seconds",
        "connect_failures": "",
    },
    "kubernetes": {
        "version": "app_kubernetes_io_version",
        "requests": f"http_requests_total{{{_KUBERNETES}}}",
        "errors": f'http_requests_total{{{_KUBERNETES},code=~"5.."}}',
        "latency_buckets": f"http_request_duration_seconds_bucket{{{_KUBERNETES}}}",
        "latency_sum": f"http_request_duration_seconds_sum{{{_KUBERNETES}}}",
        "latency_unit": "seconds",
        "connect_failures": "",
    },
    "istio": {
        "version": "destination_version",
        "requests": f"istio_requests_total{{{_ISTIO}}}",
        "errors": f'istio_requests_total{{{_ISTIO},response_code=~"5.."}}',
        "latency_buckets": f"istio_request_duration_milliseconds_bucket{{{_ISTIO}}}",
        "latency_sum": f"istio_request_duration_milliseconds_sum{{{_ISTIO}}}",
        "latency_unit": "milliseconds",
        "connect_failures": "",
    },
    "ingress-nginx": {
        "version": "$version_label",
        "requests": f"nginx_ingress_controller_requests{{{_NGINX}}}",
        "errors": f'nginx_ingress_controller_requests{{{_NGINX},status=~"5.."}}',
        "latency_buckets": f"nginx_ingress_controller_request_duration_seconds_bucket{{{_NGINX}}}",
        "latency_sum": f"nginx_ingress_controller_request_duration_seconds_sum{{{_NGINX}}}",
        "latency_unit": "seconds",
        "connect_failures": "",
    },
    "safeship": {
        "version": "version",  # the controller's series always carry it (safeship.routing.metrics)
        "requests": f"safeship_requests_total{{{_SAFESHIP}}}",
        "errors": f"safeship_request_errors_total{{{_SAFESHIP}}}",
        "latency_buckets": f"safeship_request_duration_seconds_bucket{{{_SAFESHIP}}}",
        "latency_sum": f"safeship_request_duration_seconds_sum{{{_SAFESHIP}}}",
        "latency_unit": "seconds",
        "connect_failures": f"safeship_connect_failures_total{{{_SAFESHIP}}}",
    },
}

log = logging.getLogger(__name__)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_USERINFO = re.compile(r"^(https?://)[^/@]*@")
_DELAY_S = 1.0  # how soon a failed query may be tried again
_BOUND_STEPS = 500  # subquery steps used to find the first sample of a window


# ------------------------------------------------------------------ templates


@dataclass(frozen=True)
class QuerySet:
    """One environment's queries, checked: templates by name, with `$service` still open."""

    environment: str
    namespace: str
    url: str
    timeout: float
    flavour: str
    templates: Mapping[str, Template]
    version_label: str  # the label that holds the version
    unit_ms: float  # milliseconds per unit of `le` and `_sum`
    label_setting: str = "version"  # `prometheus.version_label`: what `$version_label` stands for

    @classmethod
    def build(cls, environment: Environment) -> QuerySet:
        """The environment's `prometheus:` block, checked; InputError naming what is wrong."""
        settings = environment.prometheus
        where = f"environments.{environment.name}.prometheus"
        if settings is None:
            raise InputError(f"{where}: traffic source prometheus needs a prometheus: block with its url")
        return cls.from_settings(settings, environment=environment.name, namespace=environment.kube_namespace,
                                 where=where)

    @classmethod
    def from_settings(cls, settings: PrometheusSourceConfig, *, environment: str, namespace: str,
                      where: str = "prometheus") -> QuerySet:
        url = settings.url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"{where}.url: {settings.url!r} is not an http:// or https:// address")
        if not _LABEL_NAME.fullmatch(settings.version_label):
            raise InputError(f"{where}.version_label: {settings.version_label!r} is not a Prometheus label name "
                             "(letters, digits and '_', not starting with a digit)")
        texts = dict(QUERY_SETS[settings.queries])
        for name, text in settings.templates.items():
            if name not in QUERY_NAMES:
                raise InputError(f"{where}.templates: unknown template {name!r} (known: {', '.join(QUERY_NAMES)})")
            texts[name] = text
        templates: dict[str, Template] = {}
        for name, text in texts.items():
            if not text.strip() and name in OPTIONAL:
                templates[name] = Template("")
                continue
            if not text.strip():
                raise InputError(f"{where}.templates.{name}: empty; remove it to use the {settings.queries} query")
            template = Template(text)
            if not template.is_valid():
                raise InputError(f"{where}.templates.{name}: {text!r} has a '$' that starts no placeholder "
                                 "(write $$ for a literal '$')")
            for placeholder in template.get_identifiers():
                if placeholder not in PLACEHOLDERS:
                    raise InputError(f"{where}.templates.{name}: unknown placeholder ${placeholder} "
                                     f"(known: {', '.join('$' + p for p in PLACEHOLDERS)})")
            templates[name] = template
        fixed = {"version_label": settings.version_label, "environment": environment, "namespace": namespace,
                 "service": "service"}
        version_label = templates["version"].substitute(fixed).strip()
        if not _LABEL_NAME.fullmatch(version_label):
            raise InputError(f"{where}.templates.version: {version_label!r} is not a Prometheus label name")
        unit = templates["latency_unit"].substitute(fixed).strip()
        if unit not in UNITS_MS:
            raise InputError(f"{where}.templates.latency_unit: {unit!r} is not one of {', '.join(UNITS_MS)}")
        return cls(environment=environment, namespace=namespace, url=url, timeout=float(settings.timeout),
                   flavour=settings.queries, templates=templates, version_label=version_label,
                   unit_ms=UNITS_MS[unit], label_setting=settings.version_label)

    @property
    def shown(self) -> str:
        """The url as messages show it: credentials in it (`http://user:password@host`) masked."""
        return _USERINFO.sub(r"\1***@", self.url)

    def measures(self, name: str) -> bool:
        """False for an optional query left empty."""
        return bool(self.templates[name].template.strip())

    def selector(self, name: str, service: str) -> str:
        """The named selector for one service, placeholders filled in."""
        return self.templates[name].substitute(
            service=service, namespace=self.namespace, environment=self.environment,
            version_label=self.label_setting,
        ).strip()


def _range(span: float) -> str:
    """A PromQL duration for `span` seconds (whole milliseconds, the finest PromQL takes)."""
    return f"{max(1, round(span * 1000))}ms"


# ------------------------------------------------------------------ histograms


def rebucket(cumulative: Mapping[float, float], unit_ms: float = 1000.0) -> list[int]:
    """safeship's latency buckets from one Prometheus histogram's cumulative `le` counts.

    `cumulative` maps each `le` bound (in the exporter's unit; `math.inf` for `+Inf`) to the count
    at or below it; `unit_ms` converts that unit to milliseconds. See the module's docstring for
    how the mass inside one Prometheus bucket is spread. The cumulative counts are rounded first
    (increase() answers fractions), so the count at or below every Prometheus bound is kept whole."""
    result = [0] * histogram.N_BUCKETS
    rounded_below, running, lower = 0, 0.0, 0.0
    for le in sorted(cumulative):
        running = max(running, float(cumulative[le]))  # a cumulative count never goes down
        at_or_below = round(running)
        count, rounded_below = at_or_below - rounded_below, at_or_below
        upper = le * unit_ms
        if count > 0:
            for index, share in _whole(_spread_one(lower, upper, count)).items():
                result[index] += share
        lower = upper
    return result


def _spread_one(lower: float, upper: float, count: int) -> dict[int, float]:
    """{safeship bucket: share of `count`} for the Prometheus bucket (lower, upper], in ms."""
    bounds = histogram.BOUNDS_MS
    if math.isinf(upper):
        return {min(bisect.bisect_right(bounds, lower), histogram.N_BUCKETS - 1): float(count)}  # just above
    if lower <= 0.0 or upper <= lower:
        return {histogram.bucket_of(upper): float(count)}  # (0, upper]: at most `upper`
    log_lower, log_upper = math.log(lower), math.log(upper)
    width = log_upper - log_lower
    shares: dict[int, float] = {}
    for index in range(histogram.bucket_of(lower), histogram.bucket_of(upper) + 1):
        edge_low = math.log(bounds[index - 1]) if index > 0 else -math.inf
        edge_high = math.log(bounds[index]) if index < len(bounds) else math.inf
        overlap = min(edge_high, log_upper) - max(edge_low, log_lower)
        if overlap > 0:
            shares[index] = count * overlap / width
    return shares or {histogram.bucket_of(upper): float(count)}


def _whole(shares: Mapping[int, float]) -> dict[int, int]:
    """Whole counts whose total is the rounded total of `shares` (largest remainder)."""
    floors = {index: math.floor(x) for index, x in shares.items()}
    missing = round(sum(shares.values())) - sum(floors.values())
    order = sorted(shares, key=lambda i: (shares[i] - floors[i], -i), reverse=True)
    for index in order[: max(0, missing)]:
        floors[index] += 1
    return floors


# ------------------------------------------------------------------ the source


class PrometheusTraffic:
    """A `TrafficSource` reading PromQL; see the module's docstring for the queries, the counts
    and the failures. Built per environment from its `prometheus:` block; a source built from a
    whole config (`TrafficSetup.config`) serves every environment that has one."""

    name: ClassVar[str] = "prometheus"
    per_environment: ClassVar[bool] = True  # each environment names its own Prometheus and namespace

    def __init__(self, environments: Iterable[Environment], config: SafeshipConfig | None = None) -> None:
        self.queries: dict[str, QuerySet] = {}
        self.environments: dict[str, Environment] = {}
        for environment in environments:
            if environment.name not in self.queries:
                self.queries[environment.name] = QuerySet.build(environment)
                self.environments[environment.name] = environment
        # label value -> exact version, per route: from the service's known versions, then from the
        # cluster's Deployments (their safeship.io/version annotation) for a label not yet known
        self._names: dict[RouteKey, dict[str, str]] = {}
        self._known: dict[str, list[str]] = (
            {name: list(service.versions) for name, service in config.services.items()} if config is not None else {})
        if not self.queries:
            raise InputError("traffic source prometheus: no environment to read for (it needs one with a "
                             "prometheus: block naming its url)")

    @classmethod
    def create(cls, setup: TrafficSetup) -> PrometheusTraffic:
        """The setup's environment's source; a setup that carries the whole config also serves the
        config's other environments whose `traffic_source` is prometheus (a source shared between them)."""
        environments: list[Environment] = []
        if setup.environment is not None:
            environments.append(setup.environment)
        if setup.config is not None:
            environments += [e for e in setup.config.environment_management.environments
                             if e.traffic_source == cls.name]  # the setup's own is built first
        return cls(environments, setup.config)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        queries = self._for(route)
        version = queries.version_label

        def summed(name: str, by: str = version) -> str:
            return f"sum by ({by}) ({queries.selector(name, route.service)})"

        promql = {
            "requests": summed("requests"),
            "errors": summed("errors"),
            "latency_buckets": summed("latency_buckets", f"{version}, le"),
            "latency_sum": summed("latency_sum"),
        }
        if queries.measures("connect_failures"):
            promql["connect_failures"] = summed("connect_failures")
        results = await self._run(queries, promql, at=None)
        if results["requests"] and not any(labels.get(version) for labels, _ in results["requests"]):
            # Requests, but none of any version: a version label that is not there. Measuring
            # nothing here would let every step run out its time "with no harm shown".
            raise TemporaryError(f"Prometheus at {queries.shown}: the {queries.flavour} requests of {route.service} "
                                 f"carry no {version!r} label to tell versions apart (set "
                                 "prometheus.version_label, or templates.version)", delay=_DELAY_S)
        return _counters(results, version, queries.unit_ms, await self._versions(route, results, version))

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        if not (span > 0 and math.isfinite(span) and math.isfinite(at)):
            return None
        queries = self._for(route)
        version, window = queries.version_label, _range(span)

        def increase(name: str, by: str = version) -> str:
            return f"sum by ({by}) (increase({queries.selector(name, route.service)}[{window}]))"

        step = _range(max(1.0, span / _BOUND_STEPS))
        promql = {
            "requests": increase("requests"),
            "errors": increase("errors"),
            "latency_buckets": increase("latency_buckets", f"{version}, le"),
            "latency_sum": increase("latency_sum"),
            "first_sample": f"min(min_over_time(timestamp({queries.selector('requests', route.service)})"
                            f"[{window}:{step}]))",
        }
        if queries.measures("connect_failures"):
            promql["connect_failures"] = increase("connect_failures")
        results = await self._run(queries, promql, at=at)
        counters = _counters(results, version, queries.unit_ms, await self._versions(route, results, version))
        if not counters:
            return None  # nothing recorded there
        first = [float(value) for _, value in results["first_sample"]]
        start = max([at - span, *(t for t in first if math.isfinite(t))])
        return TrafficWindow(start=min(start, at), end=at, counters=counters)

    async def close(self) -> None:
        return None  # every read opens and closes its own connections

    # ------------------------------------------------------------ label values to versions

    async def _versions(self, route: RouteKey, results: Mapping[str, list[tuple[dict[str, str], float]]],
                        label: str) -> dict[str, str]:
        """{label value: exact version} for every value of `label` in `results`.

        On Kubernetes a version that is not a valid label value (`1.2.3+build.4`, more than 63
        characters) is labelled `<cleaned>-<hash of the version>` (safeship.kube.objects), and
        Prometheus reads that label. A value without such a hash is the version itself; one with
        it is looked up among the service's known versions (`services.<name>.versions`), then
        among the versions the environment's cluster runs (each Deployment's `safeship.io/version`
        annotation). A value found nowhere is kept as it is, and logged."""
        values = {labels.get(label, "") for answer in results.values() for labels, _ in answer}
        names = self._names.setdefault(route, {})
        for version in self._known.get(route.service, ()):
            names.setdefault(version_label(version), version)
        missing = {v for v in values if v and is_hashed(v) and v not in names}
        environment = self.environments.get(route.environment)
        if missing and environment is not None and environment.platform == "kubernetes":
            for version in await self._cluster_versions(environment, route.service):
                names.setdefault(version_label(version), version)
        for value in sorted(v for v in missing if v not in names):
            log.warning("Prometheus: %s label %r of %s matches no version safeship knows; counted as is",
                        label, value, route)
        return {v: names.get(v, v) for v in values if v}

    @staticmethod
    async def _cluster_versions(environment: Environment, service: str) -> list[str]:
        from safeship.kube import objects
        from safeship.kube.client import KubeClient

        try:
            async with KubeClient.for_environment(environment) as kube:
                found = await kube.list("apps/v1", "Deployment", environment.kube_namespace,
                                        labels=objects.selector(service))
        except Exception as exc:
            raise TemporaryError(f"Prometheus source: the versions of {service} could not be read from the "
                                 f"cluster of environment {environment.name} to name its hashed version "
                                 f"labels: {exc}", delay=_DELAY_S) from exc
        return [v for v in (objects.object_version(d) for d in found) if v]

    # ------------------------------------------------------------ HTTP

    def _for(self, route: RouteKey) -> QuerySet:
        queries = self.queries.get(route.environment)
        if queries is None:
            known = ", ".join(sorted(self.queries))
            raise TemporaryError(f"the prometheus traffic source has no prometheus: block for environment "
                                 f"{route.environment} (it reads for {known})", delay=_DELAY_S)
        return queries

    async def _run(self, queries: QuerySet, promql: Mapping[str, str], *,
                   at: float | None) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every query at once; the first failure, as a TemporaryError, if any failed."""
        try:
            async with httpx.AsyncClient(timeout=queries.timeout) as http:
                answers = await asyncio.gather(
                    *(self._query(http, queries, name, text, at) for name, text in promql.items()),
                    return_exceptions=True,
                )
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise TemporaryError(f"Prometheus at {queries.shown}: {exc}", delay=_DELAY_S) from exc
        results: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, answer in zip(promql, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, TemporaryError):
                    raise answer
                if isinstance(answer, Exception):
                    raise TemporaryError(f"Prometheus at {queries.shown}, query {name}: {answer}",
                                         delay=_DELAY_S) from answer
                raise answer  # cancellation and the like are not measurement failures
            results[name] = answer
        return results

    async def _query(self, http: httpx.AsyncClient, queries: QuerySet, name: str, promql: str,
                     at: float | None) -> list[tuple[dict[str, str], float]]:
        # Prometheus reads a bare number as seconds; "0.5s" would be refused as a duration
        params: dict[str, str] = {"query": promql, "timeout": f"{queries.timeout:.3f}"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        where = f"Prometheus at {queries.shown} ({queries.flavour} query {name})"
        try:
            response = await http.get(f"{queries.url}/api/v1/query", params=params)
        except httpx.TimeoutException as exc:
            raise TemporaryError(f"{where} did not answer within {queries.timeout:g}s", delay=_DELAY_S) from exc
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise TemporaryError(f"{where} cannot be reached: {exc}", delay=_DELAY_S) from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code != 200:
            detail = f": {error}" if error else ""
            raise TemporaryError(f"{where} answered HTTP {response.status_code}{detail}", delay=_DELAY_S)
        if not isinstance(body, dict) or body.get("status") != "success":
            raise TemporaryError(f"{where} failed: {error or 'not a Prometheus API answer'}", delay=_DELAY_S)
        return _vector(body.get("data"), where)


def _vector(data: Any, where: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each series of an instant vector answer; NaN and infinite values left out."""
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise TemporaryError(f"{where} answered a {kind or 'malformed'} result, not an instant vector",
                             delay=_DELAY_S)
    series: list[tuple[dict[str, str], float]] = []
    for item in data["result"]:
        try:
            labels = {str(k): str(v) for k, v in dict(item["metric"]).items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise TemporaryError(f"{where} answered a malformed sample: {item!r:.200}", delay=_DELAY_S) from exc
        if math.isfinite(value):
            series.append((labels, value))
    return series


def _counters(results: Mapping[str, list[tuple[dict[str, str], float]]], label: str,
              unit_ms: float, names: Mapping[str, str] | None = None) -> dict[str, TrafficCounters]:
    """Per-version counters from the four answers, the label values named by `names` (label value
    -> version); series without a version are left out."""
    named = names or {}

    def of(labels: Mapping[str, str]) -> str:
        value = labels.get(label, "")
        return named.get(value, value)

    def per_version(name: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for labels, value in results.get(name, ()):
            version = of(labels)
            if version:
                found[version] = found.get(version, 0.0) + value
        return found

    requests, errors, sums = per_version("requests"), per_version("errors"), per_version("latency_sum")
    unanswered = per_version("connect_failures")
    buckets: dict[str, dict[float, float]] = {}
    for labels, value in results["latency_buckets"]:
        version, le = of(labels), labels.get("le")
        if not version or le is None:
            continue
        try:
            bound = float(le)  # "+Inf" parses as inf
        except ValueError:
            continue
        if bound >= 0 and not math.isnan(bound):
            per = buckets.setdefault(version, {})
            per[bound] = per.get(bound, 0.0) + value
    counters: dict[str, TrafficCounters] = {}
    for version in sorted(set(requests) | set(buckets)):
        counters[version] = TrafficCounters(
            requests=round(requests.get(version, 0.0)),
            errors=round(errors.get(version, 0.0)),
            connect_failures=round(unanswered.get(version, 0.0)),
            latency_sum_ms=sums.get(version, 0.0) * unit_ms,
            latency_buckets=rebucket(buckets[version], unit_ms) if version in buckets else histogram.empty(),
        )
    return counters
