"""The operator's small HTTP endpoint (the Deployment's probes and Prometheus' scrape):

    GET /healthz   200 {"ok": true, "leader": ..., "releases": N} while the loops run, 503 once they stopped
    GET /metrics   Prometheus text: whether this instance leads, Releases known, and the counters of
                   lists, watch events, bookmarks, 410s, status writes and refusals, ticks, deployments

Anything else is 404. One request per connection; a request line or header longer than 8 KiB, or
slower than 5 s, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from safeship.operator.runner import Operator

_LIMIT = 8192
_TIMEOUT_S = 5.0


def metrics_text(operator: Operator) -> str:
    lines = [
        "# HELP safeship_operator_leader 1 when this instance holds the Lease and reconciles.",
        "# TYPE safeship_operator_leader gauge",
        f"safeship_operator_leader {1 if operator.elector.is_leader() else 0}",
        "# HELP safeship_operator_releases Releases this instance knows (watched).",
        "# TYPE safeship_operator_releases gauge",
        f"safeship_operator_releases {len(operator.releases)}",
    ]
    for name, value in sorted(operator.stats.items()):
        lines += [f"# TYPE safeship_operator_{name}_total counter", f"safeship_operator_{name}_total {value}"]
    return "\n".join(lines) + "\n"


async def _answer(operator: Operator, running: Any, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
    status, kind, body = 404, "text/plain", b"not found\n"
    if method == "GET" and path == "/healthz":
        alive = bool(running())
        status = 200 if alive else 503
        kind = "application/json"
        body = json.dumps({"ok": alive, "leader": operator.elector.is_leader(),
                           "identity": operator.elector.identity, "releases": len(operator.releases)}).encode()
    elif method == "GET" and path == "/metrics":
        status, kind, body = 200, "text/plain; version=0.0.4", metrics_text(operator).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def serve_health(operator: Operator, host: str, port: int, running: Any) -> asyncio.Server:
    """Listen on host:port; `running()` says whether the operator's loops still run."""
    return await asyncio.start_server(lambda r, w: _answer(operator, running, r, w), host, port, limit=_LIMIT)
