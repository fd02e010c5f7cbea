"""Prometheus on one host (issue 12): a real Prometheus, configured with the scrape snippet that
`environment-manager --prepare` writes, scrapes the controller's `/metrics` exposition with the
controller's token, and the Prometheus traffic source's `safeship` query set reads every version's
counters back: requests, 5xx, connect failures and the latency histogram.

The "controller" here is a tiny HTTP server serving exactly what the controller's `/metrics` serves
(`safeship.routing.metrics.render` of the routes' counters), and answering 401 without the bearer
token from `<state_dir>/token`. Prometheus is Debian's, on a free loopback port, stopped by its PID
when the test ends, also when it fails. Waits poll Prometheus for the counts served, bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubernetes"))

from promkit import (  # tests/kubernetes is on the path from the line above
    MAX_WAIT_S,
    PROMETHEUS,
    Exporter,
    PromStack,
    free_port,
    needs_prometheus,
    stop_prometheus,
)

from safeship import histogram
from safeship.analysis.providers.prometheus import PrometheusTraffic
from safeship.config.models import Environment, PrometheusSourceConfig
from safeship.environments.scrape import SNIPPET_FILE, write_scrape_config
from safeship.routing.haproxy import HAProxyRouter, exporter_address, haproxy_binary, haproxy_pid, stop_haproxy
from safeship.routing.metrics import CONTENT_TYPE_LATEST, DURATION_BUCKETS_MS, render
from safeship.traffic import RouteKey, TrafficCounters

ENV = "production"
ROUTE = RouteKey("api", ENV)
OTHER = RouteKey("api", "staging")  # served by the same controller, kept out by the snippet
DURATION_INDEXES = [histogram.bucket_of(bound) for bound in DURATION_BUCKETS_MS]
SCRAPE_S = "1s"  # the test's scrape interval instead of the snippet's 5s, so waits are short


class Controller:
    """The controller's /metrics: `render` of what the test served, behind the bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.served: dict[RouteKey, dict[str, TrafficCounters]] = {}
        self.lock = threading.Lock()
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics" or self.headers.get("Authorization") != f"Bearer {outer.token}":
                    outer.refused += 1
                    self.send_response(401 if self.path == "/metrics" else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with outer.lock:
                    body = render(lambda: outer.served)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, route: RouteKey, version: str, requests: int, *, latency_ms: float,
              errors: int = 0, connect_failures: int = 0) -> None:
        with self.lock:
            counters = self.served.setdefault(route, {}).setdefault(version, TrafficCounters())
            for i in range(requests):
                status = None if i < connect_failures else (503 if i < connect_failures + errors else 200)
                counters.observe(latency_ms * (1.0 + (i % 7) / 10), status=status)


@contextlib.contextmanager
def running_controller(state_dir: Path) -> Iterator[Controller]:
    controller = Controller((state_dir / "token").read_text().strip())
    controller.thread.start()
    try:
        yield controller
    finally:
        controller.server.shutdown()
        controller.server.server_close()
        controller.thread.join(timeout=5)


@contextlib.contextmanager
def prometheus_with(scrape_configs: list[dict[str, Any]], folder: Path) -> Iterator[PromStack]:
    """Prometheus with the given scrape jobs (promkit's process handling), ready on loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": SCRAPE_S, "evaluation_interval": SCRAPE_S},
                                      "scrape_configs": scrape_configs}))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    stack = PromStack(Exporter(), f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            assert process.poll() is None, f"prometheus exited with {process.returncode}:\n{stack.logs()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{stack.url}/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus never became ready:\n{stack.logs()}"
            time.sleep(0.1)
        yield stack
    finally:
        stop_prometheus(process)


def scraped(stack: PromStack, promql: str, wanted: float) -> None:
    """Wait (bounded) until Prometheus answers `wanted` for a scalar-like query."""
    deadline = time.monotonic() + MAX_WAIT_S
    got: list[dict[str, Any]] = []
    while True:
        got = stack.query(promql)
        if got and float(got[0]["value"][1]) == wanted:
            return
        assert time.monotonic() < deadline, f"{promql} = {got}, not {wanted}; prometheus log:\n{stack.logs()}"
        time.sleep(0.2)


def assert_same(got: Mapping[str, TrafficCounters], served: Mapping[str, TrafficCounters]) -> None:
    assert set(got) == set(served)
    for version, original in served.items():
        back = got[version]
        assert (back.requests, back.errors, back.connect_failures) == (
            original.requests, original.errors, original.connect_failures), version
        assert back.latency_sum_ms == pytest.approx(original.latency_sum_ms, rel=1e-6)
        assert sum(back.latency_buckets) == original.requests
        for index in DURATION_INDEXES:  # the bounds the exposition has: the same count at or below each
            assert sum(back.latency_buckets[: index + 1]) == sum(original.latency_buckets[: index + 1]), index


@needs_prometheus
async def test_the_safeship_set_reads_the_controllers_series_scraped_as_prepare_says(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    folder = state_dir / "environments" / ENV
    folder.mkdir(parents=True)
    environment = Environment(name=ENV, traffic_source="prometheus",
                              prometheus=PrometheusSourceConfig(url="http://127.0.0.1:1", queries="safeship"))
    write_scrape_config(environment, state_dir, folder)  # makes the token: no controller has yet
    with running_controller(state_dir) as controller:
        (state_dir / "controller.json").write_text(json.dumps({"pid": os.getpid(), "host": "127.0.0.1",
                                                               "port": controller.port}))
        detail = write_scrape_config(environment, state_dir, folder)  # prepare again: the target follows
        assert f"127.0.0.1:{controller.port}" in detail
        jobs = yaml.safe_load((folder / SNIPPET_FILE).read_text())["scrape_configs"]
        for job in jobs:
            job["scrape_interval"] = SCRAPE_S
        controller.serve(ROUTE, "v1", 400, latency_ms=8.0, errors=4)
        controller.serve(ROUTE, "v2", 60, latency_ms=120.0, errors=9, connect_failures=3)
        controller.serve(OTHER, "v1", 50, latency_ms=1.0)
        with prometheus_with(jobs, tmp_path / "prometheus") as stack:
            scraped(stack, f'sum(safeship_requests_total{{environment="{ENV}"}})', 460)
            assert stack.query('up{job="safeship-production"}')[0]["value"][1] == "1"  # token accepted
            assert controller.refused == 0
            assert stack.query('safeship_requests_total{environment="staging"}') == []  # kept out

            source = PrometheusTraffic([environment.model_copy(update={
                "prometheus": PrometheusSourceConfig(url=stack.url, queries="safeship")})])
            first = await source.counters(ROUTE)
            assert_same(first, controller.served[ROUTE])

            controller.serve(ROUTE, "v2", 40, latency_ms=300.0, errors=20)  # a bad look for v2
            scraped(stack, f'sum(safeship_requests_total{{environment="{ENV}",version="v2"}})', 100)
            second = await source.counters(ROUTE)
            assert_same(second, controller.served[ROUTE])
            look = second["v2"].minus(first["v2"])
            assert (look.requests, look.errors, look.connect_failures) == (40, 20, 0)
            assert histogram.count_above(look.latency_buckets, histogram.bucket_of(200.0)) == 40
            assert second["v1"].minus(first["v1"]).requests == 0


@needs_prometheus
@pytest.mark.skipif(haproxy_binary() is None, reason="the haproxy binary is not installed (apt-get install haproxy)")
async def test_the_snippets_haproxy_job_scrapes_haproxys_own_exporter(tmp_path: Path) -> None:
    """For `router: haproxy`, prepare's snippet has a second job, on HAProxy's built-in exporter
    where the router serves it; a real Prometheus scrapes it and holds HAProxy's series."""
    state_dir = Path(tempfile.mkdtemp(prefix="psh", dir="/tmp"))  # short: HAProxy's sockets live here
    router = HAProxyRouter(state_dir)
    master: int | None = None
    try:
        port = await router.ensure_route(RouteKey("api", ENV), port=0)
        master = haproxy_pid(state_dir)
        assert port is not None and master is not None
        folder = state_dir / "environments" / ENV
        folder.mkdir(parents=True)
        environment = Environment(name=ENV, router="haproxy", traffic_source="prometheus",
                                  prometheus=PrometheusSourceConfig(url="http://127.0.0.1:1", queries="safeship"))
        detail = write_scrape_config(environment, state_dir, folder)
        exporter = exporter_address(state_dir)
        assert exporter is not None and f"HAProxy's exporter at {exporter}" in detail
        jobs = yaml.safe_load((folder / SNIPPET_FILE).read_text())["scrape_configs"]
        assert [job["job_name"] for job in jobs] == [f"safeship-{ENV}", f"haproxy-{ENV}"]
        for job in jobs:
            job["scrape_interval"] = SCRAPE_S
        with prometheus_with(jobs, tmp_path / "prometheus") as stack:
            scraped(stack, f'up{{job="haproxy-{ENV}"}}', 1)
            frontends = stack.query(f'haproxy_frontend_http_requests_total{{job="haproxy-{ENV}"}}')
            assert f"{ENV}__api" in {series["metric"].get("proxy") for series in frontends}
    finally:
        await router.close()
        stop_haproxy(state_dir)
        if master is not None:  # its PID file gone first: by the PID read when it started
            with contextlib.suppress(OSError):
                if b"haproxy" in Path(f"/proc/{master}/cmdline").read_bytes():
                    os.kill(master, signal.SIGKILL)
        shutil.rmtree(state_dir, ignore_errors=True)
