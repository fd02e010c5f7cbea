"""The example user-service with faults a crash test needs and the example does not have.

    python tests/faults/faultservice.py --faults FILE --port P --version V [--releases R]

FILE (YAML) maps a version to its faults; a version it does not name is the plain example:

    v2.1.0: {hang: /health/ready}      # accept the request on that path and never answer
    v2.2.0: {drip: /health/live}       # answer the status line and headers, then one byte of the
                                       # announced body every 0.2 s, forever
    v2.3.0: {ignore_sigterm: true}     # SIGTERM does nothing; it also starts a child (in its
                                       # process group) that ignores SIGTERM too
    v2.4.0: {error_rate: 0.08}         # overrides the release's error rate

Everything else (error rate, latency, readiness, gauges) comes from the example's releases file.
Run as a script: the repository root is put on sys.path so that `examples` imports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from examples.user_service import app  # noqa: E402

DRIP_EVERY_S = 0.2
# A process that ignores SIGTERM and sleeps: the instance's own child, in its process group.
DRIP = b"drip"  # the body marker: _write drips instead of writing
STUBBORN_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


class FaultyService(app.UserService):
    def __init__(self, release: app.Release, *, instance: str, faults: dict[str, Any]) -> None:
        super().__init__(release, instance=instance)
        self.faults = faults

    async def route(self, path: str) -> tuple[int, bytes, str]:
        if path == self.faults.get("hang"):
            await asyncio.sleep(3600)  # the connection stays open, nothing is ever written
        if path == self.faults.get("drip"):
            return 200, DRIP, "text/plain"
        return await super().route(path)

    async def _write(self, writer: asyncio.StreamWriter, status: int, body: bytes, *, keep: bool,
                     head_only: bool, content_type: str = "text/plain; charset=utf-8") -> None:
        if body is not DRIP:
            await super()._write(writer, status, body, keep=keep, head_only=head_only, content_type=content_type)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n"
                     b"Connection: close\r\n\r\n")
        for _ in range(100000):  # one byte at a time, never the whole body
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(DRIP_EVERY_S)


async def serve(args: argparse.Namespace, release: app.Release, faults: dict[str, Any]) -> int:
    instance = os.environ.get("SAFESHIP_INSTANCE_ID") or f"faulty-{os.getpid()}"
    service = FaultyService(release, instance=instance, faults=faults)
    server = await asyncio.start_server(service.handle, args.host, args.port, limit=app.MAX_HEAD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    child: subprocess.Popen[bytes] | None = None
    if faults.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", STUBBORN_CHILD], stdin=subprocess.DEVNULL)
        print(f"faultservice: ignoring SIGTERM; child {child.pid} ignores it too", flush=True)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"faultservice {release.version} {faults} listening on {args.host}:{args.port} pid {os.getpid()}",
          flush=True)
    await stop.wait()
    server.close()
    await service.drain(app.SHUTDOWN_DRAIN_S)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="faultservice")
    parser.add_argument("--faults", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--releases", type=Path, default=app.DEFAULT_RELEASES)
    args = parser.parse_args()
    release = app.load_release(args.releases, args.version)
    faults = (yaml.safe_load(args.faults.read_text()) or {}).get(args.version) or {}
    if "error_rate" in faults:  # a release that is bad as well
        release = dataclasses.replace(release, error_rate=float(faults["error_rate"]))
    return asyncio.run(serve(args, release, faults))


if __name__ == "__main__":
    raise SystemExit(main())
