"""A real PostgreSQL server for tests: `initdb` into a temporary folder, `postgres` listening only
on a Unix socket in that folder (no TCP port), stopped by its PID at the end.

Debian's `postgresql` package puts the binaries in /usr/lib/postgresql/<major>/bin. initdb
refuses to run as root: a root test run starts the server as the `postgres` user (made by that
package) through `runuser`, in a folder that user owns. Without the binaries (or, as root,
without `runuser` or the `postgres` user) the tests that need the server are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "safeship"  # the role initdb makes; trust authentication on the socket only
DATABASE = "safeship_tests"  # each store a test opens is a schema of its own in it
_names = itertools.count(1)


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted((p / "bin" for p in PG_ROOT.glob("*") if (p / "bin" / "postgres").is_file()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def why_not() -> str | None:
    """Why no server can be started here, or None when one can."""
    if binaries() is None:
        return f"PostgreSQL is not installed (no {PG_ROOT}/<version>/bin/postgres; apt-get install postgresql)"
    if os.getuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and initdb refuses root; runuser (util-linux) is missing to run it as postgres"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and initdb refuses root; there is no postgres user to run it as"
    return None


@dataclass
class PgServer:
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """The URL of a new, empty store: a schema of its own in the test database, named by the
        connection's search_path (creating a whole database costs most of a second)."""
        import psycopg

        name = f"s{os.getpid()}_{next(_names)}"
        with psycopg.connect(host=str(self.folder), user=SUPERUSER, dbname=DATABASE, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url(DATABASE)}&options=-csearch_path%3D{name}"

    def pid(self) -> int | None:
        try:
            return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown: ends sessions, then exits
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command


def start() -> PgServer:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    bin_dir = binaries()
    assert bin_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="safeship-pg-"))
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                              "--no-sync", "-E", "UTF8", "--locale=C"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    log = open(folder / "server.log", "wb")  # noqa: SIM115  (closed with the process)
    process = subprocess.Popen(
        _as_owner([str(bin_dir / "postgres"), "-D", str(data), "-k", str(folder), "-c", "listen_addresses=",
                   "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                   "-c", "max_connections=60"]),
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    server = PgServer(folder, process)
    deadline = time.monotonic() + 60
    while not (folder / ".s.PGSQL.5432").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            text = (folder / "server.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"postgres did not start: {text}")
        time.sleep(0.05)
    import psycopg

    for _ in range(200):  # the socket exists a moment before the server accepts sessions
        try:
            with psycopg.connect(host=str(folder), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            break
        except psycopg.OperationalError:
            time.sleep(0.05)
    return server


@contextlib.contextmanager
def running() -> Iterator[PgServer]:
    server = start()
    try:
        yield server
    finally:
        server.stop()
