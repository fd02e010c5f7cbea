"""What Linux says about a port: whether it lies in the ephemeral range the kernel hands to
outgoing connections, and which process listens on it (from /proc/net/tcp and /proc/*/fd)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")
EPHEMERAL_DEFAULT = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
_LISTEN = "0A"


def ephemeral_range(proc: Path = PROC) -> tuple[int, int]:
    """The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), or Linux's
    default when it cannot be read."""
    try:
        low, high = (int(part) for part in (proc / "sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_DEFAULT
    return low, high


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """The inodes of the sockets listening on TCP `port` (IPv4 and IPv6), from /proc/net/tcp*."""
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            local_port = fields[1].rpartition(":")[2]
            if int(local_port, 16) == port:
                inodes.add(fields[9])
    return inodes


def holder(port: int, proc: Path = PROC) -> tuple[int, str] | None:
    """(pid, command line) of a process listening on TCP `port`, when /proc shows one we may
    look into; None otherwise."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port, proc) if inode != "0"}
    if not inodes:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's
        links = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile (the listing's own, for one)
                links.add(os.readlink(fd))
        if links & inodes:
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = ""
            return int(entry.name), command[:120]
    return None


def describe_holder(port: int, proc: Path = PROC) -> str:
    """'held by PID 123 (python -m http.server 20001)', or what can be said when /proc does not tell."""
    found = holder(port, proc)
    if found is None:
        return "held by a process /proc does not show (another user's, or not listening)"
    pid, command = found
    return f"held by PID {pid} ({command})" if command else f"held by PID {pid}"
