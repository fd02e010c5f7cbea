"""An exclusive flock held for a process's life, and who holds one.

The controller and the router daemon each take one on a file in the state directory, so that
there is one of each per state directory. The holder is read from /proc/locks; the PID is also
written into the lock file, for a kernel whose /proc/locks we cannot match.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

PROC = Path("/proc")


def lock_holder(path: Path) -> int | None:
    """The PID holding an flock on `path` (from /proc/locks), or the PID the holder wrote into it
    when /proc/locks shows none we can match; None when nobody holds it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    by_inode: list[int] = []
    try:
        lines = (PROC / "locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, or a POSIX lock
        with contextlib.suppress(ValueError):
            pid, where = int(fields[4]), fields[5]
            if where == device:
                return pid if pid > 0 else _written_pid(path)
            if where.rpartition(":")[2] == str(stat.st_ino):
                by_inode.append(pid)
    if by_inode:  # an overlay filesystem shows another device than stat() does
        return by_inode[0] if by_inode[0] > 0 else _written_pid(path)
    return _written_pid(path) if _held(path) else None


def _written_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _held(path: Path) -> bool:
    """Whether another process holds the flock (tried, and released at once when we got it)."""
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


class LockHeld(Exception):
    """Another process holds the lock; `pid` is it, where Linux says."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def hold_lock(path: Path) -> IO[str]:
    """Take the exclusive flock on `path` and write our PID into it; the handle holds the lock
    until it is closed or the process ends. LockHeld when another process has it."""
    handle = open(path, "a+")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LockHeld(lock_holder(path)) from None
    with contextlib.suppress(OSError):
        os.fchmod(handle.fileno(), 0o600)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle
