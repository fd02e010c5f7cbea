"""examples/user_service as a real process on loopback: routes, per-version behaviour, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.live

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]

Launch = Callable[..., tuple[subprocess.Popen[bytes], int]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts user_service processes; every one is killed (whole group) when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(version: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        argv = [sys.executable, "-m", "examples.user_service", "--port", str(port)]
        with open(tmp_path / f"{version}-{len(started)}.log", "wb") as out:
            proc = subprocess.Popen(
                [*argv, "--version", version, *extra],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc, port

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(150):  # up to ~30 s on a slow machine
            assert proc.poll() is None, f"service exited with {proc.returncode}"
            try:
                await client.get(f"http://{HOST}:{port}/health/live", timeout=1.0)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.2)
    raise AssertionError(f"service on port {port} never answered")


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    for _ in range(int(timeout / 0.1)):
        code = proc.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.1)
    raise AssertionError("process did not exit")


async def test_serves_version_health_and_metrics(launch: Launch) -> None:
    proc, port = launch("v1.2.0")
    await wait_listening(port, proc)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
        home = await client.get("/")
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        missing = await client.get("/nope")
        metrics = await client.get("/metrics")
    assert home.status_code == 200
    body = home.json()
    assert body["version"] == "v1.2.0" and body["pid"] == proc.pid
    assert home.headers["x-version"] == "v1.2.0"
    assert (live.status_code, ready.status_code, missing.status_code) == (200, 200, 404)
    text = metrics.text
    assert 'requests_total{version="v1.2.0"} 1' in text
    assert 'errors_total{version="v1.2.0"} 0' in text
    assert 'memory_pressure{version="v1.2.0"} 0.3' in text


async def test_keep_alive_serves_several_requests_on_one_connection(launch: Launch) -> None:
    proc, port = launch("v1.4.0")
    await wait_listening(port, proc)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        for _ in range(3):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            payload = json.loads(await reader.readexactly(length))
            assert payload["version"] == "v1.4.0"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_error_rate_release_fails_some_requests(launch: Launch) -> None:
    proc, port = launch("v1.3.0", "--seed", "3")
    await wait_listening(port, proc)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
        codes = [(await client.get("/")).status_code for _ in range(300)]
        metrics = (await client.get("/metrics")).text
    failures = codes.count(500)
    assert 1 <= failures <= 60  # 8% of 300 is 24
    assert set(codes) <= {200, 500}
    assert f'errors_total{{version="v1.3.0"}} {failures}' in metrics


async def test_tail_release_has_slow_requests(launch: Launch) -> None:
    proc, port = launch("v1.6.0", "--seed", "5")
    await wait_listening(port, proc)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
        for _ in range(400):
            assert (await client.get("/")).status_code == 200
        metrics = (await client.get("/metrics")).text
    # Slow requests sleep 15 ms, so they land above the 10 ms bucket whatever the machine speed.
    under_10ms = int(metrics.split('le="0.01"} ')[1].split("\n")[0])
    assert under_10ms < 400


async def test_never_ready_release(launch: Launch) -> None:
    proc, port = launch("v1.5.0")
    await wait_listening(port, proc)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
        assert (await client.get("/health/live")).status_code == 200
        for _ in range(3):
            assert (await client.get("/health/ready")).status_code == 503
            await asyncio.sleep(0.2)


async def test_unknown_version_exits_2_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.user_service", "--port", "1", "--version", "v9.9.9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown version 'v9.9.9'" in result.stderr and "v1.2.0" in result.stderr


async def test_sigterm_finishes_in_flight_requests_then_exits_0(
    launch: Launch, tmp_path: Path
) -> None:
    releases = tmp_path / "slow.yaml"
    releases.write_text("releases:\n  slow:\n    latency_ms: {p50: 1500, p99: 1500}\n")
    proc, port = launch("slow", "--releases", str(releases))
    await wait_listening(port, proc)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        in_flight = asyncio.create_task(client.get("/"))
        await asyncio.sleep(0.5)  # the request is now sleeping inside the service
        proc.send_signal(signal.SIGTERM)
        response = await in_flight
    assert response.status_code == 200
    assert await wait_exit(proc) == 0
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://{HOST}:{port}/", timeout=2)


async def test_crash_after_and_bad_releases_file(launch: Launch, tmp_path: Path) -> None:
    releases = tmp_path / "crashy.yaml"
    releases.write_text("releases:\n  crashy:\n    crash_after_s: 0.5\n  typo:\n    eror_rate: 1\n")
    proc, _port = launch("crashy", "--releases", str(releases))
    assert await wait_exit(proc) == 1
    typo, _ = launch("typo", "--releases", str(releases))
    assert await wait_exit(typo) == 2
