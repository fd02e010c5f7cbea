"""Zero-downtime benchmark: failed requests while real deployments switch versions under load.

    python bench/zero_downtime.py [--json FILE] [--rate 500] [--routers builtin,haproxy]
                                  [--strategies canary,blue_green,rolling,recreate]
    python bench/zero_downtime.py --restarts 5 --reloads 5 [--rate 500] [--routers builtin,haproxy]

For each router and strategy: a real controller (`python -m safeship.api.server`) on a temp state
dir, the local platform and the example service (examples/user_service, 2 replicas). It deploys
v1.2.0, starts an open-loop load generator on the route port (`--rate` req/s asked, default 500),
then deploys the healthy v1.4.0 and, once that is done, the bad v1.3.0 (8% of its requests answer
HTTP 500), which the analysis rolls back on its own. The bench's config shortens the steps (canary
steps of 2 s, 2 s monitoring windows); the judge and the triggers run for real.

One row per router x strategy x release (healthy | bad), over the window from the deployment's
start to its end (`created_at`..`finished_at` in the controller's record):

- offered_rps: requests the generator really sent per second in that window (counted, not asked);
  `min_second_rps` is the slowest whole second. The generator is the bench's own (raw asyncio
  streams, keep-alive, uvloop when importable): the package's httpx-based one offered 66-210 req/s
  of the 500 asked on the 2-core machine this was written on, with its own queueing in the p99;
- requests, failed_requests (HTTP 5xx or no answer), candidate_failed_requests (failures whose
  answer carries the new version in X-Version, as the load generator reads it);
- p99_ms: the 99th percentile of the answered requests' latency in the window, counted from the
  moment each request was due (open loop: a request held in the recreate gap shows its wait);
- time_to_rollback_s (bad rows): from the first request the bad version answered to the end of
  the rollback; `rollback_clock` says `first_candidate_request`, or `deployment_start` when the bad
  version never answered one. `decided_after_s` is from the same moment to the rollback decision;
- after_failed_requests: failures sent after the deployment ended, until the next one started
  (SETTLE_S later) or AFTER_S after the last one, while the replaced instances drain and stop.

Prints one table, the machine (cores, platform) and the verdicts: 0 failed requests in every
healthy row; in bad rows every failure was served by the bad version. Writes the rows to
bench/results/zero_downtime.json (or --json FILE). The haproxy router is skipped, with the reason
printed, while `safeship.routing.ROUTERS` has no "haproxy" or the binary is missing; its
environment names `traffic_source: haproxy` (show stat counts, latency from HAProxy's per-request
log lines) when that source is registered, and each row says its `traffic_source`.

Last result (2026-12-01, 2 cores, Linux 6.18 x86_64, Python 3.11.7, load average 5-7 from other
work on the machine; bench/results/zero_downtime.txt): 319 s for both routers x 4 strategies. The
generator offered 500 req/s in every row (slowest whole second: 500).
- Healthy releases: 0 failed requests in all 4 builtin rows and in the haproxy canary, blue-green
  and rolling rows (p99 35-57 ms; builtin recreate 2.06 s: requests held through the gap). HAProxy
  recreate failed 1015 of 3290 requests: HAProxy cannot hold requests in the recreate gap
  (`hold_unsupported`), so they are answered 503 by HAProxy itself, none by the new version.
- Bad releases: rolled back in 7 of 8 rows, with only the bad version's own failures (23-168),
  2.1-5.2 s from its first request to the end of the rollback. HAProxy recreate promoted the bad
  v1.3.0 ("no regression during the window" after a 2 s window that began with the gap's 503s);
  its events are in the JSON.
- Verdict: FAIL (haproxy x recreate, both rows). Variance between runs on this loaded machine:
  an earlier run rolled back the healthy builtin rolling release in its monitoring window (p95
  slow share 17% vs 2.3% before the switch: machine contention in a single-version phase, which
  has no concurrent control), and one of 8 builtin blue-green runs promoted the bad release.
  Of 6 further haproxy x recreate runs, 2 promoted the bad release and 1 rolled back the healthy
  one (all 3 before 15:05 UTC); the 3 runs after 15:10 rolled the bad release back, with ~1000
  gap 503s per row. At 100 req/s (the live
  test's rate) the 2 s canary steps give the judge thin evidence: the bad canary was promoted in
  3 of 6 builtin runs ("step duration reached, no harm shown" at each step, then 2 s of
  monitoring with `history_unavailable`); at 500 req/s it was rolled back every time.

Since then HAProxy holds the recreate gap (a backup gap server whose refused connections are
retried, see routing/haproxy.py) and its log reader no longer counts the hold's wait as the serving
version's latency. `--routers haproxy --strategies recreate` (2026-12-06, same machine, load
average ~8): healthy v1.4.0 succeeded with 0 of 3108 requests failed (p99 2.02 s: requests held
through the gap, as the builtin router's); bad v1.3.0 rolled back, its 97 failures all its own,
0 failed after. All verdicts PASS. The bad release's rollback took 62 s, as in the run above.

With `--restarts N --reloads M` it measures controller restarts and config reloads instead of
deployments: per router, a real controller ships v1.2.0, the generator sends `--rate` req/s to the
route, and the bench alternates N restarts (SIGTERM to the controller, wait for it to exit, start a new
`python -m safeship.api.server`, wait until it answers) with M reloads (the real `safeship server
--reload` command, every other one after a harmless config change: a version added to or removed from
the service's `versions:` list), 1.5 s of load between operations. Each reload must exit 0 and each
restarted controller must be a new PID that adopted the running instances. One row per router:
requests, failed requests (5xx or no answer), and the p99 and largest latency of the answered ones
(counted from the moment each request was due, so a stall shows).
Writes bench/results/zero-downtime-restarts.md and .json (or `--json FILE` and its .md). Target: 0
failed requests.

Every process it starts (controller, router daemon, services, haproxy) is stopped by PID on the
way out, Ctrl-C included: the controller by the PID it was started with, the router daemon by its
recorded PID, the rest by the PIDs the ledger recorded and by a marker in their environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from safeship.api.client import ControllerClient  # noqa: E402
from safeship.errors import SafeshipError  # noqa: E402
from safeship.routing.remote import stop_daemon  # noqa: E402
from safeship.store import Store  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "zero_downtime.json"
RESTART_RESULTS = ROOT / "bench" / "results" / "zero-downtime-restarts.json"
BETWEEN_S = 1.5  # load flows this long between two restarts or reloads
SERVICE, ENVIRONMENT = "user-service", "production"
ROUTE = f"{ENVIRONMENT}/{SERVICE}"
FIRST, HEALTHY, BAD = "v1.2.0", "v1.4.0", "v1.3.0"
ROUTERS = ["builtin", "haproxy"]
STRATEGIES = ["canary", "blue_green", "rolling", "recreate"]
FINAL = {"succeeded", "rolled_back", "failed", "cancelled"}
MARK = "SAFESHIP_BENCH_MARK"
WARMUP_S = 2.0  # load flows this long before the first measured deployment
DEPLOY_TIMEOUT_S = 120.0  # longest one deployment may take before the bench gives up on it
RUN_LIMIT_S = 600.0  # the whole bench's target
# Load flows this long between the healthy and the bad deployment: the replaced instances drain and
# stop (grace_period 3 s), and the new version builds the record that blue-green and recreate judge against.
SETTLE_S = 4.0
AFTER_S = 5.0  # load keeps flowing this long after the last deployment ends (grace_period 3s + drain)

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
intelligent_deployment:
  strategies:
    canary: {{traffic_percentages: [25, 50, 100], step_duration: 2s, min_step_duration: 1s}}
    blue_green: {{health_check_timeout: 20s, scale_down_delay: 1s, post_switch_analysis: 2s}}
    rolling: {{max_surge: 1, max_unavailable: 0, step_analysis: 1s}}
    recreate: {{max_wait: 15s, analysis: 2s}}
  health_checks:
    liveness: {{type: http, path: /health/live, interval: 0.5s, timeout: 1s, failure_threshold: 3}}
    readiness: {{type: http, path: /health/ready, interval: 0.25s, timeout: 1s, failure_threshold: 2}}
  rollback:
    triggers:
      - {{type: health_check_failure, timeout: 10s}}
      - {{type: error_rate_threshold, threshold: 0.05, duration: 2s}}
    monitoring: {{duration: 2s, interval: 0.5s}}
    rollback_timeout: 20s
  analysis: {{interval: 0.5s, ramp_time: 3s, confirm_duration: 10s}}
environment_management:
  environments:
    - {{name: {environment}, type: production, platform: local, router: {router}{traffic}}}
services:
  {service}:
    replicas: 2
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0, v1.4.0]
    grace_period: 3s
    env: {{{mark}: "{mark_value}"}}
"""


class BenchError(Exception):
    """A run could not be measured (the controller did not start, the first version did not ship...)."""


# --- load ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # wall time the request was due (open loop: its latency counts from then)
    status: int | None  # None: no answer (refused, reset, closed, timed out)
    version: str | None  # X-Version of the answer
    latency_s: float  # from the time it was due to the end of the answer (or of the failure)
    resent: bool = False  # sent again on a new connection (see Load)


class Load:
    """A bounded open-loop HTTP/1.1 generator on raw asyncio streams, in a thread of its own.

    Requests are due at a fixed rate whatever happened to earlier ones; each is sent on an idle
    keep-alive connection or a new one (at most `max_connections`), and its latency counts from the
    moment it was due, so a stall is seen in p99 rather than hidden by a lower offered rate. A
    request whose reused keep-alive connection turns out closed before one byte of the answer came
    back is sent again once on a new connection, as HTTP clients do for idempotent requests; those
    are marked `resent`. It stops by itself after `max_s` seconds."""

    def __init__(self, port: int, *, rate: float, max_s: float, max_connections: int = 512,
                 timeout_s: float = 10.0) -> None:
        self.port, self.rate, self.max_s, self.timeout_s = port, rate, max_s, timeout_s
        self.outcomes: list[Outcome] = []
        self._max_connections = max_connections
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="zero-downtime-load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 10)

    def _run(self) -> None:
        try:
            import uvloop

            uvloop.run(self._main())
        except ImportError:
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(self._max_connections)
        pending: set[asyncio.Task[None]] = set()
        began_wall, began = time.time(), time.monotonic()
        sent = 0
        while not self._stop.is_set() and time.monotonic() - began < self.max_s:
            due = int((time.monotonic() - began) * self.rate)
            while sent < due:
                task = asyncio.create_task(self._one(sent, began_wall + sent / self.rate, began + sent / self.rate))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.001)
        if pending:
            await asyncio.wait(pending, timeout=self.timeout_s + 5)
        for _, writer in self._idle:
            writer.close()

    async def _one(self, n: int, due_wall: float, due: float) -> None:
        status: int | None = None
        version: str | None = None
        resent = [False]
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout_s):
                    status, version = await self._exchange(n, resent)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
        self.outcomes.append(Outcome(due_wall, status, version, time.monotonic() - due, resent[0]))

    async def _exchange(self, n: int, resent: list[bool]) -> tuple[int, str | None]:
        request = f"GET /users/{n % 1000} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        reused = bool(self._idle)
        reader, writer = self._idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as exc:
            writer.close()
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            resent[0] = True  # the keep-alive connection was closed under us: once more, on a new one
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        try:
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0"))
            if length:
                await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, headers.get("x-version")

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if start <= o.sent_at <= end]


def is_failure(outcome: Outcome) -> bool:
    return outcome.status is None or outcome.status >= 500


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- processes -----------------------------------------------------------------------------------


def _has_mark(pid: int, mark: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK}={mark}".encode() in environ


def _marked(mark: str) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _has_mark(int(entry.name), mark):
            found.add(int(entry.name))
    return found


class Run:
    """One controller on its own temp state dir, and everything it starts."""

    def __init__(self, router: str, *, any_port: bool = False) -> None:
        self.router = router
        self.workdir = Path(tempfile.mkdtemp(prefix="safeship-zd-"))
        self.state_dir = self.workdir / "state"
        self.config = self.workdir / "safeship.yaml"
        self.log = self.workdir / "controller.log"
        self.mark = uuid.uuid4().hex
        self.traffic = traffic_source_for(router)
        traffic = "" if self.traffic is None else f", traffic_source: {self.traffic}"
        self.config.write_text(CONFIG.format(state_dir=self.state_dir, environment=ENVIRONMENT, router=router,
                                             traffic=traffic, service=SERVICE, mark=MARK, mark_value=self.mark))
        if any_port:  # a free port, kept across restarts and reloads: another run may hold the named one
            text = self.config.read_text()
            self.config.write_text(text.replace("    grace_period: 3s\n",
                                                f"    grace_period: 3s\n    ports: {{{ENVIRONMENT}: 0}}\n"))
            assert f"ports: {{{ENVIRONMENT}: 0}}" in self.config.read_text()
        self.process: subprocess.Popen[bytes] | None = None
        self.client = ControllerClient(self.state_dir)
        self.pids: set[int] = set()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
        env[MARK] = self.mark  # inherited by whatever the controller starts itself (router daemon, haproxy)
        command = [sys.executable, "-m", "safeship.api.server", "--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = self.client.info()
            if info and info.get("pid") == self.process.pid and self.client.is_running():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise BenchError(f"the controller did not start; its log ends: {self.log_tail()}")

    def restart(self) -> tuple[int, int]:
        """SIGTERM the controller, wait for it to exit, start a new one; (old pid, new pid)."""
        assert self.process is not None
        old = self.process.pid
        self.pids |= self._ledger_pids()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the controller (pid {old}) did not exit within 30 s of SIGTERM") from None
        if self.process.returncode != 0:
            raise BenchError(f"the controller exited {self.process.returncode} on SIGTERM: {self.log_tail()}")
        self.start()
        return old, self.process.pid

    def router_pid(self) -> int | None:
        """The process that serves the route: the router daemon (builtin) or HAProxy's master."""
        if self.router == "haproxy":
            from safeship.routing.haproxy import haproxy_pid

            return haproxy_pid(self.state_dir)
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads((self.state_dir / "router.json").read_text())["pid"])
        return None

    def reload(self, change: bool) -> str:
        """`safeship server --reload`, after a harmless change to the config when `change`."""
        if change:
            text = self.config.read_text()
            widened = "versions: [v1.2.0, v1.3.0, v1.4.0, v1.5.0]"
            narrow = "versions: [v1.2.0, v1.3.0, v1.4.0]"
            self.config.write_text(text.replace(widened, narrow) if widened in text else text.replace(narrow, widened))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]))
        done = subprocess.run([sys.executable, "-m", "safeship.cli.main", "server", "--reload", "--config",
                               str(self.config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"`safeship server --reload` exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout.strip()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-1500:]
        return ""

    def deploy(self, version: str, strategy: str) -> dict[str, Any]:
        """Deploy and wait for the end; returns the controller's last view of the deployment."""
        body = {"service_name": SERVICE, "version": version, "environment": ENVIRONMENT,
                "deployment_strategy": strategy}
        created = self.client.deploy(body)
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while time.monotonic() < deadline:
            data = self.client.get(str(created["id"]))
            if data["phase"] in FINAL:
                return data
            time.sleep(0.2)
        raise BenchError(f"{strategy} deployment of {version} did not end within {DEPLOY_TIMEOUT_S:.0f}s")

    def _ledger_pids(self) -> set[int]:
        database = self.state_dir / "state.db"
        if not database.exists():
            return set()
        store = Store(f"sqlite:///{database}")
        try:
            return {pid for r in store.load_instances() if isinstance(pid := r.get("pid"), int)}
        finally:
            store.close()

    def stop(self) -> None:
        """Controller (SIGTERM, then SIGKILL), router daemon, then every process that is ours."""
        with contextlib.suppress(Exception):
            self.pids |= self._ledger_pids()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(Exception):
            stop_daemon(self.state_dir)
        with contextlib.suppress(Exception):  # HAProxy outlives the controller by design: stop it by its PID file
            from safeship.routing.haproxy import stop_haproxy

            stop_haproxy(self.state_dir, timeout=4.0)
        with contextlib.suppress(Exception):
            self.pids |= self._ledger_pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            ours = {pid for pid in self.pids | _marked(self.mark) if _has_mark(pid, self.mark)}
            for pid in ours:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while sig is signal.SIGTERM and time.monotonic() < deadline and any(_alive(p) for p in ours):
                time.sleep(0.1)
        shutil.rmtree(self.workdir, ignore_errors=True)


def traffic_source_for(router: str) -> str | None:
    """The traffic source the bench names for a router: HAProxy's own (show stat counts with
    latency from its per-request log lines) when registered; None for the platform's default."""
    from safeship.traffic import TRAFFIC_SOURCES

    return "haproxy" if router == "haproxy" and "haproxy" in TRAFFIC_SOURCES else None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


@contextlib.contextmanager
def running(router: str, *, any_port: bool = False) -> Iterator[Run]:
    run = Run(router, any_port=any_port)
    try:
        run.start()
        yield run
    finally:
        run.stop()


# --- measuring -----------------------------------------------------------------------------------


def row_for(router: str, traffic: str | None, strategy: str, release: str, version: str, record: dict[str, Any],
            load: Load, started: float, ended: float, after_until: float) -> dict[str, Any]:
    start = float(record.get("created_at") or started)
    end = float(record.get("finished_at") or ended)
    seen = load.between(start, end)
    after = [o for o in load.between(end, after_until) if o.sent_at > end]
    after_failures = [o for o in after if is_failure(o)]
    per_second = Counter(int(o.sent_at - start) for o in seen)
    whole = int(end - start)  # seconds wholly inside the window
    failures = [o for o in seen if is_failure(o)]
    answered = [o.latency_s * 1000.0 for o in seen if o.status is not None]
    p99 = percentile(answered, 0.99)
    row: dict[str, Any] = {
        "router": router, "traffic_source": traffic or "router", "strategy": strategy, "release": release,
        "version": version,
        "phase": record["phase"],
        "offered_rps": round(len(seen) / (end - start), 1) if end > start else 0.0,
        "min_second_rps": min((per_second.get(s, 0) for s in range(whole)), default=None),
        "requests": len(seen),
        "failed_requests": len(failures),
        "candidate_failed_requests": sum(1 for o in failures if o.version == version),
        "no_answer_requests": sum(1 for o in failures if o.status is None),
        "resent_requests": sum(1 for o in seen if o.resent),
        "p99_ms": None if p99 is None else round(p99, 1),
        "duration_s": round(end - start, 2),
        "time_to_rollback_s": None,
        "rollback_clock": None,
        "decided_after_s": None,
        "after_s": round(after_until - end, 2),
        "after_requests": len(after),
        "after_failed_requests": len(after_failures),
        "after_candidate_failed_requests": sum(1 for o in after_failures if o.version == version),
        "reason": record.get("reason") or "",
    }
    row["event_kinds"] = sorted({str(e["kind"]) for e in record.get("events") or []})
    expected = "succeeded" if release == "healthy" else "rolled_back"
    if record["phase"] != expected:  # the controller's own account of what happened, for the reader
        row["events"] = [{"after_s": round(float(e["at"]) - start, 2), "kind": e["kind"], "message": e["message"]}
                         for e in record.get("events") or []][-40:]
        row["controller_metrics"] = record.get("metrics")  # what the controller's traffic source counted
    if release == "bad":
        first = min((o.sent_at for o in seen if o.version == version), default=None)
        row["rollback_clock"] = "deployment_start" if first is None else "first_candidate_request"
        if record["phase"] == "rolled_back" and record.get("finished_at"):
            row["time_to_rollback_s"] = round(float(record["finished_at"]) - (first or start), 2)
        if record.get("decided_at"):
            row["decided_after_s"] = round(float(record["decided_at"]) - (first or start), 2)
    return row


def measure(router: str, strategy: str, rate: float) -> list[dict[str, Any]]:
    """Both rows (healthy, bad) of one router and strategy, on a controller of their own."""
    with running(router) as run:
        first = run.deploy(FIRST, strategy)
        if first["phase"] != "succeeded":
            raise BenchError(f"the first version {FIRST} did not ship: {first['phase']}: {first['reason']}")
        port = run.client.routes()[ROUTE]
        done: list[tuple[str, str, dict[str, Any], float, float]] = []
        with Load(port, rate=rate, max_s=2 * DEPLOY_TIMEOUT_S + 60) as load:
            time.sleep(WARMUP_S)
            for release, version in (("healthy", HEALTHY), ("bad", BAD)):
                if done:
                    time.sleep(SETTLE_S)
                started = time.time()
                record = run.deploy(version, strategy)
                done.append((release, version, record, started, time.time()))
            time.sleep(AFTER_S)  # the replaced instances drain and stop while load still flows
            stopped = time.time()
        # The generator has waited for every answer; each row also counts the failures sent after its
        # deployment ended, up to the next one's start (or the end of the load).
        rows = []
        for i, (release, version, record, started, ended) in enumerate(done):
            after_until = (done[i + 1][2].get("created_at") or done[i + 1][3]) if i + 1 < len(done) else stopped
            rows.append(row_for(router, run.traffic, strategy, release, version, record, load, started, ended,
                                float(after_until)))
        return rows


def measure_restarts(router: str, rate: float, restarts: int, reloads: int) -> dict[str, Any]:
    """One row: the route under load while the controller restarts `restarts` times and reloads its
    config `reloads` times, alternating."""
    with running(router, any_port=True) as run:
        first = run.deploy(FIRST, "canary")
        if first["phase"] != "succeeded":
            raise BenchError(f"the first version {FIRST} did not ship: {first['phase']}: {first['reason']}")
        port = run.client.routes()[ROUTE]
        instances = run._ledger_pids()
        router_pid = run.router_pid()
        operations: list[str] = []
        budget = WARMUP_S + (restarts + reloads) * (BETWEEN_S + 30) + 30
        with Load(port, rate=rate, max_s=budget) as load:
            time.sleep(WARMUP_S)
            started = time.time()
            done_restarts = done_reloads = 0
            while done_restarts < restarts or done_reloads < reloads:
                if done_restarts < restarts and (done_restarts <= done_reloads or done_reloads >= reloads):
                    old, new = run.restart()
                    done_restarts += 1
                    if run._ledger_pids() != instances:
                        raise BenchError(f"restart {done_restarts}: the instances changed (not adopted)")
                    if run.router_pid() != router_pid:
                        raise BenchError(f"restart {done_restarts}: the {router} router process changed "
                                         f"(pid {router_pid} -> {run.router_pid()}): not adopted")
                    operations.append(f"restart {done_restarts}: controller pid {old} -> {new}")
                else:
                    said = run.reload(change=done_reloads % 2 == 0)
                    done_reloads += 1
                    operations.append(f"reload {done_reloads}: {said}")
                print(operations[-1], flush=True)
                time.sleep(BETWEEN_S)
            ended = time.time()
        seen = load.between(started, ended)
        failures = [o for o in seen if is_failure(o)]
        answered = [o.latency_s * 1000.0 for o in seen if o.status is not None]
        p99 = percentile(answered, 0.99)
        return {
            "router": router, "restarts": done_restarts, "reloads": done_reloads, "rate_asked": rate,
            "requests": len(seen), "failed_requests": len(failures),
            "no_answer_requests": sum(1 for o in failures if o.status is None),
            "p99_ms": None if p99 is None else round(p99, 1),
            "max_ms": round(max(answered), 1) if answered else None, "duration_s": round(ended - started, 1),
            "offered_rps": round(len(seen) / (ended - started), 1) if ended > started else 0.0,
            "router_pid": router_pid, "router_pid_kept": run.router_pid() == router_pid,
            "operations": operations,
        }


RESTART_COLUMNS = [("router", "router"), ("restarts", "restarts"), ("reloads", "reloads"), ("requests", "requests"),
                   ("failed_requests", "failed requests"), ("offered_rps", "offered rps"),
                   ("p99_ms", "p99 ms"), ("max_ms", "max ms"), ("router_pid_kept", "router process kept"),
                   ("duration_s", "duration s")]


def restart_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table."""
    head = "| " + " | ".join(title for _, title in RESTART_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in RESTART_COLUMNS) + "|"
    body = ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k, _ in RESTART_COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def main_restarts(args: argparse.Namespace) -> int:
    out: Path = args.json if args.json != RESULTS else RESTART_RESULTS
    began = time.monotonic()
    print(f"machine: {machine()}")
    print(f"asking {args.rate:.0f} req/s; {args.restarts} restarts and {args.reloads} reloads per router")
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    skipped: list[str] = []
    for router in args.routers:
        reason = haproxy_skip_reason() if router == "haproxy" else None
        if reason is not None:
            skipped.append(f"haproxy: {reason}")
            continue
        try:
            rows.append(measure_restarts(router, args.rate, args.restarts, args.reloads))
        except KeyboardInterrupt:
            print("interrupted; every process the bench started has been stopped; no rows written")
            return 130
        except (BenchError, SafeshipError) as exc:
            errors.append(f"{router}: {exc}")
            print(f"{router}: not measured: {exc}")
    took = time.monotonic() - began
    ok = bool(rows) and not errors and all(r["failed_requests"] == 0 for r in rows)
    text = [
        "# Zero downtime through controller restarts and config reloads", "",
        f"`python bench/zero_downtime.py --restarts {args.restarts} --reloads {args.reloads} --rate {args.rate:g} "
        f"--routers {','.join(args.routers)}`", "",
        f"machine: {machine()}; took {took:.0f} s", "",
        restart_table(rows), "",
        "Requests and failures count what the open-loop generator sent to the route (127.0.0.1) from the first "
        "operation to the last; a failure is an HTTP 5xx or no answer; latencies count from the moment each "
        "request was due (open loop). A restart is SIGTERM to the controller, "
        "its exit, and a new controller that answers; a reload is `safeship server --reload` (SIGHUP), every "
        "other one after a harmless config change.", "",
    ]
    text += [f"- skipped: {s}" for s in skipped] + [f"- not measured: {e}" for e in errors]
    text.append(f"- {'PASS' if ok else 'FAIL'}: 0 failed requests on every router")
    print("\n".join(text))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "asked_rps": args.rate, "took_s": round(took, 1),
                               "skipped": skipped, "errors": errors, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print(f"rows written to {out}, the table to {out.with_suffix('.md')}")
    return 0 if ok else 1


# --- verdicts and output -------------------------------------------------------------------------


def verdicts(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    healthy = [r for r in rows if r["release"] == "healthy"]
    bad = [r for r in rows if r["release"] == "bad"]
    return [
        ("every healthy release shipped (phase succeeded)", all(r["phase"] == "succeeded" for r in healthy)),
        ("0 failed requests in every healthy row", all(r["failed_requests"] == 0 for r in healthy)),
        ("every bad release was rolled back", all(r["phase"] == "rolled_back" for r in bad)),
        ("in bad rows the only failures are ones the bad version served",
         all(r["failed_requests"] == r["candidate_failed_requests"] for r in bad)),
        ("after each deployment ended: 0 failed requests, bar ones the bad version served",
         all(r["after_failed_requests"] == 0 for r in healthy)
         and all(r["after_failed_requests"] == r["after_candidate_failed_requests"] for r in bad)),
    ]


COLUMNS = [("router", "router"), ("strategy", "strategy"), ("release", "release"), ("phase", "phase"),
           ("offered_rps", "offered rps"), ("min_second_rps", "min 1s"), ("requests", "requests"),
           ("failed_requests", "failed"), ("candidate_failed_requests", "by candidate"),
           ("p99_ms", "p99 ms"), ("duration_s", "switch s"), ("time_to_rollback_s", "rollback s"),
           ("after_failed_requests", "failed after")]


def table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    grid = [[title for _, title in COLUMNS]] + [[cell(r[key]) for key, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    lines = ["  ".join(text.ljust(w) if i < 4 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths,
                                                                                                   strict=True)))
             for line in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, load {load:.2f}"


def haproxy_skip_reason() -> str | None:
    from safeship.routing import ROUTERS as REGISTERED

    if "haproxy" not in REGISTERED:
        return "safeship.routing.ROUTERS has no 'haproxy' router registered yet"
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        return "the haproxy binary is not installed"
    return None


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where the rows go (default {RESULTS})")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second asked of the generator")
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--restarts", type=int, default=0,
                        help="measure this many controller restarts under load instead of deployments")
    parser.add_argument("--reloads", type=int, default=0,
                        help="measure this many `safeship server --reload` under load instead of deployments")
    args = parser.parse_args(argv)
    args.routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for name in args.routers:
        if name not in ROUTERS:
            parser.error(f"--routers: unknown router {name!r}; known: {', '.join(ROUTERS)}")
    for name in args.strategies:
        if name not in STRATEGIES:
            parser.error(f"--strategies: unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if not args.rate > 0:
        parser.error(f"--rate: must be above 0, not {args.rate}")
    for flag in ("restarts", "reloads"):
        if not 0 <= getattr(args, flag) <= 100:
            parser.error(f"--{flag}: must be 0 to 100, not {getattr(args, flag)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    os.chdir(ROOT)  # the service command is `python -m examples.user_service`
    if args.restarts or args.reloads:
        return main_restarts(args)
    began = time.monotonic()
    print(f"machine: {machine()}")
    print(f"asking {args.rate:.0f} req/s of the open-loop generator")
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    skipped: list[str] = []
    for router in args.routers:
        reason = haproxy_skip_reason() if router == "haproxy" else None
        if reason is not None:
            print(f"skipping router haproxy: {reason}")
            skipped.append(f"haproxy: {reason}")
            continue
        for strategy in args.strategies:
            print(f"{router} x {strategy}: ", end="", flush=True)
            try:
                got = measure(router, strategy, args.rate)
            except KeyboardInterrupt:
                print(f"\ninterrupted after {time.monotonic() - began:.0f} s; every process the bench started "
                      "has been stopped; no rows written")
                return 130
            except BenchError as exc:
                print(f"not measured: {exc}")
                errors.append(f"{router} x {strategy}: {exc}")
                continue
            rows.extend(got)
            print(", ".join(f"{r['release']} {r['phase']} {r['failed_requests']}/{r['requests']} failed" for r in got))
    took = time.monotonic() - began
    text = [f"machine: {machine()}", f"asked {args.rate:.0f} req/s; took {took:.0f} s", "", table(rows), ""]
    offered = [r["offered_rps"] for r in rows]
    if offered and min(offered) < args.rate * 0.95:
        text.append(f"note: the generator offered {min(offered)}-{max(offered)} req/s, below the "
                    f"{args.rate:.0f} asked, on this machine")
    for r in rows:
        which = f"{r['router']} x {r['strategy']} ({r['release']})"
        if "hold_unsupported" in r["event_kinds"]:
            text.append(f"note: {which}: the router cannot hold requests in the recreate gap; they are answered "
                        f"5xx ({r['failed_requests'] - r['candidate_failed_requests']} not served by the candidate)")
        if r["phase"] != ("succeeded" if r["release"] == "healthy" else "rolled_back"):
            text.append(f"note: {which} ended {r['phase']}: {r['reason']} (its events are in the JSON)")
    text += [f"skipped: {s}" for s in skipped] + [f"not measured: {e}" for e in errors]
    results = verdicts(rows)
    results.append((f"the run took under {RUN_LIMIT_S / 60:.0f} minutes", took < RUN_LIMIT_S))
    results.append(("every router x strategy asked was measured", not errors))
    text += [f"{'PASS' if ok else 'FAIL'}  {what}" for what, ok in results]
    print("\n" + "\n".join(text))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "asked_rps": args.rate, "took_s": round(took, 1),
                                     "skipped": skipped, "errors": errors, "rows": rows}, indent=2) + "\n")
    args.json.with_suffix(".txt").write_text("\n".join(text) + "\n")
    print(f"rows written to {args.json}, the table to {args.json.with_suffix('.txt')}")
    return 0 if rows and all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
