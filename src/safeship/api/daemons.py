"""Which process is which of safeship's daemons, from what Linux's /proc shows.

The controller and the router daemon each hold an exclusive `flock` on a file in the state
directory (`controller.lock`, `router.lock`) for as long as they live, so there is one of each per
state directory, and the holder of that lock *is* the daemon, however it was started (`safeship
server`, `python -m safeship.api.server`, `python -m safeship.cli.main server`). The lock itself is
`safeship.locks` (the router daemon, a lower layer, takes it too).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from safeship.environments.ports import listening_inodes
from safeship.locks import LockHeld as LockHeld
from safeship.locks import hold_lock as hold_lock
from safeship.locks import lock_holder as lock_holder

PROC = Path("/proc")
CONTROLLER_LOCK = "controller.lock"
ROUTER_LOCK = "router.lock"
SERVER_MODULE = "safeship.api.server"
ROUTER_MODULE = "safeship.routing.daemon"
_CLI_PROGRAMS = ("safeship", "safeship.cli.main")  # `<program> server` runs the controller


def cmdline(pid: int) -> list[str]:
    """The PID's argv, [] when it is gone or not ours to read."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """The PID exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


def is_controller_command(argv: Sequence[str]) -> bool:
    """`argv` runs the controller: `python -m safeship.api.server ...`, or `safeship server ...`
    (the console script, or `python -m safeship.cli.main server`) without `--stop` or `--reload`."""
    if SERVER_MODULE in argv:
        return True
    for index, part in enumerate(argv[:-1]):
        if os.path.basename(part) in _CLI_PROGRAMS and argv[index + 1] == "server":
            return not {"--stop", "--reload", "-h", "--help"} & set(argv[index + 2 :])
    return False


def is_router_command(argv: Sequence[str]) -> bool:
    return ROUTER_MODULE in argv


def is_controller(pid: int, state_dir: Path) -> bool:
    """The PID is alive and is the controller of `state_dir`: it holds its lock, or (a controller
    still starting, or an older one) its command line runs the controller."""
    if not alive(pid):
        return False
    return lock_holder(state_dir / CONTROLLER_LOCK) == pid or is_controller_command(cmdline(pid))


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets the PID has open (its /proc/<pid>/fd links `socket:[N]`)."""
    found: set[str] = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                found.add(link[len("socket:[") : -1])
    return found


def listens_on(pid: int, port: int) -> bool:
    """The PID itself holds the socket listening on TCP `port` (IPv4 or IPv6)."""
    inodes = listening_inodes(port, PROC) - {"0"}
    return bool(inodes) and bool(inodes & socket_inodes(pid))
