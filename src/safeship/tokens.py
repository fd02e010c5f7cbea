"""The controller's API token in `<state_dir>/token`, and the private files beside it.

The token guards the whole API and the dashboard's login, so a file that would weaken it stops
the controller instead of being used: it must hold at least MIN_TOKEN_CHARS characters (an empty
file must never mean "no authentication") and be readable by its owner only (mode 0600). A new
token is written to a temporary file of mode 0600 in the same folder and renamed into place, so
no reader ever sees a partial or a world-readable token.

It sits at the bottom of the package (like `redaction.py`) so that the API and the environment
manager, which writes Prometheus's scrape config pointing at the token, share one rule.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from safeship.errors import InputError

TOKEN_FILE = "token"
MIN_TOKEN_CHARS = 32
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Make the folder (mode 0700, its parents as the umask says) when it is not there yet; a
    folder already there is left as it is (`tighten_dir` narrows one safeship owns)."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def tighten_dir(path: Path) -> None:
    """Make the folder, and take group and other access away from it when this user owns it (a
    state folder made by an older safeship, or under a loose umask)."""
    private_dir(path)
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(stat.S_IMODE(info.st_mode) & ~0o077)


def token_problem(path: Path) -> str | None:
    """Why the token file cannot be used, as the end of a sentence; None when it can."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return f"cannot be read ({reason})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return (f"has mode {mode:04o}, which lets other users read the API token; "
                f"run `chmod 600 {path}`")
    if len(text) < MIN_TOKEN_CHARS:
        shown = "is empty" if not text else f"holds a token of {len(text)} characters"
        return (f"{shown}, but the API token must be at least {MIN_TOKEN_CHARS} characters; "
                f"delete the file to have a new one made, or write a longer one")
    return None


def write_new_token(path: Path) -> bool:
    """Write a new random token to `path` unless a file is there already; True if this call wrote it.
    The token goes to a 0600 temporary file first, which is then linked into place (never over a
    file another process made meanwhile)."""
    private_dir(path.parent)
    if path.exists() or path.is_symlink():
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(partial, path)  # a rename that refuses to replace a token made meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def load_or_create_token(state_dir: Path) -> str:
    """The API token from `<state_dir>/token`, made on first use; InputError (exit 2) naming the
    file and what is wrong when it is too short, empty or readable by others."""
    path = state_dir / TOKEN_FILE
    write_new_token(path)
    problem = token_problem(path)
    if problem is not None:
        raise InputError(f"the API token file {path} {problem}; the controller does not start with it")
    return path.read_text(encoding="utf-8").strip()
