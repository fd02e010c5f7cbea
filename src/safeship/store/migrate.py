"""Bring a store's schema to the revision this safeship knows, with Alembic, when the store opens.

The revisions live in `safeship/store/migrations/versions/`; no alembic.ini is needed. What
opening a store does, by what the database holds:

- nothing of safeship's: every revision runs, from the first (a new store);
- safeship's tables but no alembic_version table (a store made before revisions were kept): the
  first revision creates only the tables it lacks, and the later ones run: upgraded in place,
  its rows kept;
- a known revision older than the newest: the later revisions run;
- a revision this safeship does not know (a newer safeship wrote it): refused, StoreError (exit 4),
  nothing changed;
- a read-only store (`mode=ro`) is never changed: an unknown revision is refused all the same.

Two processes that open one new store at once: the upgrade runs in one transaction that holds a
PostgreSQL advisory lock, or SQLite's write lock (`BEGIN IMMEDIATE`), so the second waits for the
first, reads the revision again and finds nothing left to do.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from safeship.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock key held while a PostgreSQL store is upgraded ("safeship" in ASCII).
_PG_LOCK_KEY = 0x7361666573686970
_ATTEMPTS = 3
# Alembic's `context` and `op` are module-wide proxies: one migration at a time per process.
_RUNNING = threading.Lock()


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS), version_locations=[str(MIGRATIONS / "versions")])


def head() -> str:
    """The newest revision this safeship knows."""
    found = _scripts().get_current_head()
    assert found is not None
    return found


def current(conn: Connection) -> str | None:
    """The revision the database is at; None for a database without the version table."""
    return MigrationContext.configure(conn).get_current_revision()


def _check_known(shown: str, revision: str | None) -> None:
    if revision is None:
        return
    try:
        _scripts().get_revision(revision)
    except CommandError:
        raise StoreError(
            f"store {shown}: its schema is at revision {revision!r}, which this safeship does not know "
            f"(it knows up to {head()!r}): a newer safeship wrote it; run that version, or restore a copy"
        ) from None


def upgrade(engine: Engine, shown: str, *, read_only: bool) -> None:
    """Bring the database of `engine` to the newest revision (see the module's doc)."""
    for attempt in range(_ATTEMPTS):
        try:
            _upgrade_once(engine, shown, read_only=read_only)
            return
        except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
            if attempt == _ATTEMPTS - 1 or read_only:
                raise
            # another process created the same tables at the same moment: read where it left them


def _upgrade_once(engine: Engine, shown: str, *, read_only: bool) -> None:
    target = head()
    with engine.connect() as conn:
        revision = current(conn)
        conn.rollback()
    _check_known(shown, revision)
    if revision == target or read_only:
        return
    with engine.connect() as conn, _exclusive(conn):
        revision = current(conn)  # another process may have upgraded it while this one waited
        _check_known(shown, revision)
        if revision != target:
            _run(conn, target)


@contextlib.contextmanager
def _exclusive(conn: Connection) -> Iterator[None]:
    """One transaction that no other process's upgrade can run beside: on PostgreSQL an advisory
    lock held to its end; on SQLite `BEGIN IMMEDIATE`, the write lock from the start (the driver
    would otherwise commit each CREATE TABLE on its own, and two processes would interleave)."""
    if conn.dialect.name != "sqlite":
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    before = driver.isolation_level
    driver.isolation_level = None  # transactions are ours to begin
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        driver.isolation_level = before


def _run(conn: Connection, target: str) -> None:
    with _RUNNING:
        _run_alone(conn, target)


def _run_alone(conn: Connection, target: str) -> None:
    scripts = _scripts()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def revisions(rev: object, _context: MigrationContext) -> object:
        return scripts._upgrade_revs(target, rev)  # type: ignore[arg-type]

    with EnvironmentContext(config, scripts, fn=revisions, destination_rev=target) as environment:
        environment.configure(connection=conn, transactional_ddl=True)
        with environment.begin_transaction():
            environment.run_migrations()
