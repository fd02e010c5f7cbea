"""A bounded open-loop HTTP load generator for loopback targets (the demo and the live tests).

Requests leave at a fixed rate whether or not earlier ones answered, so a held or slow request never
lowers the offered load. It stops by itself after `max_s` seconds and refuses non-loopback hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import threading
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # wall time
    status: int | None  # None: no answer (connection refused, reset, timeout)
    version: str | None  # the version that answered, from the X-Version header or the body


class LoadGenerator:
    def __init__(self, host: str, port: int, *, rate: float = 100.0, max_s: float = 300.0,
                 max_outstanding: int = 256, path: str = "/users/{n}",
                 tls: ssl.SSLContext | None = None) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"load is only ever sent to loopback, not {host}")
        # `tls`: https, verified with this context (a route that terminates TLS)
        self.url = f"{'https' if tls is not None else 'http'}://{host}:{port}{path}"
        self.tls = tls
        self.rate, self.max_s, self.max_outstanding = rate, max_s, max_outstanding
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> LoadGenerator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.max_outstanding, max_keepalive_connections=64)
        verify: ssl.SSLContext | bool = self.tls if self.tls is not None else True
        async with httpx.AsyncClient(timeout=10.0, limits=limits, verify=verify) as http:
            pending: set[asyncio.Task[None]] = set()
            started, sent = time.monotonic(), 0
            while not self._stop.is_set() and time.monotonic() - started < self.max_s:
                due = int((time.monotonic() - started) * self.rate)
                while sent < due and len(pending) < self.max_outstanding:
                    task = asyncio.create_task(self._one(http, sent))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.002)
            if pending:
                await asyncio.wait(pending, timeout=15)

    async def _one(self, http: httpx.AsyncClient, n: int) -> None:
        at = time.time()
        status: int | None = None
        version: str | None = None
        try:
            response = await http.get(self.url.format(n=n % 1000))
            status = response.status_code
            version = response.headers.get("x-version")
            if version is None and response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
                version = body.get("version") if isinstance(body, dict) else None
        except (httpx.HTTPError, ValueError):
            pass
        self.outcomes.append(Outcome(at, status, version))

    def window(self, start: float, end: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if start <= o.sent_at <= end]


def failed(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status is None or o.status >= 500)
