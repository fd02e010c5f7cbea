"""Router benchmark: requests per second and p50/p99 latency, direct vs builtin vs HAProxy.

    python bench/router.py [--duration 10] [--connections 64] [--rounds 3] [--light-connections 1]

Every process runs on 127.0.0.1: a small keep-alive upstream, the builtin router (its own
process, uvloop when importable) and, when installed, HAProxy with `nbthread 1`. Load comes
from `wrk` when installed, else from a built-in asyncio load generator. Each path is measured
saturated (`--connections`) for throughput and lightly loaded (`--light-connections`) for the
latency one proxy hop adds. Prints a table and the verdicts (builtin rps >= 0.5 x HAProxy;
added p99 <= 2 x HAProxy's added p99, at both load levels) and writes bench/results/router.json.
All child processes are stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

HOST = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results" / "router.json"
RPS_TARGET = 0.5  # builtin rps / haproxy rps
ADDED_P99_TARGET = 2.0  # builtin added p99 / haproxy added p99
UPSTREAM_BODY = b"Hello from the upstream!\n"
WARMUP_S = 1.0
BUSY_LOAD = 1.0  # 1-minute load average above which other work is competing for the cpus


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors and non-2xx answers


# --- child processes -------------------------------------------------------------------------


def serve_upstream() -> None:
    """A minimal HTTP/1.1 keep-alive server answering every request with a small body."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(UPSTREAM_BODY)).encode()
        + b"\r\n\r\n"
        + UPSTREAM_BODY
    )

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            # Requests are bodiless GETs: each head ends a request (pipelining included).
            data = self.pending + data
            complete = data.count(b"\r\n\r\n")
            if complete:
                self.transport.write(response * complete)
                data = data[data.rfind(b"\r\n\r\n") + 4 :]
            self.pending = data

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Answer, HOST, 0, backlog=1024)
        announce_port(server.sockets[0].getsockname()[1])
        await wait_for_termination()
        server.close()

    run(main())


def serve_router(upstream_port: int) -> None:
    from safeship.routing.base import Backend, RouteKey
    from safeship.routing.builtin import BuiltinRouter

    async def main() -> None:
        router = BuiltinRouter()
        route = RouteKey(service="bench", environment="bench")
        try:
            port = await router.add_route(route)
            await router.set_backends(route, "v1", [Backend("upstream", HOST, upstream_port)])
            await router.set_weights(route, {"v1": 100})
            announce_port(port)
            await wait_for_termination()
            counters = (await router.counters(route)).get("v1")
            if counters is not None:
                summary = {
                    "requests": counters.requests,
                    "errors": counters.errors,
                    "connect_failures": counters.connect_failures,
                }
                print("COUNTERS " + json.dumps(summary), flush=True)
        finally:
            await router.close()

    run(main())


def generate_load(url_port: int, connections: int, duration: float) -> None:
    """The fallback load generator (no wrk): closed loop, one request in flight per connection."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}:{url_port}\r\n\r\n".encode()

    async def one_connection(deadline: float, latencies: list[float]) -> int:
        errors = 0
        reader, writer = await asyncio.open_connection(HOST, url_port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                at = head.lower().find(b"content-length:")
                length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()
        return errors

    async def main() -> None:
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + duration
        errors = await asyncio.gather(
            *(one_connection(deadline, latencies) for _ in range(connections))
        )
        elapsed = time.perf_counter() - started
        latencies.sort()
        result = Measurement(
            rps=len(latencies) / elapsed,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            requests=len(latencies),
            errors=sum(errors),
        )
        print("RESULT " + json.dumps(asdict(result)), flush=True)

    run(main())


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def announce_port(port: int) -> None:
    print(f"PORT {port}", flush=True)


async def wait_for_termination() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


# --- the parent: processes ------------------------------------------------------------------


class Children:
    """Every process the benchmark starts, stopped by PID however the run ends."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **options: Any) -> subprocess.Popen[str]:
        process = subprocess.Popen(args, text=True, **options)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[str], timeout: float = 5.0) -> str:
        """Stops one process (SIGTERM, then SIGKILL) and returns what it printed."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=timeout)
        return output or ""

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(process)


def start_python_child(children: Children, *args: str) -> tuple[subprocess.Popen[str], int]:
    process = children.start(
        [sys.executable, str(Path(__file__).resolve()), *args], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = read_line(process, timeout=20.0)
    if not line.startswith("PORT "):
        raise RuntimeError(f"child {args} did not start: {line!r}")
    return process, int(line.split()[1])


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" when it does not come within `timeout`."""
    assert process.stdout is not None
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout} s")


def write_haproxy_config(backend_port: int, frontend_port: int) -> Path:
    """A temporary HAProxy config, removed when the benchmark exits."""
    config = f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend bench
    bind {HOST}:{frontend_port}
    default_backend upstream

backend upstream
    server upstream {HOST}:{backend_port}
"""
    directory = tempfile.mkdtemp(prefix="safeship-bench-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = Path(directory) / "haproxy.cfg"
    path.write_text(config)
    return path


def check_answers(port: int) -> None:
    """One request by hand, so a broken path fails loudly instead of measuring error pages."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{port}/", timeout=10) as response:
        body = response.read()
    if response.status != 200 or body != UPSTREAM_BODY:
        raise RuntimeError(f"port {port} answered {response.status} {body!r}")


# --- the parent: load ------------------------------------------------------------------------


def measure(children: Children, port: int, duration: float, connections: int) -> Measurement:
    check_answers(port)
    load(children, port, WARMUP_S, connections)
    return load(children, port, duration, connections)


def load(children: Children, port: int, duration: float, connections: int) -> Measurement:
    if shutil.which("wrk"):
        return load_with_wrk(children, port, duration, connections)
    process = children.start(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--generate-load",
            str(port),
            "--connections",
            str(connections),
            "--duration",
            str(duration),
        ],
        stdout=subprocess.PIPE,
    )
    output, _ = process.communicate(timeout=duration + 60)
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return Measurement(**json.loads(line.removeprefix("RESULT ")))
    raise RuntimeError(f"load generator printed no result: {output!r}")


def load_with_wrk(children: Children, port: int, duration: float, connections: int) -> Measurement:
    seconds = max(1, round(duration))
    process = children.start(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://{HOST}:{port}/"],
        stdout=subprocess.PIPE,
    )
    output, _ = process.communicate(timeout=seconds + 60)
    return parse_wrk(output)


_WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> Measurement:
    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {percent}% line in wrk output:\n{output}")
        return float(match.group(1)) * _WRK_UNITS_MS[match.group(2)]

    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else 0.0

    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(count) for count in socket_errors.groups()) if socket_errors else 0
    errors += int(number(r"Non-2xx or 3xx responses: (\d+)"))
    return Measurement(
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(number(r"(\d+) requests in")),
        errors=errors,
    )


# --- the parent: the run ---------------------------------------------------------------------


def run_benchmark(
    duration: float, connections: int, rounds: int, light_connections: int
) -> dict[str, Any]:
    """Measures every path in `rounds` interleaved rounds (order rotating) and keeps the median
    of each figure, so that a burst of background load hits all paths alike.

    Each round loads each path twice: saturated (`connections`) for throughput, and lightly
    (`light_connections`) for the latency one proxy hop adds. At saturation a closed-loop p99
    is mostly queueing, about connections / throughput, so it restates the rps gap."""
    load_before = os.getloadavg()[0]
    children = Children()
    paths: dict[str, int] = {}
    router_counters: dict[str, Any] | None = None
    saturated: dict[str, list[Measurement]] = {}
    light: dict[str, list[Measurement]] = {}
    try:
        paths = start_paths(children)
        for port in paths.values():
            check_answers(port)
            load(children, port, WARMUP_S, connections)
        names = list(paths)
        per_round: float = duration / rounds
        if shutil.which("wrk"):
            per_round = max(1, round(per_round))  # wrk takes whole seconds
        light_seconds = max(1.0, round(per_round / 3))
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                port = paths[name]
                saturated.setdefault(name, []).append(load(children, port, per_round, connections))
                light.setdefault(name, []).append(
                    load(children, port, light_seconds, light_connections)
                )
        router_counters = stop_router(children)
    finally:
        children.stop_all()
    summary = report(
        {name: median_of(saturated[name]) for name in paths},
        {name: median_of(light[name]) for name in paths},
        connections=connections,
        light_connections=light_connections,
    )
    summary.update(duration_s=per_round * rounds, rounds=rounds)
    summary["builtin_router_counters"] = router_counters
    summary["machine"]["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    return summary


def start_paths(children: Children) -> dict[str, int]:
    """The upstream, the builtin router in front of it and, if installed, HAProxy: name -> port."""
    _, upstream_port = start_python_child(children, "--serve-upstream")
    paths = {"direct": upstream_port}
    _, paths["builtin"] = start_python_child(
        children, "--serve-router", "--upstream-port", str(upstream_port)
    )
    haproxy = shutil.which("haproxy")
    if haproxy:
        frontend_port = free_port()
        config = write_haproxy_config(upstream_port, frontend_port)
        children.start([haproxy, "-db", "-q", "-f", str(config)])
        wait_until_listening(frontend_port)
        paths["haproxy"] = frontend_port
    return paths


def stop_router(children: Children) -> dict[str, Any] | None:
    """Stops the router child (the second process started) and returns the counters it printed."""
    for line in children.stop(children.processes[1]).splitlines():
        if line.startswith("COUNTERS "):
            counters: dict[str, Any] = json.loads(line.removeprefix("COUNTERS "))
            return counters
    return None


def median_of(measurements: list[Measurement]) -> Measurement:
    return Measurement(
        rps=statistics.median(m.rps for m in measurements),
        p50_ms=statistics.median(m.p50_ms for m in measurements),
        p99_ms=statistics.median(m.p99_ms for m in measurements),
        requests=sum(m.requests for m in measurements),
        errors=sum(m.errors for m in measurements),
    )


def report(
    saturated: dict[str, Measurement],
    light: dict[str, Measurement],
    *,
    connections: int,
    light_connections: int,
) -> dict[str, Any]:
    verdicts: dict[str, Any] = {}
    if "haproxy" in saturated:
        rps_ratio = saturated["builtin"].rps / saturated["haproxy"].rps
        verdicts = {
            "rps_ratio": round(rps_ratio, 3),
            "rps_pass": rps_ratio >= RPS_TARGET,
            "added_p99_light": added_p99(light),
            "added_p99_saturated": added_p99(saturated),
        }
    return {
        "connections": connections,
        "light_connections": light_connections,
        "load_generator": "wrk" if shutil.which("wrk") else "asyncio",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "uvloop": _has_uvloop(),
            "haproxy": _haproxy_version(),
        },
        "saturated": {name: asdict(measurement) for name, measurement in saturated.items()},
        "light": {name: asdict(measurement) for name, measurement in light.items()},
        "verdicts": verdicts,
    }


def added_p99(results: dict[str, Measurement]) -> dict[str, Any]:
    direct = results["direct"].p99_ms
    builtin_added = results["builtin"].p99_ms - direct
    haproxy_added = results["haproxy"].p99_ms - direct
    # HAProxy adding nothing measurable would make any ratio meaningless: floor it at 10 us.
    ratio = builtin_added / max(haproxy_added, 0.01)
    return {
        "builtin_ms": round(builtin_added, 3),
        "haproxy_ms": round(haproxy_added, 3),
        "ratio": round(ratio, 3),
        "pass": ratio <= ADDED_P99_TARGET,
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nrouter benchmark: {summary['duration_s']} s per path in {summary['rounds']} interleaved"
        f" rounds (medians shown), load by {summary['load_generator']},"
        f" {summary['machine']['cpus']} cpus"
    )
    print(f"\n{'path':<10}{'load':>14}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for level, count in (("saturated", "connections"), ("light", "light_connections")):
        for name, row in summary[level].items():
            load_label = f"{summary[count]} conn"
            print(
                f"{name:<10}{load_label:>14}{row['rps']:>10.0f}{row['p50_ms']:>9.3f}"
                f"{row['p99_ms']:>9.3f}{row['errors']:>8}"
            )
    if summary["machine"]["load_average_1m"]["before"] > BUSY_LOAD:
        print(
            f"\nwarning: load average was {summary['machine']['load_average_1m']['before']:.1f}"
            " before the run: other work shares the cpus and skews tails; rerun when idle"
        )
    verdicts = summary["verdicts"]
    if not verdicts:
        print("\nhaproxy is not installed: no comparison (apt-get install haproxy)")
        return
    print(
        f"\nbuiltin rps / haproxy rps = {verdicts['rps_ratio']:.2f}"
        f"  (target >= {RPS_TARGET})  {_verdict(verdicts['rps_pass'])}"
    )
    for level, count in (("light", "light_connections"), ("saturated", "connections")):
        added = verdicts[f"added_p99_{level}"]
        print(
            f"added p99, {level} ({summary[count]} conn): builtin {added['builtin_ms']:.3f} ms vs"
            f" haproxy {added['haproxy_ms']:.3f} ms = {added['ratio']:.2f}x"
            f"  (target <= {ADDED_P99_TARGET}x)  {_verdict(added['pass'])}"
        )


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _haproxy_version() -> str | None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        return None
    output = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=10).stdout
    return output.splitlines()[0] if output else None


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path")
    parser.add_argument(
        "--light-connections",
        type=int,
        default=1,
        help="connections for the light-load latency run (default 1)",
    )
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-router", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate-load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_upstream:
        serve_upstream()
        return 0
    if args.serve_router:
        serve_router(args.upstream_port)
        return 0
    if args.generate_load:
        generate_load(args.generate_load, args.connections, args.duration)
        return 0
    if not (
        0 < args.duration <= 600
        and 0 < args.connections <= 2000
        and 0 < args.rounds <= 20
        and 0 < args.light_connections <= args.connections
    ):
        parser.error(
            "--duration must be in (0, 600], --connections in (0, 2000], --rounds in (0, 20],"
            " --light-connections in (0, --connections]"
        )

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    summary = run_benchmark(args.duration, args.connections, args.rounds, args.light_connections)
    print_table(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
