"""Which process drives a deployment: a mark recorded in the deployment's status, and whether
the process it names still runs on this host (a pid reused by another process does not count)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class DriverMark:
    """A process: its host, its pid and when it started (None where /proc does not say)."""

    host: str
    pid: int
    started: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started": self.started}

    @classmethod
    def from_json(cls, data: object) -> DriverMark | None:
        """The mark stored as JSON; None for anything that cannot name a process."""
        if not isinstance(data, dict):
            return None
        host, pid, started = data.get("host"), data.get("pid"), data.get("started")
        if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        if started is not None and not isinstance(started, str):
            return None
        return cls(host, pid, started)


def driver_mark() -> DriverMark:
    """This process, as recorded in the deployments it drives."""
    pid = os.getpid()
    return DriverMark(socket.gethostname(), pid, _process_start(pid))


def is_alive(mark: DriverMark | None) -> bool:
    """`mark` names a process of this host that still runs."""
    if mark is None or mark.host != socket.gethostname():
        return False
    if mark.pid == os.getpid():
        return True
    try:
        os.kill(mark.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return mark.started is None or mark.started == _process_start(mark.pid)  # else the pid was reused
