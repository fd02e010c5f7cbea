"""Process and signal helpers of the local platform (Linux).

Every instance runs in its own process group, so stopping it reaches the children it started.
A process is identified by its PID and its start time from /proc/<pid>/stat, which tells a reused
PID apart; its exit is seen through a pidfd, with a polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from safeship.errors import PermanentError

KILL_WAIT = 10.0  # after SIGKILL; only a process stuck in the kernel takes this long

# Children left running by a closed platform, kept so that a platform adopting them in the same
# interpreter can still reap them and read their exit code (and so Popen does not warn on GC).
_detached_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str],
    *,
    log_file: BinaryIO,
    env: Mapping[str, str],
    cwd: str | None,
    preexec_fn: Callable[[], Any] | None,
    identity: Mapping[str, Any],
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, output appended to `log_file`; raises what Popen raises."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group: stopping reaches children
        preexec_fn=preexec_fn,
        **identity,
    )


def user_identity(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` when the controller runs as root; none otherwise."""
    if not user or os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PermanentError(f"run_as_user {user!r} does not exist on this host") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


async def wait_for_exit(pid: int, is_alive: Callable[[], bool], poll_interval: float) -> None:
    """Returns once process `pid` has exited: through a pidfd, else polling `is_alive`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while is_alive():
            await asyncio.sleep(poll_interval)
        return
    try:
        if not is_alive():  # the PID may already belong to someone else
            return
        await readable(pidfd)
    finally:
        os.close(pidfd)


async def terminate_group(pid: int, grace: float, wait: Callable[[], Awaitable[None]]) -> None:
    """SIGTERM the process group of `pid`, SIGKILL it when `wait()` has not returned after `grace`."""
    signal_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(wait(), grace)
    except TimeoutError:
        signal_group(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait(), KILL_WAIT)


def detach(popen: subprocess.Popen[bytes]) -> None:
    """Keep a child that outlives its platform, for a later claim_detached()."""
    _detached_children[popen.pid] = popen


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def same_process(pid: int, start_ticks: int | None) -> bool:
    ticks = proc_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


def reap_detached() -> None:
    for pid, popen in list(_detached_children.items()):
        if popen.poll() is not None:
            del _detached_children[pid]


def claim_detached(pid: int, start_ticks: int | None) -> subprocess.Popen[bytes] | None:
    popen = _detached_children.get(pid)
    if popen is None:
        return None
    if start_ticks is not None and proc_start_ticks(pid) not in (start_ticks, None):
        return None  # that child is gone and the PID was reused
    return _detached_children.pop(pid)


def signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


async def readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (exit status unknown: not a child of this controller)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"
