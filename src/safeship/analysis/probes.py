"""Health probes: one HTTP GET, TCP connect or command run per call, and the threshold bookkeeping.

`probe()` does I/O only; it knows nothing about platforms. The local platform is handed this
function by the controller (platforms sit below analysis and must not import it). Probes run many
times a second across a fleet, so the HTTP probe speaks just enough HTTP/1.1 over a raw asyncio
connection instead of building a client per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safeship.platforms.base import ProbeSpec

_MAX_BODY_BYTES = 64 * 1024  # probes read the response only to let the server finish cleanly
_DETAIL_CHARS = 160


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # one line: "HTTP 200", "connection refused", "timed out after 1.0s", ...
    latency_ms: float


async def probe(
    spec: ProbeSpec, *, host: str, port: int, env: Mapping[str, str] | None = None
) -> ProbeResult:
    """Run one probe of `spec.kind` against host:port; never raises for a failing target."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            ok, detail = await _run(spec, host=host, port=port, env=env)
    except TimeoutError:
        ok, detail = False, f"timed out after {spec.timeout:g}s"
    except OSError as exc:
        ok, detail = False, _describe_os_error(exc)
    return ProbeResult(ok=ok, detail=detail, latency_ms=(time.perf_counter() - started) * 1000.0)


async def _run(
    spec: ProbeSpec, *, host: str, port: int, env: Mapping[str, str] | None
) -> tuple[bool, str]:
    if spec.kind == "http":
        path = spec.path if spec.path.startswith("/") else f"/{spec.path}"
        return await _http(host, port, path)
    if spec.kind == "tcp":
        return await _tcp(host, port)
    if spec.kind == "exec":
        return await _exec(spec.command, host=host, port=port, env=env, uid=spec.uid, gid=spec.gid)
    return False, f"unknown probe kind {spec.kind!r} (known: http, tcp, exec)"


async def _tcp(host: str, port: int) -> tuple[bool, str]:
    _reader, writer = await asyncio.open_connection(host, port)
    await _close(writer)
    return True, "connected"


async def _http(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: safeship-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
        status = _parse_status(status_line)
        if status is None:
            shown = status_line[:60].decode("latin-1", "replace").strip()
            return False, f"bad HTTP response {shown!r}" if shown else "connection closed"
        await _drain_body(reader)
    finally:
        await _close(writer)
    # Kubernetes counts any 2xx or 3xx as healthy (redirects are not followed).
    return 200 <= status < 400, f"HTTP {status}"


def _parse_status(line: bytes) -> int | None:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


async def _drain_body(reader: asyncio.StreamReader) -> None:
    """Read the body, at most _MAX_BODY_BYTES of it, within the probe's timeout: a server that
    sends its status and then drips the body forever is not healthy (Kubernetes reads up to 10 KB
    of it under the same timeout). A body of a known length (Content-Length) or in chunks is read
    to its end or to the bound; one delimited only by the end of the connection is not waited
    for, so a server that ignores Connection: close does not turn a 200 into a timeout."""
    length, chunked = 0, False
    for _ in range(100):  # header lines
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    with contextlib.suppress(asyncio.IncompleteReadError):
        if chunked:
            await _drain_chunks(reader)
        elif length > 0:
            await reader.readexactly(min(length, _MAX_BODY_BYTES))


async def _drain_chunks(reader: asyncio.StreamReader) -> None:
    read = 0
    while read < _MAX_BODY_BYTES:
        size_line = await reader.readline()
        if not size_line:
            return
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            return
        if size == 0:
            return
        take = min(size + 2, _MAX_BODY_BYTES - read)  # the chunk and its CRLF
        await reader.readexactly(take)
        read += take


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _exec(
    command: tuple[str, ...], *, host: str, port: int, env: Mapping[str, str] | None,
    uid: int | None = None, gid: int | None = None,
) -> tuple[bool, str]:
    if not command:
        return False, "exec probe has no command"
    # {host} and {port} aim the command at the instance it checks (a container has localhost).
    argv = [arg.replace("{host}", host).replace("{port}", str(port)) for arg in command]
    # The platform's run_as_user: the probe runs as the instance it checks does, never as root.
    identity: dict[str, Any] = {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        start_new_session=True,  # so a timeout kills the command's children too
        **identity,
    )
    try:
        output, _ = await proc.communicate()
    except BaseException:
        await _kill_group(proc)
        raise
    code = proc.returncode
    first_line = output.decode("utf-8", "replace").strip().splitlines()[:1]
    tail = f": {first_line[0][:_DETAIL_CHARS]}" if first_line else ""
    return code == 0, f"exit code {code}{tail}"


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Reap it, shielded so a cancelled caller still leaves no zombie behind.
    with contextlib.suppress(asyncio.CancelledError, ProcessLookupError):
        await asyncio.shield(proc.wait())


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename}"
    return (exc.strerror or str(exc) or type(exc).__name__)[:_DETAIL_CHARS]


class ProbeTracker:
    """Consecutive-result bookkeeping with Kubernetes semantics.

    The verdict flips to failing only after `failure_threshold` failures in a row and back to
    passing only after `success_threshold` successes in a row. Readiness starts failing (nothing
    gets traffic before it proves itself); liveness starts passing (a slow starter is not killed
    for having said nothing yet).
    """

    def __init__(
        self, *, failure_threshold: int = 3, success_threshold: int = 1, passing: bool = False
    ) -> None:
        if failure_threshold < 1 or success_threshold < 1:
            raise ValueError(
                f"thresholds must be >= 1, got failure_threshold={failure_threshold}, "
                f"success_threshold={success_threshold}"
            )
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.passing = passing
        self.consecutive_successes = 0
        self.consecutive_failures = 0

    @classmethod
    def for_spec(cls, spec: ProbeSpec, *, passing: bool = False) -> ProbeTracker:
        return cls(
            failure_threshold=spec.failure_threshold,
            success_threshold=spec.success_threshold,
            passing=passing,
        )

    def observe(self, ok: bool) -> bool:
        """Fold in one result; True when the verdict (`passing`) changed."""
        if ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            flips = not self.passing and self.consecutive_successes >= self.success_threshold
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            flips = self.passing and self.consecutive_failures >= self.failure_threshold
        if flips:
            self.passing = not self.passing
        return flips
