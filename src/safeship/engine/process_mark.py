"""Which process drives a deployment: a mark recorded in the deployment's status, and whether
the process it names still runs on this host (a pid reused by another process does not count)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from safeship.store import DeploymentRecord


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def driver_mark() -> dict[str, Any]:
    """This process, as recorded in the deployments it drives."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}


def has_live_driver(record: DeploymentRecord) -> bool:
    """A process on this host that is still running drives the deployment."""
    return is_alive(record.status.get("driver"))


def is_alive(mark: object) -> bool:
    """`mark` (from `driver_mark`) names a process of this host that still runs."""
    if not isinstance(mark, dict) or mark.get("host") != socket.gethostname():
        return False
    pid = mark.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    started = mark.get("started")
    return started is None or started == _process_start(pid)  # else the pid was reused
