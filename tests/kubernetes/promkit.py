"""A real Prometheus for the tests of the Prometheus traffic source: Debian's `prometheus` on a free
loopback port, with its config and TSDB in a temp folder, scraping every second a test exporter
whose series the test sets directly.

The exporter is an HTTP server of `prometheus_client` over a registry holding one collector: the
test sets cumulative counter values and histogram observations per label set, so it knows every
number Prometheus will see, and can make a counter go back (a restarted process). It also serves
`promkit_generation`, bumped by every change: `PromStack.caught_up()` waits until Prometheus has
scraped the exporter's latest state, so tests wait for counts, never for a fixed time.

Both are stopped after the tests that use them, also when a test fails: the exporter's server is
shut down, and Prometheus is terminated (then killed) by its PID.

Fixtures (import them into a test module): `prom_stack` (module scope; import `prom_stack_fixture`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    UnknownMetricFamily,
)

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_S = 1  # scrape and evaluation interval
MAX_WAIT_S = 30.0  # the most any wait here polls before it gives up (a bound, never an expectation)

_SKIP = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK),
    reason=f"{PROMETHEUS} is not installed (Debian's `prometheus`; .ci/run installs it)",
)

F = TypeVar("F", bound=Callable[..., Any])


def needs_prometheus(test: F) -> F:
    """Marks a test live (a real process on loopback) and skips it where Prometheus is not installed."""
    marked: F = pytest.mark.live(_SKIP(test))
    return marked

# Buckets of the test histograms. Istio's are in milliseconds; the generic ones in seconds.
ISTIO_BUCKETS_MS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
GENERIC_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the exporter


Labels = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += times
        self.total += value * times


class Exporter:
    """Series the test sets: counters by cumulative value, histograms by observation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- what the test sets

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """Add to the counter series called `name` as Prometheus will store it: a name ending in
        `_total` is served as a counter, any other (ingress-nginx's `..._requests`) untyped."""
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[_key(labels)] = series.get(_key(labels), 0.0) + value
            self.generation += 1

    def observe(self, name: str, labels: Mapping[str, str], value: float, times: int = 1,
                bounds: Sequence[float] = GENERIC_BUCKETS_S) -> None:
        with self._lock:
            series = self._histograms.setdefault(name, {})
            histogram = series.setdefault(_key(labels), _Histogram(tuple(bounds)))
            histogram.observe(value, times)
            self.generation += 1

    def include(self, collector: Any) -> None:
        """Serve another collector's series too (call `touch` after changing what it reads)."""
        self.registry.register(collector)

    def touch(self) -> None:
        """Say that something the exporter serves changed, so that `caught_up` waits for it."""
        with self._lock:
            self.generation += 1

    def restart(self, match: Mapping[str, str]) -> None:
        """Every series whose labels include `match` starts again from zero, as after a restart."""
        with self._lock:
            wanted = set(match.items())
            for series in self._counters.values():
                for key in series:
                    if wanted <= set(key):
                        series[key] = 0.0
            for hseries in self._histograms.values():
                for key, histogram in hseries.items():
                    if wanted <= set(key):
                        hseries[key] = _Histogram(histogram.bounds)
            self.generation += 1

    # -- what Prometheus scrapes

    def collect(self) -> Iterator[Any]:
        with self._lock:
            generation = GaugeMetricFamily("promkit_generation", "changes made by the test so far")
            generation.add_metric([], float(self.generation))
            yield generation
            for name, series in self._counters.items():
                names = sorted({k for key in series for k, _ in key})
                family: Any = (CounterMetricFamily(name.removesuffix("_total"), f"test counter {name}", labels=names)
                               if name.endswith("_total") else
                               UnknownMetricFamily(name, f"test counter {name}", labels=names))
                for key, value in series.items():
                    given = dict(key)
                    family.add_metric([given.get(n, "") for n in names], value)
                yield family
            for name, hseries in self._histograms.items():
                names = sorted({k for key in hseries for k, _ in key})
                hfamily = HistogramMetricFamily(name, f"test histogram {name}", labels=names)
                for key, histogram in hseries.items():
                    given = dict(key)
                    cumulative, running = [], 0
                    for bound, count in zip([*histogram.bounds, math.inf], histogram.counts, strict=True):
                        running += count
                        cumulative.append(("+Inf" if math.isinf(bound) else repr(float(bound)), float(running)))
                    hfamily.add_metric([given.get(n, "") for n in names], cumulative, histogram.total)
                yield hfamily

    # -- life

    def start(self) -> None:
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# ---------------------------------------------------------------- traffic in the two styles


def serve_istio(exporter: Exporter, *, service: str, namespace: str, version: str, requests: int,
                errors: int = 0, latency_ms: float = 20.0) -> None:
    """`requests` requests to one version as Istio's sidecars report them (`errors` of them 503)."""
    base = {"reporter": "destination", "destination_service_name": service, "destination_canonical_service": service,
            "destination_workload_namespace": namespace, "destination_version": version}
    if requests - errors:
        exporter.add("istio_requests_total", {**base, "response_code": "200"}, requests - errors)
    if errors:
        exporter.add("istio_requests_total", {**base, "response_code": "503"}, errors)
    if requests:
        exporter.observe("istio_request_duration_milliseconds", base, latency_ms, requests, ISTIO_BUCKETS_MS)


def serve_generic(exporter: Exporter, *, service: str, namespace: str, version: str, requests: int,
                  errors: int = 0, latency_s: float = 0.02, version_label: str = "version") -> None:
    """`requests` requests to one version under the common client-library names."""
    base = {"service": service, "namespace": namespace, version_label: version}
    if requests - errors:
        exporter.add("http_requests_total", {**base, "code": "200"}, requests - errors)
    if errors:
        exporter.add("http_requests_total", {**base, "code": "500"}, errors)
    if requests:
        exporter.observe("http_request_duration_seconds", base, latency_s, requests, GENERIC_BUCKETS_S)


# ---------------------------------------------------------------- Prometheus


CONFIG = """\
global:
  scrape_interval: {scrape}s
  evaluation_interval: {scrape}s
scrape_configs:
  - job_name: promkit
    scrape_interval: {scrape}s
    scrape_timeout: {scrape}s
    static_configs:
      - targets: ["127.0.0.1:{exporter_port}"]
"""


@dataclass
class PromStack:
    exporter: Exporter
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def caught_up(self) -> None:
        """Wait until Prometheus has scraped the exporter's latest state (bounded)."""
        wanted = self.exporter.generation
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            result = self.query("max(promkit_generation)")
            if result and float(result[0]["value"][1]) >= wanted:
                return
            assert time.monotonic() < deadline, (
                f"Prometheus never scraped generation {wanted} of the exporter; its log:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return "(no log)"


def start_prometheus(folder: Path, exporter: Exporter) -> PromStack:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(CONFIG.format(scrape=SCRAPE_S, exporter_port=exporter.port))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    stack = PromStack(exporter, f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            assert process.poll() is None, f"prometheus exited with {process.returncode}:\n{stack.logs()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{stack.url}/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus never became ready:\n{stack.logs()}"
            time.sleep(0.1)
        stack.caught_up()  # the exporter is scraped
    except BaseException:
        stop_prometheus(process)
        raise
    return stack


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # by its PID
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module", name="prom_stack")
def prom_stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    """A running exporter and a Prometheus scraping it, shared by one test module; each test uses
    series of its own (its own service name), so the tests do not see each other's counts."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is not installed (Debian's `prometheus`; .ci/run installs it)")
    folder = tmp_path_factory.mktemp("prometheus")
    exporter = Exporter()
    exporter.start()
    try:
        stack = start_prometheus(folder, exporter)
        try:
            yield stack
        finally:
            stop_prometheus(stack.process)
    finally:
        exporter.stop()
        shutil.rmtree(folder / "data", ignore_errors=True)
