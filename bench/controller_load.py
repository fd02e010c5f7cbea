"""One controller under load: N concurrent canary deployments on simulated services, in real time.

    python bench/controller_load.py [--n 10,100,1000] [--duration 60] [--dashboard-requests 40]

For each N, a child process builds one controller (`safeship.api.controller.Controller`) with a
real SQLite file store, its reconcile loop, its deployment tasks and its HTTP app (API and
dashboard, served by uvicorn on loopback from the same event loop, as `safeship server` does).
Its environment runs on a platform, router and traffic source registered here: the simulated
world of `safeship.simworld` (one world per service, on the wall clock), so that instances start,
become ready and serve traffic as the sim platform and router model them, with no process or port
per instance. N services each get a canary of v2 over a stable v1 (every fifth candidate fails 6x
as often as its baseline, and is rolled back by the judge); the deployments are submitted through
`Controller.submit`, as the API does, and then the controller runs them for `--duration` seconds.

Measured, per N, side by side in one run:

- tick latency p50/p99 (the seconds one `DeploymentEngine.step` takes) and how often each
  deployment is ticked: the gaps between one deployment's ticks, and their lateness (a gap minus
  the wait its tick asked for; the engine asks for 1 s or less here);
- CPU seconds per deployment-minute: the process's CPU time over the window / (N x minutes);
- store writes per second: INSERT/UPDATE/DELETE statements and commits, counted with SQLAlchemy's
  cursor and commit events on the store's engine;
- memory: peak RSS (VmHWM) and (peak RSS - RSS before the deployments) / N;
- the dashboard's overview page (GET / with the session of the local admin token), from another
  process, a bounded number of requests spread over the window: p50/p99, and whether every
  answer was 200 and listed all N services;
- the outcome: deployments ended, advanced past their first step, or neither.

It prints a table, the ratio N_max / N_min per deployment for each figure, and a verdict per
target (every deployment ticked at least once a second at N = 1,000; the overview answered in
under 200 ms at N = 1,000), and writes bench/results/controller-load.md and .json. Each child
stops by itself after its window (and on SIGTERM), stopping its dashboard client by PID and
removing its state folder; the parent gives each child a bound and kills it past that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# the source under test: this tree's, or another's (--baseline-src runs children on an older tree)
sys.path.insert(0, os.environ.get("CONTROLLER_LOAD_SRC") or str(ROOT / "src"))

from safeship import platforms, routing, traffic  # noqa: E402
from safeship.clock import VirtualClock  # noqa: E402
from safeship.config.scenario import CandidateSpec, LatencySpec, Scenario, TrafficSpec, VersionSpec  # noqa: E402
from safeship.platforms.base import Instance, InstanceSpec, Platform, PlatformSetup  # noqa: E402
from safeship.platforms.scaling import ScalesOneByOne  # noqa: E402
from safeship.platforms.sim import SimPlatform  # noqa: E402
from safeship.routing.base import (  # noqa: E402
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
)
from safeship.routing.sim import SimRouter, SimTraffic  # noqa: E402
from safeship.simworld import SimWorld  # noqa: E402
from safeship.traffic import TrafficSetup, TrafficSource, TrafficWindow  # noqa: E402

ENVIRONMENT = "load"
BASELINE, CANDIDATE = "v1", "v2"
PLATFORM, ROUTER, TRAFFIC = "load-sim", "load-sim-router", "load-sim-traffic"
TICK_TARGET_S = 1.0  # every deployment ticked at least once a second...
TICK_SLACK_S = 0.2  # ...counting a gap up to this much longer than the 1 s the engine asks for
OVERVIEW_TARGET_MS = 200.0
TARGET_N = 1000

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
router_process: false
intelligent_deployment:
  strategies:
    canary:
      traffic_percentages: [10, 50, 100]
      step_duration: "20s"
      min_step_duration: "5s"
  analysis:
    ramp_time: "10s"
    history: "5m"
  rollback:
    stable_after: "1m"
    monitoring: {{duration: "20s", interval: "5s"}}
environment_management:
  environments:
    - {{name: {environment}, type: staging, platform: sim, resource_quotas: {{cpu: {cpu}, memory: "{memory}Mi"}}}}
services:
{services}
"""


# ---------------------------------------------------------------- the simulated world, on the wall clock


class WallClock(VirtualClock):
    """The simulated worlds' clock: the wall clock (the controller's own clock is the real one)."""

    def __init__(self) -> None:
        super().__init__(time.time())

    def now(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        raise RuntimeError("the wall clock is not moved by hand")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def scenario_for(index: int) -> Scenario:
    """Service `index`'s candidate: every fifth one fails 6x as often as its baseline."""
    bad = index % 5 == 4
    return Scenario(
        name=f"load-{index}",
        seed=index,
        history_s=300,  # the record before the deployment, drawn by the sim world at each prepare
        traffic=TrafficSpec(rps=50),
        baseline=VersionSpec(error_rate=0.005, latency_ms=LatencySpec(p50=20, p99=80)),
        candidate=CandidateSpec(error_rate=0.03 if bad else 0.005, latency_ms=LatencySpec(p50=20, p99=80)),
        expect="rollback" if bad else "promote",
    )


class Worlds:
    """One simulated world per service (its own scenario, seed, instances and traffic), with the
    sim platform and router over each; the plug-ins below pass each call to the service's."""

    current: ClassVar[Worlds | None] = None

    def __init__(self, services: Sequence[str]) -> None:
        self.clock = WallClock()
        self.worlds = {name: SimWorld(scenario_for(i), self.clock, candidate_version=CANDIDATE, seed=i)
                       for i, name in enumerate(services)}
        self.platforms = {name: SimPlatform(world) for name, world in self.worlds.items()}
        self.routers = {name: SimRouter(world) for name, world in self.worlds.items()}

    @classmethod
    def get(cls) -> Worlds:
        if cls.current is None:
            raise RuntimeError("the worlds are set before the controller is built")
        return cls.current

    def install_baselines(self, replicas: int) -> None:
        """v1 has served each service for a day: its instances run (ready), nothing routes yet;
        the controller's start syncs backends and restores {v1: 100} from the stable version."""
        for name, world in self.worlds.items():
            for index in range(replicas):
                instance = world.spawn(name, ENVIRONMENT, BASELINE, index)
                instance.started_at -= 86_400


class LoadPlatform(ScalesOneByOne):
    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = ROUTER
    traffic: ClassVar[str] = TRAFFIC

    def __init__(self, worlds: Worlds) -> None:
        self.worlds = worlds

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        return cls(Worlds.get())

    async def start(self, spec: InstanceSpec) -> Instance:
        return await self.worlds.platforms[spec.service].start(spec)

    async def stop(self, instance: Instance, *, drain: float) -> None:
        await self.worlds.platforms[instance.service].stop(instance, drain=drain)

    async def instances(self, service: str, environment: str) -> list[Instance]:
        platform = self.worlds.platforms.get(service)
        return await platform.instances(service, environment) if platform is not None else []

    async def adopt(self) -> list[Instance]:
        return []

    async def close(self) -> None:
        return None


class LoadRouter:
    abilities: RouterAbilities = RouterAbilities(hold=True, listens=False)

    def __init__(self, worlds: Worlds) -> None:
        self.worlds = worlds

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        return cls(Worlds.get())

    def of(self, route: RouteKey) -> SimRouter:
        return self.worlds.routers[route.service]

    async def open(self) -> None:
        return None

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        return await self.of(route).ensure_route(route, port=port, host=host)

    async def remove_route(self, route: RouteKey) -> None:
        await self.of(route).remove_route(route)

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        await self.of(route).set_backends(route, version, backends)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        await self.of(route).set_weights(route, weights)

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        await self.of(route).hold(route, max_wait)

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return await self.of(route).counters(route)

    async def routes_snapshot(self) -> RoutesSnapshot:
        merged = RoutesSnapshot()
        for router in self.worlds.routers.values():
            part = await router.routes_snapshot()
            merged.counters.update(part.counters)
            merged.unrouted.update(part.unrouted)
        return merged

    def gauges(self, route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        return self.of(route).gauges(route)

    async def close(self) -> None:
        return None


class LoadTraffic:
    """The sim routers' counters; the record before a deployment is drawn once, by the first
    service's world, and given to every service: drawing a record costs the simulated world far
    more CPU than a real source's query costs the controller (a Prometheus query waits on I/O),
    and would be measured as the controller's own."""

    name = "load-sim"

    def __init__(self, worlds: Worlds) -> None:
        self.worlds = worlds
        self.record: TrafficWindow | None = None

    @classmethod
    def create(cls, setup: TrafficSetup) -> TrafficSource:
        return cls(Worlds.get())

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return await self.worlds.routers[route.service].counters(route)

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        if self.record is None:
            self.record = await SimTraffic(self.worlds.routers[route.service]).before(route, at, span)
        return self.record

    async def close(self) -> None:
        return None


def register_plugins() -> None:
    platforms.register(PLATFORM, LoadPlatform)
    routing.register(ROUTER, LoadRouter)
    traffic.register_traffic_source(TRAFFIC, LoadTraffic)


def unregister_plugins() -> None:
    platforms.PLATFORMS.pop(PLATFORM, None)
    routing.ROUTERS.pop(ROUTER, None)
    traffic.TRAFFIC_SOURCES.pop(TRAFFIC, None)


# ---------------------------------------------------------------- what is measured


@dataclass
class Ticks:
    """Every tick of the window: how long it took, when each deployment's ticks began, and the
    wait each asked for."""

    durations: list[float] = field(default_factory=list)
    starts: dict[str, list[float]] = field(default_factory=dict)
    asked: dict[str, list[float]] = field(default_factory=dict)
    recording: bool = False

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(deployment_id: str, **options: Any) -> Any:
            began = time.perf_counter()
            result = await step(deployment_id, **options)
            if self.recording:
                self.durations.append(time.perf_counter() - began)
                self.starts.setdefault(deployment_id, []).append(began)
                self.asked.setdefault(deployment_id, []).append(float(result[0]))
            return result

        return timed


@dataclass
class Writes:
    """Statements that change the store, and commits, counted on its engine."""

    statements: int = 0
    rows: int = 0
    commits: int = 0
    recording: bool = False

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        def on_execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                       executemany: bool) -> None:
            if self.recording and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
                self.statements += 1
                self.rows += len(parameters) if executemany else 1

        def on_commit(conn: Any) -> None:
            if self.recording:
                self.commits += 1

        event.listen(engine, "before_cursor_execute", on_execute)
        event.listen(engine, "commit", on_commit)


def rss_kb(field_name: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def service_names(n: int) -> list[str]:
    return [f"svc-{i:04d}" for i in range(n)]


# ---------------------------------------------------------------- the dashboard client (another process)


def dashboard_client(url: str, token_file: str, count: int, start_at: float, end_at: float, services: int) -> int:
    """Log in with the token, then GET / `count` times, spread evenly from `start_at` (or as soon as
    this process is ready, if later) to `end_at` (wall-clock times); prints one JSON line per
    answer as it comes (its status, milliseconds and how many of the services it listed), so that
    a client stopped early still leaves what it measured, and one last line with all of them."""
    import re

    import httpx

    results: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30.0, follow_redirects=False) as client:
        login = client.post("/ui/login", data={"token": Path(token_file).read_text().strip(), "next": "/"})
        if login.status_code != 303:
            print(json.dumps({"error": f"login answered {login.status_code}", "results": []}), flush=True)
            return 1
        time.sleep(max(0.0, start_at - time.time()))
        every = max(0.0, end_at - time.time()) / count
        pattern = re.compile(r"svc-\d{4}")
        for _ in range(count):
            began = time.perf_counter()
            answer = client.get("/")
            took = time.perf_counter() - began
            listed = len(set(pattern.findall(answer.text)))
            results.append({"status": answer.status_code, "ms": took * 1000.0, "listed": listed,
                            "all": listed == services})
            print(json.dumps({"answer": results[-1]}), flush=True)
            time.sleep(max(0.0, every - took))
    print(json.dumps({"error": None, "results": results}), flush=True)
    return 0


# ---------------------------------------------------------------- one run


@dataclass
class Options:
    n: int
    duration: float
    dashboard_requests: int = 40
    replicas: int = 2


class _QuietServer:
    """uvicorn's server without its signal handlers: the run's own SIGTERM handler stops it."""

    @staticmethod
    def make(app: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        return Server(config)


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run_load(options: Options, workdir: Path, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """One controller with `options.n` concurrent canaries for `options.duration` seconds, in
    `workdir` (its state folder and store); returns the figures. Everything it starts (the
    controller's tasks, the HTTP server, the dashboard client process) is stopped before it
    returns, also when it fails."""
    from safeship.api.app import create_app, load_or_create_token
    from safeship.api.controller import Controller
    from safeship.api.store_setup import open_store
    from safeship.config.loader import load_config
    from safeship.config.models import DeploymentRequest, DeploymentStrategy
    from safeship.engine.phases import Phase
    from safeship.store import StableVersion

    stop = stop or asyncio.Event()
    register_plugins()
    names = service_names(options.n)
    state = workdir / "state"
    path = workdir / "safeship.yaml"
    # room for every service's instances at the canary's peak (0.1 core and 128 MB each by default)
    cpu, memory = options.n * (options.replicas + 2) * 0.1 + 1, options.n * (options.replicas + 2) * 128 + 1024
    path.write_text(CONFIG.format(state_dir=state, environment=ENVIRONMENT, cpu=cpu, memory=memory,
                                  services="\n".join(
        f"  {name}: {{replicas: {options.replicas}, ports: {{{ENVIRONMENT}: {20000 + i}}}}}"
        for i, name in enumerate(names))))
    config = load_config(path)
    environments = config.environment_management.environments
    # The config's schema knows only the platforms built in; the registry is what the controller asks.
    environments[0] = environments[0].model_copy(update={"platform": PLATFORM})
    Worlds.current = worlds = Worlds(names)
    worlds.install_baselines(options.replicas)
    store = open_store(config, path)
    now = time.time()
    for name in names:
        store.record_stable(StableVersion(name, ENVIRONMENT, BASELINE, None, now - 86_400, None, True))
    controller = Controller(config, state_dir=state, store=store)
    router = controller.parts.routers[ENVIRONMENT]
    assert isinstance(router, LoadRouter)

    async def gauges(route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        return router.gauges(route)

    # The controller scrapes custom gauges from instances' /metrics pages; a simulated instance
    # has none, and its port is no one's, so the world's own gauges are read instead.
    controller.engine.world.gauges = gauges
    ticks, writes = Ticks(), Writes()
    controller.engine.step = ticks.wrap(controller.engine.step)  # type: ignore[method-assign]
    writes.attach(store.engine)
    passes = [0]
    pass_of = controller.outbox._pass_of

    def counted(lane: Any) -> None:  # the outbox's passes over the events table, for the figures
        if ticks.recording:
            passes[0] += 1
        pass_of(lane)

    controller.outbox._pass_of = counted  # type: ignore[method-assign]
    server: Any = None
    serving: asyncio.Task[None] | None = None
    client: subprocess.Popen[str] | None = None
    result: dict[str, Any] = {"n": options.n, "duration_s": options.duration}
    try:
        await controller.start()
        token = load_or_create_token(state)
        sock = _listen()
        port = int(sock.getsockname()[1])
        server = _QuietServer.make(create_app(controller, token))
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        importlib.import_module("safeship.analysis.policies")  # as the controller does at start
        rss_before = rss_kb()
        submitted_at = time.perf_counter()
        ids = []
        for name in names:
            record = controller.submit(DeploymentRequest(service_name=name, version=CANDIDATE,
                                                         environment=ENVIRONMENT,
                                                         deployment_strategy=DeploymentStrategy.CANARY))
            ids.append(record.id)
        result["submit_s"] = time.perf_counter() - submitted_at
        # The window: from the last submit, `duration` seconds of the controller running them.
        if options.dashboard_requests > 0:
            # spread over the window from a fifth of it on, and done a tenth before its end
            start_at, end_at = time.time() + options.duration * 0.2, time.time() + options.duration * 0.9
            client = subprocess.Popen(
                [sys.executable, __file__, "--dashboard-client", f"http://127.0.0.1:{port}",
                 str(state / "token"), str(options.dashboard_requests), f"{start_at:.3f}", f"{end_at:.3f}",
                 str(options.n)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ticks.recording = writes.recording = True
        began, cpu_began = time.perf_counter(), cpu_s()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), options.duration)
        ticks.recording = writes.recording = False
        window = time.perf_counter() - began
        cpu = cpu_s() - cpu_began
        result.update(window_s=window, interrupted=stop.is_set())
        result.update(_tick_figures(ticks, options.n, began, began + window))
        result.update(cpu_s=cpu, cpu_per_deployment_minute_s=cpu / (options.n * window / 60.0),
                      cpu_share_of_a_core=cpu / window, ticks_per_cpu_s=result["ticks"] / cpu if cpu else None,
                      load_average=os.getloadavg()[0])
        result.update(store_statements=writes.statements, store_rows=writes.rows, store_commits=writes.commits,
                      writes_per_s=writes.statements / window, commits_per_s=writes.commits / window,
                      rows_per_s=writes.rows / window, outbox_passes_per_s=passes[0] / window)
        peak = rss_kb("VmHWM")
        result.update(rss_before_mb=rss_before / 1024, rss_peak_mb=peak / 1024,
                      rss_per_deployment_kb=(peak - rss_before) / options.n)
        if client is not None:
            result["dashboard"] = await _client_result(client, timeout=options.duration + 60.0)
            client = None
        result["outcomes"] = _outcomes([store.get_deployment(i) for i in ids], Phase)
        return result
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(10)
        if server is not None:
            server.should_exit = True
        if serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
        await controller.stop()
        store.close()
        Worlds.current = None
        unregister_plugins()


async def _client_result(client: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while client.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if client.poll() is None:
        client.kill()
    out, err = client.communicate(timeout=10)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    final = [line for line in lines if "results" in line]
    if final:
        data = final[-1]
    else:  # stopped before its last line: the answers it had, and why it stopped
        data = {"error": f"the dashboard client was stopped after {len(lines)} answers (exit "
                         f"{client.returncode}){': ' + err[-300:] if err.strip() else ''}",
                "results": [line["answer"] for line in lines if "answer" in line]}
    results = data["results"]
    times = [r["ms"] for r in results]
    return {
        "error": data["error"],
        "requests": len(results),
        "ok": sum(1 for r in results if r["status"] == 200),
        "listed_all": sum(1 for r in results if r["all"]),
        "p50_ms": quantile(times, 0.5),
        "p99_ms": quantile(times, 0.99),
        "max_ms": max(times) if times else None,
    }


def _tick_figures(ticks: Ticks, n: int, start: float, end: float) -> dict[str, Any]:
    gaps: list[float] = []
    late: list[float] = []
    long_asked = 0
    worst_gap: dict[str, float] = {}
    for deployment, starts in ticks.starts.items():
        asked = ticks.asked[deployment]
        for i in range(1, len(starts)):
            gap = starts[i] - starts[i - 1]
            if asked[i - 1] > TICK_TARGET_S or math.isinf(asked[i - 1]):
                long_asked += 1  # the engine asked for a longer wait: not the controller's lateness
                continue
            gaps.append(gap)
            late.append(gap - max(0.0, asked[i - 1]))
            worst_gap[deployment] = max(worst_gap.get(deployment, 0.0), gap)
    durations = ticks.durations
    limit = TICK_TARGET_S + TICK_SLACK_S
    on_time = sum(1 for g in gaps if g <= limit)
    return {
        "ticks": len(durations),
        "ticks_per_s": len(durations) / (end - start),
        "ticked_deployments": len(ticks.starts),
        "tick_p50_ms": (quantile(durations, 0.5) or 0.0) * 1000,
        "tick_p99_ms": (quantile(durations, 0.99) or 0.0) * 1000,
        "tick_max_ms": max(durations, default=0.0) * 1000,
        "ticks_per_deployment_s": len(durations) / (n * (end - start)),
        "gap_p50_s": quantile(gaps, 0.5),
        "gap_p99_s": quantile(gaps, 0.99),
        "gap_max_s": max(gaps, default=None),
        "late_p99_s": quantile(late, 0.99),
        "gaps_on_time_share": on_time / len(gaps) if gaps else None,
        "deployments_never_late_share": (sum(1 for g in worst_gap.values() if g <= limit) / len(worst_gap)
                                         if worst_gap else None),
        "gaps_after_longer_waits": long_asked,
    }


def _outcomes(records: Sequence[Any], phase_type: Any) -> dict[str, int]:
    """Deployments ended (and how), advanced (past the first step of their plan: instances
    started, or further), or neither."""
    found = {"ended": 0, "advanced": 0, "not_advanced": 0}
    for record in records:
        phase = phase_type(record.phase)
        if phase.is_final:
            found["ended"] += 1
            found[record.phase] = found.get(record.phase, 0) + 1
        elif phase in (phase_type.MONITORING, phase_type.ROLLING_BACK) or (
                phase is phase_type.PROGRESSING and record.step_index >= 1):
            found["advanced"] += 1
        else:
            found["not_advanced"] += 1
        where = f"at {record.phase}:{record.step_index}"
        found[where] = found.get(where, 0) + 1
    return found


# ---------------------------------------------------------------- the parent: one child per N, the report


def child(n: int, duration: float, dashboard_requests: int) -> int:
    """Run one N in this process and print its figures as one JSON line."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix=f"controller-load-{n}-"))

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        return await run_load(Options(n=n, duration=duration, dashboard_requests=dashboard_requests), workdir, stop)

    try:
        try:
            import uvloop
        except ImportError:
            figures = asyncio.run(main())
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                figures = runner.run(main())
    finally:
        kept = os.environ.get("CONTROLLER_LOAD_KEEP_STORE")  # a copy of the store, to study it afterwards
        if kept and (workdir / "state" / "state.db").exists():
            shutil.copy(workdir / "state" / "state.db", kept)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures), flush=True)
    return 0


def run_child(n: int, duration: float, dashboard_requests: int, src: str | None = None) -> dict[str, Any]:
    bound = duration + 120.0 + n * 0.6  # an older tree may take minutes to submit a thousand
    env = dict(os.environ)
    if src is not None:
        env["CONTROLLER_LOAD_SRC"] = str(Path(src).resolve())
    process = subprocess.Popen([sys.executable, __file__, "--child", str(n), "--duration", str(duration),
                                "--dashboard-requests", str(dashboard_requests)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the child stops what it started, then prints what it has
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"n": n, "error": f"exit {process.returncode}: {err[-2000:]}"}
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


ROWS: list[tuple[str, str, str]] = [
    # (label, key, format)
    ("deployments submitted in (s)", "submit_s", "{:.1f}"),
    ("ticks / s (all deployments)", "ticks_per_s", "{:.0f}"),
    ("tick p50 (ms)", "tick_p50_ms", "{:.2f}"),
    ("tick p99 (ms)", "tick_p99_ms", "{:.1f}"),
    ("ticks per deployment-second", "ticks_per_deployment_s", "{:.2f}"),
    ("gap between ticks p50 (s)", "gap_p50_s", "{:.2f}"),
    ("gap between ticks p99 (s)", "gap_p99_s", "{:.2f}"),
    ("gaps within 1.2 s (share)", "gaps_on_time_share", "{:.3f}"),
    ("deployments never late (share)", "deployments_never_late_share", "{:.3f}"),
    ("CPU s per deployment-minute", "cpu_per_deployment_minute_s", "{:.3f}"),
    ("CPU (cores busy)", "cpu_share_of_a_core", "{:.2f}"),
    ("ticks per CPU-second", "ticks_per_cpu_s", "{:.0f}"),
    ("machine load average (1 min, at the end)", "load_average", "{:.1f}"),
    ("store write statements / s", "writes_per_s", "{:.0f}"),
    ("store commits / s", "commits_per_s", "{:.0f}"),
    ("outbox passes / s", "outbox_passes_per_s", "{:.1f}"),
    ("peak RSS (MB)", "rss_peak_mb", "{:.0f}"),
    ("RSS per deployment (KB)", "rss_per_deployment_kb", "{:.0f}"),
    ("overview p50 (ms)", "dashboard.p50_ms", "{:.0f}"),
    ("overview p99 (ms)", "dashboard.p99_ms", "{:.0f}"),
    ("overview answers 200 listing all N", "dashboard.listed_all", "{}"),
    ("deployments ended", "outcomes.ended", "{}"),
    ("deployments advanced (not ended)", "outcomes.advanced", "{}"),
    ("deployments not advanced", "outcomes.not_advanced", "{}"),
]
# Figures whose growth with N is shown per deployment: (label, key, divide by N first)
GROWTH: list[tuple[str, str, bool]] = [
    ("tick p50", "tick_p50_ms", False),
    ("tick p99", "tick_p99_ms", False),
    ("gap between ticks p99", "gap_p99_s", False),
    ("CPU per deployment-minute", "cpu_per_deployment_minute_s", False),
    ("store writes per deployment-second", "writes_per_s", True),
    ("RSS per deployment", "rss_per_deployment_kb", False),
    ("overview p50 per listed deployment", "dashboard.p50_ms", True),
]


def value(figures: Mapping[str, Any], key: str) -> Any:
    found: Any = figures
    for part in key.split("."):
        if not isinstance(found, Mapping) or part not in found:
            return None
        found = found[part]
    return found


def shown(figures: Mapping[str, Any], key: str, fmt: str) -> str:
    found = value(figures, key)
    if found is None:
        return "-"
    if key == "dashboard.listed_all":
        return f"{found}/{value(figures, 'dashboard.requests')}"
    return fmt.format(found)


def verdicts(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    at = next((r for r in runs if r.get("n") == TARGET_N and "error" not in r), None)
    if at is None:
        return [f"no verdict: N = {TARGET_N} was not run (or failed)"]
    share = value(at, "gaps_on_time_share")
    p99 = value(at, "gap_p99_s")
    if share is not None and p99 is not None:
        met = p99 <= TICK_TARGET_S + TICK_SLACK_S
        lines.append(
            f"ticked at least once a second at N = {TARGET_N}: {'met' if met else 'NOT met'}: gap p99 {p99:.2f} s "
            f"(target <= {TICK_TARGET_S + TICK_SLACK_S:.1f} s: the engine's 1 s wait plus {TICK_SLACK_S:.1f} s), "
            f"{share:.1%} of gaps within it"
            + ("" if met else f", {p99 / (TICK_TARGET_S + TICK_SLACK_S):.1f}x the target"))
    overview = value(at, "dashboard.p99_ms")
    if overview is not None:
        met = overview < OVERVIEW_TARGET_MS and value(at, "dashboard.listed_all") == value(at, "dashboard.requests")
        lines.append(f"overview under {OVERVIEW_TARGET_MS:.0f} ms at N = {TARGET_N}: {'met' if met else 'NOT met'}: "
                     f"p99 {overview:.0f} ms, p50 {value(at, 'dashboard.p50_ms'):.0f} ms"
                     + ("" if overview < OVERVIEW_TARGET_MS else f", {overview / OVERVIEW_TARGET_MS:.1f}x the target")
                     + f"; {value(at, 'dashboard.listed_all')}/{value(at, 'dashboard.requests')} answers 200 "
                     f"listing all {TARGET_N}")
    return lines


def _section(runs: Sequence[Mapping[str, Any]], title: str) -> list[str]:
    """One tree's table, the growth of its figures with N, and its verdicts."""
    ok = [r for r in runs if "error" not in r]
    lines = [f"### {title}", "", "| figure | " + " | ".join(f"N = {r['n']:,}" for r in ok) + " |",
             "|---|" + "---:|" * len(ok)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(shown(r, key, fmt) for r in ok) + " |")
    lines.append("")
    if len(ok) >= 2:
        low, high = ok[0], ok[-1]
        lines += ["How each figure grows with N (the ratio of the per-deployment figures):", "",
                  f"| per deployment | N = {high['n']:,} / N = {low['n']:,} |", "|---|---:|"]
        for label, key, per_n in GROWTH:
            a, b = value(low, key), value(high, key)
            if a is None or b is None or a == 0:
                lines.append(f"| {label} | - |")
                continue
            if per_n:
                a, b = a / low["n"], b / high["n"]
            lines.append(f"| {label} | {b / a:.2f}x |")
        lines.append("")
    lines += ["Verdicts:", "", *[f"- {line}" for line in verdicts(runs)], ""]
    errors = [f"- N = {r['n']}: {r['error']}" for r in runs if "error" in r]
    if errors:
        lines += ["Failed runs:", "", *errors, ""]
    return lines


def report(sections: Mapping[str, Sequence[Mapping[str, Any]]], command: str) -> str:
    parts = ["```", command, "```", ""]
    for title, runs in sections.items():
        parts += _section(runs, title)
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="10,100,1000", help="deployment counts, comma-separated (default 10,100,1000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each N runs after its submits")
    parser.add_argument("--dashboard-requests", type=int, default=40, help="overview GETs per N (0: none)")
    parser.add_argument("--baseline-src", help="also run each N on this older src/ tree, just before this one's")
    parser.add_argument("--out", default=str(RESULTS / "controller-load"), help="results path, without .md/.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dashboard-client", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dashboard_client:
        url, token_file, count, start_at, end_at, services = args.dashboard_client
        return dashboard_client(url, token_file, int(count), float(start_at), float(end_at), int(services))
    if not 1 <= args.duration <= 900:
        parser.error(f"--duration: must be 1..900 seconds, got {args.duration:g}")
    if args.child is not None:
        return child(args.child, args.duration, args.dashboard_requests)
    try:
        counts = sorted({int(x) for x in args.n.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--n: a comma-separated list of counts, got {args.n!r}")
    if not counts or any(not 1 <= c <= 5000 for c in counts):
        parser.error(f"--n: each count must be 1..5000, got {args.n!r}")
    if args.baseline_src is not None and not (Path(args.baseline_src) / "safeship").is_dir():
        parser.error(f"--baseline-src: {args.baseline_src} holds no safeship package (give an older tree's src/)")
    trees = {"this tree": None} if args.baseline_src is None else {
        f"baseline ({args.baseline_src})": args.baseline_src, "this tree": None}
    sections: dict[str, list[dict[str, Any]]] = {title: [] for title in trees}
    for n in counts:
        for title, src in trees.items():  # side by side: each N on every tree before the next N
            print(f"N = {n}, {title}: running {args.duration:g} s ...", flush=True)
            sections[title].append(run_child(n, args.duration, args.dashboard_requests, src))
            if "error" in sections[title][-1]:
                print(f"N = {n}, {title} failed: {sections[title][-1]['error']}", flush=True)
    command = "python bench/controller_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(sections, command.strip())
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("# The controller under load\n\n" + text)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "sections": sections,
         "verdicts": {title: verdicts(runs) for title, runs in sections.items()}}, indent=2) + "\n")
    return 0 if all("error" not in r for runs in sections.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
