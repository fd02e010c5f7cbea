"""The store's edge: what can go wrong between safeship and its database, said in one sentence.

A bad `store.url` (empty, malformed, an unknown dialect, a driver that is not installed) is bad
input: InputError, exit 2, naming `store.url` and the value. A well-formed URL whose database
cannot be used (corrupt, a directory, read-only, locked by another process, a directory that
cannot be created, a full disk) is StoreError, exit 4. SQLAlchemy's and the driver's own errors
never leave the store.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from safeship.errors import InputError, StoreError

BUSY_TIMEOUT_ENV = "SAFESHIP_STORE_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT_S = 10.0
EXAMPLE_URL = "sqlite:///.safeship/state.db"

# The package that provides each database driver SQLAlchemy may import, by module name.
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


class StoreURLError(InputError):
    """`store.url` cannot be used as written. `detail` is the message without the field name, so
    a caller that knows the config file can name it: ConfigError(file, "store.url", detail)."""

    def __init__(self, value: str, detail: str) -> None:
        self.value = value
        self.detail = detail
        super().__init__(f"store.url: {detail}")


def busy_timeout_s() -> float:
    """How long a store operation waits for another process's lock: SAFESHIP_STORE_BUSY_TIMEOUT
    seconds, 10 by default."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise InputError(f"{BUSY_TIMEOUT_ENV}: expected a number of seconds (0 or more), got {raw!r}")
    return value


@dataclass(frozen=True)
class Target:
    """What a store URL points at: how to name it in a message, and the SQLite file, if any."""

    url: URL
    shown: str  # the URL with its password hidden, or the SQLite file's path
    sqlite_path: Path | None  # None for an in-memory SQLite database and for other dialects
    read_only: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"


def _hidden(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def parse(raw: str) -> Target:
    """Check `store.url` and say what it points at; StoreURLError when it cannot be one."""
    if not raw.strip():
        raise StoreURLError(raw, f"is empty; give a database URL such as {EXAMPLE_URL}")
    try:
        url = make_url(raw)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise StoreURLError(raw, f"{raw!r} is not a database URL; give one such as {EXAMPLE_URL}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, the driver safeship installs
    try:
        url.get_dialect()
    except sa_exc.NoSuchModuleError as exc:
        raise StoreURLError(
            raw,
            f"{_hidden(url)!r} names an unknown database kind {url.drivername!r}; "
            f"use sqlite (such as {EXAMPLE_URL}) or postgresql (postgresql://user@host/database)",
        ) from exc
    if url.get_backend_name() != "sqlite":
        return Target(url, _hidden(url), None)
    if url.host or url.username or url.password or url.port:
        raise StoreURLError(
            raw, f"{_hidden(url)!r} is not a SQLite URL: a file is written sqlite:///relative/path.db "
                 "or sqlite:////absolute/path.db",
        )
    database = url.database
    if database is None or database == ":memory:":
        return Target(url, "in-memory SQLite database", None)
    if not database:
        raise StoreURLError(raw, f"{raw!r} names no file; give one such as {EXAMPLE_URL}")
    uri = str(url.query.get("uri", "")).lower() in ("1", "true", "yes", "on")
    read_only = str(url.query.get("mode", "")) == "ro"
    if uri:
        file = database.removeprefix("file:").split("?", 1)[0]
        if file in ("", ":memory:") or "mode=memory" in raw:
            return Target(url, "in-memory SQLite database", None, read_only)
        path = Path(file)
    else:
        path = Path(database)
    return Target(url, str(path), path, read_only)


def sqlite_connect_url(target: Target) -> URL:
    """The URL given to SQLAlchemy: `?mode=ro` on a plain SQLite URL opens the file read-only
    (SQLite only reads its own URI parameters in URI form, so that form is built here)."""
    url = target.url
    if target.sqlite_path is None or "uri" in url.query or not target.read_only:
        return url
    query = {key: value for key, value in url.query.items() if key != "mode"}
    file = "file:" + quote(str(target.sqlite_path.absolute()), safe="/")
    return url.set(database=file, query={**query, "mode": "ro", "uri": "true"})


def driver_missing(target: Target, error: ImportError) -> StoreURLError:
    module = (error.name or "").split(".")[0]
    driver = target.url.get_dialect().driver
    package = _DRIVER_PACKAGES.get(module) or _DRIVER_PACKAGES.get(driver) or module or driver
    return StoreURLError(
        target.shown,
        f"{target.shown!r} needs the database driver {module or driver!r}, which is not installed; "
        f"run: pip install '{package}'",
    )


def ensure_directory(target: Target) -> None:
    """Create the SQLite file's directory, or say in one sentence why it cannot be."""
    if target.sqlite_path is None or target.read_only:
        return
    directory = target.sqlite_path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # the folder it makes is this user's alone
    except FileExistsError as exc:
        raise StoreError(
            f"store {target.shown}: cannot create its directory {directory}: "
            f"{exc.filename or directory} exists and is not a directory; "
            "remove it or point store.url elsewhere"
        ) from exc
    except OSError as exc:
        raise StoreError(
            f"store {target.shown}: cannot create its directory {directory} ({exc.strerror or exc}); "
            "create it with write permission or point store.url elsewhere"
        ) from exc


def keep_private(target: Target) -> None:
    """Make the SQLite file (mode 0600) before SQLite does (0644), and take group and other access
    away from one this user owns, with its -wal and -shm files: they hold every deployment's
    reasons and events. SQLite gives a new -wal or -shm file the database's own mode."""
    if target.sqlite_path is None or target.read_only:
        return
    path = target.sqlite_path
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            info = file.stat()
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
                file.chmod(stat.S_IMODE(info.st_mode) & ~0o077)


# ---------------------------------------------------------------- translating driver errors


def _driver_message(error: sa_exc.DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error).splitlines()[0]


def describe(target: Target, error: sa_exc.DBAPIError, waited_s: float) -> str:
    """One sentence for a driver error: what is wrong with the store and what to do about it."""
    reason = _driver_message(error)
    low = reason.lower()
    where = f"store {target.shown}"
    if "file is not a database" in low or "not a database" in low:
        return f"{where}: is not a SQLite database ({reason}); move it aside to start a new store"
    if "malformed" in low or "corrupt" in low:
        return f"{where}: is corrupt ({reason}); move it aside to start a new store, or restore a copy"
    if "locked" in low or "busy" in low or "lock timeout" in low:
        holder = lock_holders(target.sqlite_path) if target.sqlite_path is not None else ""
        by = f" ({holder})" if holder else ""
        return (
            f"{where}: is locked by another process{by} and stayed locked for {waited_s:g} s; "
            f"try again when it has finished, or wait longer with {BUSY_TIMEOUT_ENV}=<seconds>"
        )
    if "readonly" in low or "read-only" in low:
        if target.read_only:
            return f"{where}: is read-only ({reason}): store.url opens it with mode=ro; drop mode=ro to write to it"
        return (
            f"{where}: is read-only ({reason}); make the file and its directory writable, "
            "or point store.url elsewhere"
        )
    if "unable to open" in low or "cannot open" in low:
        return f"{where}: {_why_unopenable(target, reason)}"
    if "disk is full" in low or "database or disk is full" in low:
        return f"{where}: the disk is full ({reason}); free some space and try again"
    if "disk i/o" in low:
        return f"{where}: cannot be read or written ({reason}); check the disk and the file's permissions"
    if target.is_sqlite:
        return f"{where}: cannot be used ({reason})"
    return f"{where}: cannot be reached or used ({reason}); check that the database server is up and store.url"


def _why_unopenable(target: Target, reason: str) -> str:
    path = target.sqlite_path
    if path is None:
        return f"cannot be opened ({reason})"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if target.read_only:
            return f"does not exist ({reason}); a read-only store (mode=ro) must already exist"
        directory = path.parent
        if directory.is_dir() and not os.access(directory, os.W_OK):
            return (
                f"cannot be created: its directory {directory} is not writable ({reason}); "
                "make it writable or point store.url elsewhere"
            )
        return f"cannot be created ({reason}); check that {directory} exists and is writable"
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return f"is a directory, not a SQLite file ({reason}); remove it or point store.url at a file"
    if not os.access(path, os.R_OK):
        return f"cannot be read: permission denied ({reason}); give this user read and write access"
    if not os.access(path.parent, os.W_OK):
        return (
            f"cannot be opened: its directory {path.parent} is not writable, and SQLite needs to "
            f"write its journal there ({reason}); make it writable or open the store with ?mode=ro"
        )
    return f"cannot be opened ({reason})"


def translate(target: Target, error: sa_exc.DBAPIError, waited_s: float) -> StoreError:
    return StoreError(describe(target, error, waited_s))


@contextlib.contextmanager
def at_edge(target: Target, waited_s: float) -> Iterator[None]:
    """Turn the driver's operational and database errors into StoreError. IntegrityError (a
    constraint the caller broke) and safeship's own errors pass through unchanged."""
    try:
        yield
    except sa_exc.IntegrityError:
        raise
    except (sa_exc.OperationalError, sa_exc.DatabaseError, sa_exc.InterfaceError) as exc:
        raise translate(target, exc, waited_s) from exc


# ---------------------------------------------------------------- who holds the lock


def lock_holders(path: Path) -> str:
    """Best effort, Linux only: "PID 123: python worker.py" for the process that holds a write lock
    on the SQLite file (or its WAL index), or else has the file open; "" when none is found."""
    try:
        pids = _pids_locking(path) or _pids_with_open(path)
    except OSError:
        return ""
    named = [(pid, _command(pid)) for pid in pids[:3]]
    return ", ".join(f"PID {pid}: {command}" if command else f"PID {pid}" for pid, command in named)


def _file_key(path: Path) -> str | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"


def _pids_locking(path: Path) -> list[int]:
    """PIDs with a POSIX write lock on the database or its -shm file, from /proc/locks."""
    keys = {key for key in (_file_key(path), _file_key(Path(f"{path}-shm"))) if key is not None}
    if not keys:
        return []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    me, found = os.getpid(), []
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 4677 fe:00:2147314 120 120" (a "->" marks a blocked waiter)
        if "->" in fields or len(fields) < 6:
            continue
        kind, pid_text, key = fields[3], fields[4], fields[5]
        if kind != "WRITE" or key not in keys or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid != me and pid not in found:
            found.append(pid)
    return found


def _pids_with_open(path: Path) -> list[int]:
    """PIDs other than this one with the database file open, from /proc/*/fd."""
    target = os.path.realpath(path)
    me, found = os.getpid(), []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(found)


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return command if len(command) <= 80 else command[:77] + "..."
