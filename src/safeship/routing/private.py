"""Sockets in /tmp: when the state folder's path is too long for a Unix socket, the router daemon's
socket and HAProxy's socket folder move to a short path in /tmp, where any user can create a file
first. Before safeship connects to or binds there, the path must be this user's, not a symbolic
link, and (a folder) not writable by group or others; otherwise it is refused in one sentence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from safeship.errors import PermanentError


def check_private(path: Path, what: str, state_dir: Path) -> None:
    """PermanentError naming `path` when it exists and is another user's, a symbolic link, or a
    folder group or others may write to; nothing when it does not exist yet, or lies inside
    `state_dir` (made 0700: private already)."""
    if path.is_relative_to(state_dir):
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PermanentError(f"{what} {path} cannot be checked: {exc.strerror or exc}") from exc
    hint = "remove it, or use a shorter state_dir so that nothing is placed in /tmp"
    if info.st_uid != os.geteuid():
        raise PermanentError(f"{what} {path} belongs to uid {info.st_uid}, not to this user "
                             f"(uid {os.geteuid()}); {hint}")
    if stat.S_ISLNK(info.st_mode):
        raise PermanentError(f"{what} {path} is a symbolic link; {hint}")
    if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022:
        raise PermanentError(f"{what} {path} may be written by group or others "
                             f"(mode {stat.S_IMODE(info.st_mode):o}); {hint}")
