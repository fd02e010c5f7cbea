"""user-service: a small, fast HTTP/1.1 service for safeship's demos and live tests.

Each version behaves as examples/user_service/releases.yaml says (error rate, latency, readiness,
crashes, gauges), so a deployment of v1.3.0 really does fail 8% of requests. Raw asyncio streams
with keep-alive and asyncio.sleep for latency keep thousands of requests a second cheap on one
core. It imports nothing from safeship: it stands for any user's service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICE = "user-service"
DEFAULT_RELEASES = Path(__file__).with_name("releases.yaml")
RELEASE_FIELDS = {
    "error_rate",
    "latency_ms",
    "tail",
    "ready",
    "ready_after_s",
    "crash_after_s",
    "gauges",
}
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
Z99 = 2.3263  # standard normal quantile at 0.99
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
IDLE_TIMEOUT_S = 60.0  # keep-alive connections idle longer than this are closed
SHUTDOWN_DRAIN_S = 20.0  # longest SIGTERM waits for in-flight requests
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ReleaseError(Exception):
    """The releases file is wrong or does not know the version (exit 2)."""


@dataclass(frozen=True)
class Release:
    version: str
    error_rate: float = 0.0
    p50_ms: float = 3.0
    p99_ms: float = 5.0
    tail_fraction: float = 0.0
    tail_ms: float = 0.0
    ready: bool = True
    ready_after_s: float = 0.0
    crash_after_s: float | None = None
    gauges: Mapping[str, float] = field(default_factory=dict)


def load_release(path: Path, version: str) -> Release:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReleaseError(f"{path}: cannot read releases: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("releases"), dict):
        raise ReleaseError(f"{path}: expected a mapping with a 'releases:' mapping")
    releases: dict[str, object] = document["releases"]
    if version not in releases:
        known = ", ".join(sorted(releases))
        raise ReleaseError(f"{path}: unknown version {version!r}; known: {known}")
    merged = {**_fields(path, "defaults", document.get("defaults") or {})}
    merged.update(_fields(path, f"releases.{version}", releases[version] or {}))
    try:
        return _release(version, merged)
    except (TypeError, ValueError, KeyError) as exc:
        raise ReleaseError(f"{path}: releases.{version}: {exc}") from exc


def _fields(path: Path, where: str, raw: object) -> dict[str, object]:
    if not isinstance(raw, dict):
        raise ReleaseError(f"{path}: {where}: expected a mapping")
    unknown = sorted(set(raw) - RELEASE_FIELDS)
    if unknown:
        raise ReleaseError(f"{path}: {where}: unknown field {unknown[0]!r}")
    return dict(raw)


def _release(version: str, raw: Mapping[str, object]) -> Release:
    latency = _mapping(raw.get("latency_ms") or {"p50": 3.0, "p99": 5.0})
    tail = _mapping(raw.get("tail") or {"fraction": 0.0, "latency_ms": 0.0})
    crash = raw.get("crash_after_s")
    release = Release(
        version=version,
        error_rate=_number(raw.get("error_rate", 0.0)),
        p50_ms=_number(latency["p50"]),
        p99_ms=_number(latency["p99"]),
        tail_fraction=_number(tail["fraction"]),
        tail_ms=_number(tail["latency_ms"]),
        ready=bool(raw.get("ready", True)),
        ready_after_s=_number(raw.get("ready_after_s") or 0.0),
        crash_after_s=None if crash is None else _number(crash),
        gauges={str(k): _number(v) for k, v in _mapping(raw.get("gauges") or {}).items()},
    )
    if not 0.0 <= release.error_rate <= 1.0 or not 0.0 <= release.tail_fraction <= 1.0:
        raise ValueError("error_rate and tail.fraction must be within 0..1")
    if release.p50_ms < 0 or release.p99_ms < release.p50_ms:
        raise ValueError("latency_ms needs 0 <= p50 <= p99")
    return release


def _mapping(value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


class Behaviour:
    """Draws each request's fate from the release: how long it takes and whether it fails."""

    def __init__(self, release: Release, rng: random.Random) -> None:
        self.release = release
        self._rng = rng
        self._mu = math.log(release.p50_ms) if release.p50_ms > 0 else 0.0
        ratio = release.p99_ms / release.p50_ms if release.p50_ms > 0 else 1.0
        self._sigma = math.log(ratio) / Z99 if ratio > 1 else 0.0

    def latency_s(self) -> float:
        if self.release.tail_fraction and self._rng.random() < self.release.tail_fraction:
            return self.release.tail_ms / 1000.0
        if self.release.p50_ms <= 0:
            return 0.0
        return self._rng.lognormvariate(self._mu, self._sigma) / 1000.0

    def fails(self) -> bool:
        return self._rng.random() < self.release.error_rate


@dataclass
class Stats:
    requests: int = 0
    errors: int = 0
    duration_sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_S))

    def observe(self, seconds: float, *, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.duration_sum_s += seconds
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                self.buckets[i] += 1


class UserService:
    def __init__(self, release: Release, *, instance: str, seed: int | None = None) -> None:
        self.release = release
        self.instance = instance
        self.behaviour = Behaviour(release, random.Random(seed))
        self.stats = Stats()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.closing = False
        self._connections: dict[asyncio.StreamWriter, bool] = {}  # writer -> busy

    # ---------------------------------------------------------------- HTTP

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections[writer] = False
        try:
            while not self.closing and await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or idled out: nothing to answer
        finally:
            self._connections.pop(writer, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True to keep the connection open for the next."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._write(writer, 431, b"request head too large\n", keep=False, head_only=False)
            return False
        self._connections[writer] = True
        try:
            request = _parse_head(head)
            if request is None:
                await self._write(writer, 400, b"bad request\n", keep=False, head_only=False)
                return False
            method, path, keep = request
            length = request_length(head)
            if length:
                await reader.readexactly(min(length, MAX_BODY))
            status, body, content_type = await self.route(path)
            keep = keep and not self.closing
            await self._write(
                writer,
                status,
                body,
                keep=keep,
                head_only=method == "HEAD",
                content_type=content_type,
            )
            return keep
        finally:
            self._connections[writer] = False

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep: bool,
        head_only: bool,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"X-Version: {self.release.version}\r\nX-Instance: {self.instance}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") if head_only else head.encode("latin-1") + body)
        await writer.drain()

    async def route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/health/live":
            return 200, b"ok\n", "text/plain; charset=utf-8"
        if path == "/health/ready":
            return (
                (200, b"ready\n", "text/plain; charset=utf-8")
                if self.ready()
                else (503, b"not ready\n", "text/plain; charset=utf-8")
            )
        if path == "/metrics":
            return 200, self.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/" or path.startswith("/users"):
            return await self.serve_user_request(path)
        return 404, b"not found\n", "text/plain; charset=utf-8"

    async def serve_user_request(self, path: str) -> tuple[int, bytes, str]:
        began = time.perf_counter()
        await asyncio.sleep(self.behaviour.latency_s())
        failed = self.behaviour.fails()
        self.stats.observe(time.perf_counter() - began, failed=failed)
        document: dict[str, object] = {
            "service": SERVICE,
            "version": self.release.version,
            "instance": self.instance,
            "pid": os.getpid(),
            "path": path,
        }
        if failed:
            document["error"] = "injected failure"
        return 500 if failed else 200, json.dumps(document).encode() + b"\n", "application/json"

    def ready(self) -> bool:
        up_for = time.monotonic() - self.started
        return self.release.ready and up_for >= self.release.ready_after_s

    def metrics(self) -> str:
        label = f'version="{self.release.version}"'
        lines = [
            "# HELP requests_total Requests served on application routes.",
            "# TYPE requests_total counter",
            f"requests_total{{{label}}} {self.stats.requests}",
            "# HELP errors_total Application requests answered with HTTP 5xx.",
            "# TYPE errors_total counter",
            f"errors_total{{{label}}} {self.stats.errors}",
            "# HELP request_duration_seconds Time to serve application requests.",
            "# TYPE request_duration_seconds histogram",
        ]
        for bound, count in zip(BUCKETS_S, self.stats.buckets, strict=True):
            lines.append(f'request_duration_seconds_bucket{{{label},le="{bound}"}} {count}')
        lines += [
            f'request_duration_seconds_bucket{{{label},le="+Inf"}} {self.stats.requests}',
            f"request_duration_seconds_sum{{{label}}} {self.stats.duration_sum_s:.6f}",
            f"request_duration_seconds_count{{{label}}} {self.stats.requests}",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started_wall:.3f}",
        ]
        for name, value in sorted(self.release.gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name}{{{label}}} {value:g}"]
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- shutdown

    async def drain(self, timeout: float) -> None:
        """Close idle keep-alive connections now; give busy ones up to `timeout` to finish."""
        self.closing = True
        deadline = time.monotonic() + timeout
        while self._connections and time.monotonic() < deadline:
            for writer, busy in list(self._connections.items()):
                if not busy:
                    writer.close()
            await asyncio.sleep(0.02)


def _parse_head(head: bytes) -> tuple[str, str, bool] | None:
    """(method, path without query, keep-alive) or None when it is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    connection = _header(lines, "connection").lower()
    keep = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return method, target.split("?", 1)[0], keep


def request_length(head: bytes) -> int:
    value = _header(head.decode("latin-1").split("\r\n"), "content-length")
    return int(value) if value.isdigit() else 0


def _header(lines: Sequence[str], name: str) -> str:
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""


# -------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.user_service", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True, help="a release listed in the releases file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--releases", type=Path, default=DEFAULT_RELEASES)
    parser.add_argument("--seed", type=int, default=None, help="seed the error/latency draws")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, release: Release) -> int:
    instance = os.environ.get("SAFESHIP_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"
    service = UserService(release, instance=instance, seed=args.seed)
    try:
        server = await asyncio.start_server(service.handle, args.host, args.port, limit=MAX_HEAD)
    except OSError as exc:
        print(
            f"{SERVICE}: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if release.crash_after_s is not None:
        loop.call_later(release.crash_after_s, _crash, release.crash_after_s)
    print(
        f"{SERVICE} {release.version} listening on {args.host}:{args.port} pid {os.getpid()}",
        flush=True,
    )
    await stop.wait()
    print(f"{SERVICE}: SIGTERM: draining in-flight requests", flush=True)
    server.close()  # stop accepting first, so the drain below only ever shrinks
    await service.drain(SHUTDOWN_DRAIN_S)
    print(f"{SERVICE}: stopped after {service.stats.requests} requests", flush=True)
    return 0


def _crash(after_s: float) -> None:
    print(
        f"{SERVICE}: crashing after {after_s:g}s as releases.yaml says", file=sys.stderr, flush=True
    )
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        release = load_release(args.releases, args.version)
    except ReleaseError as exc:
        print(f"{SERVICE}: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args, release))
    return uvloop.run(serve(args, release))
