"""Probes: the threshold bookkeeping as tables, and each kind against real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from safeship.analysis.probes import ProbeResult, ProbeTracker, probe
from safeship.platforms.base import ProbeSpec

HOST = "127.0.0.1"


# ---------------------------------------------------------------- ProbeTracker


@pytest.mark.parametrize(
    ("failure_threshold", "success_threshold", "passing", "results", "verdicts"),
    [
        # readiness: starts failing, one success makes it pass
        (3, 1, False, [True], [True]),
        # needs two successes in a row; a failure in between resets the count
        (3, 2, False, [True, False, True, True], [False, False, False, True]),
        # liveness: starts passing, only the third failure in a row flips it
        (3, 1, True, [False, False, False], [True, True, False]),
        # a success between failures resets the failure count
        (3, 1, True, [False, False, True, False, False, False], [True] * 5 + [False]),
        # back to passing after success_threshold successes
        (1, 2, True, [False, True, True], [False, False, True]),
    ],
)
def test_tracker_applies_thresholds(
    failure_threshold: int,
    success_threshold: int,
    passing: bool,
    results: list[bool],
    verdicts: list[bool],
) -> None:
    tracker = ProbeTracker(
        failure_threshold=failure_threshold, success_threshold=success_threshold, passing=passing
    )
    seen = []
    for ok in results:
        tracker.observe(ok)
        seen.append(tracker.passing)
    assert seen == verdicts


def test_tracker_reports_only_changes() -> None:
    tracker = ProbeTracker(failure_threshold=2, success_threshold=1, passing=False)
    assert [tracker.observe(ok) for ok in (False, True, True, False, False, False)] == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    assert tracker.consecutive_failures == 3
    assert tracker.consecutive_successes == 0


def test_tracker_from_spec_and_bad_thresholds() -> None:
    tracker = ProbeTracker.for_spec(ProbeSpec(failure_threshold=5, success_threshold=2))
    assert (tracker.failure_threshold, tracker.success_threshold, tracker.passing) == (5, 2, False)
    with pytest.raises(ValueError, match="thresholds"):
        ProbeTracker(failure_threshold=0)


# ---------------------------------------------------------------- real sockets

Responder = Callable[[bytes], bytes | None]  # request head -> raw response (None: never answer)


@contextlib.asynccontextmanager
async def serving(respond: Responder) -> AsyncIterator[int]:
    """A throwaway loopback server; yields its port and closes everything on exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            answer = respond(head)
            if answer is None:
                await asyncio.sleep(30)
            else:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def status(code: int) -> Responder:
    def respond(_head: bytes) -> bytes:
        body = b"hello"
        return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (code, len(body), body)

    return respond


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("code", "ok"), [(200, True), (204, True), (302, True), (404, False), (503, False)]
)
async def test_http_probe_judges_status(code: int, ok: bool) -> None:
    async with serving(status(code)) as port:
        result = await probe(ProbeSpec(kind="http", path="/health/ready", timeout=10.0), host=HOST, port=port)
    assert isinstance(result, ProbeResult)
    assert result.ok is ok
    assert result.detail == f"HTTP {code}"
    assert result.latency_ms >= 0


async def test_http_probe_sends_path_and_host() -> None:
    heads: list[bytes] = []

    def respond(head: bytes) -> bytes:
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async with serving(respond) as port:
        result = await probe(ProbeSpec(kind="http", path="/health/live"), host=HOST, port=port)
    assert result.ok
    assert heads[0].startswith(b"GET /health/live HTTP/1.1\r\n")
    assert f"Host: {HOST}:{port}".encode() in heads[0]


async def test_http_probe_does_not_wait_for_eof_from_a_keep_alive_server() -> None:
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        held.append(writer)  # answered, but the connection stays open

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await probe(ProbeSpec(kind="http", timeout=5.0), host=HOST, port=port)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert result.ok and result.detail == "HTTP 200"


async def test_http_probe_times_out() -> None:
    async with serving(lambda _head: None) as port:
        result = await probe(ProbeSpec(kind="http", timeout=0.3), host=HOST, port=port)
    assert not result.ok
    assert "timed out" in result.detail


async def test_http_probe_rejects_garbage_and_refusal() -> None:
    async with serving(lambda _head: b"SSH-2.0-nope\r\n") as port:
        garbage = await probe(ProbeSpec(kind="http", timeout=10.0), host=HOST, port=port)
    refused = await probe(ProbeSpec(kind="http", timeout=10.0), host=HOST, port=closed_port())
    assert not garbage.ok and "bad HTTP response" in garbage.detail
    assert not refused.ok and refused.detail == "connection refused"


async def test_tcp_probe() -> None:
    async with serving(status(200)) as port:
        up = await probe(ProbeSpec(kind="tcp"), host=HOST, port=port)
    down = await probe(ProbeSpec(kind="tcp"), host=HOST, port=closed_port())
    assert up.ok and up.detail == "connected"
    assert not down.ok


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def test_exec_probe_exit_codes() -> None:
    ok = await probe(ProbeSpec(kind="exec", command=python("pass"), timeout=30.0), host=HOST, port=1)
    bad = await probe(
        ProbeSpec(kind="exec", command=python("print('disk full'); raise SystemExit(3)"), timeout=30.0),
        host=HOST,
        port=1,
    )
    assert ok.ok and ok.detail == "exit code 0"
    assert not bad.ok and bad.detail == "exit code 3: disk full"


async def test_exec_probe_gets_env_and_port() -> None:
    code = (
        "import os, sys; "
        "sys.exit(0 if os.environ['PROBE_ME'] == 'yes' and sys.argv[1] == '4242' else 1)"
    )
    spec = ProbeSpec(kind="exec", command=(sys.executable, "-c", code, "{port}"), timeout=30.0)
    result = await probe(spec, host=HOST, port=4242, env={"PROBE_ME": "yes"})
    assert result.ok, result.detail


async def test_exec_probe_killed_on_timeout() -> None:
    spec = ProbeSpec(kind="exec", command=python("import time; time.sleep(30)"), timeout=0.5)
    result = await probe(spec, host=HOST, port=1)
    assert not result.ok
    assert "timed out" in result.detail
    assert result.latency_ms < 20_000  # it was killed, not waited out


async def test_exec_probe_missing_command_and_unknown_kind() -> None:
    missing = await probe(
        ProbeSpec(kind="exec", command=("/nonexistent/safeship-probe",)), host=HOST, port=1
    )
    unknown = await probe(ProbeSpec(kind="grpc"), host=HOST, port=1)
    empty = await probe(ProbeSpec(kind="exec"), host=HOST, port=1)
    assert not missing.ok and "not found" in missing.detail
    assert not unknown.ok and "unknown probe kind" in unknown.detail
    assert not empty.ok and "no command" in empty.detail
