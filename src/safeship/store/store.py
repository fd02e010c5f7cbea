"""The store: one SQLite file, or a PostgreSQL database (docs/store.md). Every state transition is
one transaction, guarded by `row_version` so two engines can never both advance the same
deployment; a controller that holds a deployment's lease also fences its writes with the lease's
token (`fence`), so one whose lease was taken over cannot write at all. The schema is brought to
the newest revision when the store opens (`migrate`).

A store on a private in-memory database (`Store("sqlite://", deferred=True)`, what a simulation
uses) may keep its transitions in memory and write them in one transaction when anything reads
or writes the database otherwise, or on `flush()`: a deployment's intermediate rows, which no
one could read, are then never written, only its latest one; its events and side records are
all written, in the order they were saved (see `Store.save_transition`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, bindparam, create_engine, delete, event, func, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from safeship.errors import ConflictError, LeaseLostError, NotFoundError, StaleStateError
from safeship.redaction import redactor
from safeship.store import edge, migrate, schema

ACTIVE_PHASES = ("pending", "awaiting_approval", "preparing", "progressing", "monitoring", "rolling_back")


@dataclass(frozen=True)
class DeploymentRecord:
    id: str
    service: str
    environment: str
    version: str
    from_version: str | None
    strategy: str
    strategy_reason: str
    policy: str
    phase: str
    step_index: int
    plan: list[dict[str, Any]]
    status: dict[str, Any]
    request: dict[str, Any]
    created_at: float
    updated_at: float
    phase_started_at: float
    step_started_at: float
    decision: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] | None = None
    decided_at: float | None = None
    finished_at: float | None = None
    row_version: int = 1

    def replace(self, **changes: Any) -> DeploymentRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EventRecord:
    deployment_id: str
    at: float
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    # The events table's id, in the order events were written; None for an event not yet saved.
    # Left out of equality, so an event read back equals the one that was written.
    id: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RollbackRecord:
    id: str
    deployment_id: str
    service: str
    environment: str
    from_version: str
    to_version: str | None
    reason: str
    evidence: dict[str, Any] | None
    automatic: bool
    started_at: float
    duration_s: float | None
    success: bool | None
    timestamp: float


@dataclass(frozen=True)
class StableVersion:
    service: str
    environment: str
    version: str
    deployment_id: str | None
    promoted_at: float
    retired_at: float | None
    healthy: bool


@dataclass(frozen=True)
class Retirement:
    """When a deployment ends, the stable versions of its service and environment other than
    `keep_version` stop serving at `at`; unless `deployment_healthy`, the one this deployment
    promoted is also marked unhealthy (it was rolled back)."""

    service: str
    environment: str
    keep_version: str  # "" when no version keeps serving
    at: float
    deployment_healthy: bool


@dataclass(frozen=True)
class ArtifactRecord:
    """The release a pipeline run built and tested for one version of a service: the file's
    absolute path and its sha256. A deploy of that version must find the same bytes there."""

    service: str
    version: str
    path: str
    sha256: str
    run_id: str
    registered_at: float


@dataclass(frozen=True)
class TokenRecord:
    """An API token made by `safeship token create`: its SHA-256, never the token itself.
    `environments` is None for a token of every environment."""

    id: str
    name: str
    token_sha256: str
    role: str
    environments: list[str] | None
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One row of the append-only audit table; `id` is None until it is written."""

    at: float
    actor: str
    action: str
    status: int
    role: str | None = None
    target: str = ""
    source: str = ""
    outcome: str = ""
    id: int | None = None


@dataclass(frozen=True)
class LeaseRecord:
    """A deployment's lease (`name` is its id): who holds it until when, and its fencing token,
    which grows by one each time the lease changes hands. `holder` is "" once released."""

    name: str
    holder: str
    token: int
    acquired_at: float
    renewed_at: float
    expires_at: float


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of the file at `path`, read in chunks; raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PipelineRunRecord:
    """One `safeship pipeline run`: its stages in order (each a dict with name, status,
    started_at, duration_s, exit_code, log_path and detail), the artifact it built and the
    deployment it started."""

    id: str
    service: str
    version: str
    environment: str
    status: str
    started_at: float
    stages: list[dict[str, Any]]
    finished_at: float | None = None
    artifact_path: str | None = None
    artifact_sha256: str | None = None
    deployment_id: str | None = None
    message: str | None = None

    def replace(self, **changes: Any) -> PipelineRunRecord:
        return dataclasses.replace(self, **changes)


# Built once: this runs on every state transition, and building it costs more than running it.
_GUARDED_UPDATE = (
    update(schema.deployments)
    .where(schema.deployments.c.id == bindparam("match_id"))
    .where(schema.deployments.c.row_version == bindparam("match_row_version"))
)


# pg_advisory_xact_lock key held by a PostgreSQL transaction that writes events ("events" in ASCII).
EVENT_ORDER_LOCK = 0x6576656E7473
_FREE_TEXT = ("reason", "evidence", "request", "message", "data")
_INSERT_EVENT = "INSERT INTO events (deployment_id, at, kind, message, data, fencing_token) VALUES (?, ?, ?, ?, ?, ?)"
# The columns the records are read from: the fencing columns are the store's own bookkeeping (and a
# read-only store older than them does not have them).
_DEPLOYMENT_COLUMNS = [c for c in schema.deployments.c if c.name != "fencing_token"]
_EVENT_COLUMNS = [c for c in schema.events.c if c.name != "fencing_token"]
# A holder's fencing check: touching its own lease row succeeds only while its token is the
# current one, and holds the row until the transaction ends, so a controller taking the lease
# over waits for the write in flight (PostgreSQL) or cannot interleave with it (SQLite).
_FENCE = (
    update(schema.leases)
    .where(schema.leases.c.name == bindparam("fence_name"))
    .where(schema.leases.c.holder == bindparam("fence_holder"))
    .where(schema.leases.c.token == bindparam("fence_token"))
    .values(token=schema.leases.c.token)
)
_DEPLOYMENT_FIELDS = tuple(f.name for f in dataclasses.fields(DeploymentRecord) if f.name not in ("id", "row_version"))
# Columns stored as JSON: compared by identity only, since a new dict is as good as a change and
# comparing two large statuses costs about as much as writing one.
_JSON_FIELDS = frozenset(c.name for c in schema.deployments.columns if isinstance(c.type, JSON))


def _shallow(record: Any) -> dict[str, Any]:
    """Field values without dataclasses.asdict's deep copy (status holds histograms), with secret
    values masked in the free-text fields, so that the history never holds one."""
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    masker = redactor()
    if masker.values:
        for name in _FREE_TEXT:
            if name in values:
                values[name] = masker.redact(values[name])
    return values


def _changed(before: DeploymentRecord, after: DeploymentRecord) -> dict[str, Any]:
    """The columns of `after` that differ from `before`, free text masked as `_shallow` does. A
    transition rewrites only these: the plan and the request of a deployment rarely change, and
    writing them again on every tick meant serialising them again."""
    values: dict[str, Any] = {}
    for name in _DEPLOYMENT_FIELDS:
        new = getattr(after, name)
        if new is getattr(before, name):
            continue
        if name not in _JSON_FIELDS and new == getattr(before, name):
            continue
        values[name] = new
    masker = redactor()
    if masker.values:
        for name in _FREE_TEXT:
            if name in values:
                values[name] = masker.redact(values[name])
    return values


@dataclass
class _Pending:
    """A deployment's transitions saved but not yet written (a deferred store): the row as the
    database holds it, the latest row, and the side records of every transition, in order."""

    written: DeploymentRecord
    latest: DeploymentRecord
    side: list[tuple[list[EventRecord], RollbackRecord | None, StableVersion | None, Retirement | None,
                     DeploymentRecord]] = field(default_factory=list)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


_SCHEMA_DDL: dict[str, tuple[str, ...]] = {}  # dialect name -> the statements of _schema_ddl


def _schema_ddl(dialect: Dialect) -> tuple[str, ...]:
    """The statements that create every table and index on an empty database, compiled once per
    process: compiling them cost more than running them, on every in-memory store."""
    found = _SCHEMA_DDL.get(dialect.name)
    if found is None:
        statements: list[str] = []
        for table in schema.metadata.sorted_tables:
            statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
            statements.extend(str(CreateIndex(index).compile(dialect=dialect)).strip()
                              for index in sorted(table.indexes, key=lambda i: i.name or ""))
        statements.extend(schema.audit_triggers(dialect.name))
        found = _SCHEMA_DDL[dialect.name] = tuple(statements)
    return found


def _is_private_memory(target: edge.Target) -> bool:
    """A plain `sqlite://` database: in memory, on one connection of its own, seen by no one else."""
    return target.is_sqlite and target.sqlite_path is None and "uri" not in target.url.query


_MEMORY_ENGINES: dict[int, Engine] = {}  # busy timeout (ms) -> the engine of _private_memory_connection


def _private_memory_connection(busy_timeout_s: float) -> Connection:
    """A connection to a new, empty in-memory database with the schema in place.

    Every such database of the process is opened through one engine, whose connections are each
    a database of their own (NullPool on `sqlite://`): SQLAlchemy compiles a statement once per
    engine, and compiling every statement again for each simulation's store cost more than
    running them."""
    waited_ms = int(busy_timeout_s * 1000)
    engine = _MEMORY_ENGINES.get(waited_ms)
    if engine is None:
        engine = create_engine("sqlite://", poolclass=NullPool, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas(waited_ms))
        engine = _MEMORY_ENGINES.setdefault(waited_ms, engine)
    conn = engine.connect()
    try:
        with conn.begin():
            for statement in _schema_ddl(engine.dialect):
                conn.exec_driver_sql(statement)
    except BaseException:
        conn.close()
        raise
    return conn


def open_engine(url: str, *, busy_timeout_s: float | None = None) -> Engine:
    """An engine on `url` with the schema in place. InputError (exit 2) for a URL that cannot be
    one, StoreError (exit 4) for a database that cannot be used; never a driver's own error."""
    target = edge.parse(url)
    waited = edge.busy_timeout_s() if busy_timeout_s is None else busy_timeout_s
    edge.ensure_directory(target)
    edge.keep_private(target)
    connect_url = edge.sqlite_connect_url(target) if target.is_sqlite else target.url
    try:
        if target.is_sqlite and target.sqlite_path is None and "uri" not in target.url.query:
            engine = create_engine(connect_url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif target.is_sqlite:
            engine = create_engine(connect_url, connect_args={"check_same_thread": False, "timeout": waited})
        else:
            # a row another process holds locked is waited for as long as a SQLite lock would be;
            # connections the server dropped (a restart) are replaced before use
            given = connect_url.query.get("options", "")  # the URL's own (a search_path, say) are kept
            options = [given] if isinstance(given, str) else list(given)
            options.append(f"-c lock_timeout={int(waited * 1000)}")
            engine = create_engine(connect_url, pool_pre_ping=True,
                                   connect_args={"options": " ".join(o for o in options if o)})
    except ImportError as exc:
        raise edge.driver_missing(target, exc) from exc
    except sa_exc.ArgumentError as exc:
        raise edge.StoreURLError(url, f"{target.shown!r} cannot be used: {exc}") from exc
    if target.is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas(int(waited * 1000)))
    try:
        with edge.at_edge(target, waited):
            if _is_private_memory(target):
                # a new, empty database that no one else can see: nothing to inspect or upgrade
                with engine.begin() as conn:
                    for statement in _schema_ddl(engine.dialect):
                        conn.exec_driver_sql(statement)
            else:
                migrate.upgrade(engine, target.shown, read_only=target.read_only)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _event_from_row(row: Any) -> EventRecord:
    return EventRecord(row.deployment_id, row.at, row.kind, row.message, row.data or {}, id=row.id)


def _deployment_from_row(row: Any) -> DeploymentRecord:
    values = dict(row._mapping)
    return DeploymentRecord(**values)


class Store:
    def __init__(self, url: str = "sqlite:///.safeship/state.db", *, deferred: bool = False) -> None:
        """`deferred`: keep transitions in memory until anything else touches the database (see
        `save_transition`); only for a plain in-memory SQLite database (`sqlite://`), which no
        other store or process can write, so that this store knows every row's version."""
        self.url = url
        self._target = edge.parse(url)
        if deferred and not _is_private_memory(self._target):
            raise ValueError(f"a deferred store needs a private in-memory SQLite database, not {self._target.shown}")
        self.deferred = deferred
        self._pending: dict[str, _Pending] = {}  # deployment id -> its unwritten transitions
        self._side_order: list[str] = []  # deployment ids, one per unwritten transition, in order
        self._versions: dict[str, int] = {}  # deployment id -> row_version, for rows this store wrote
        self._busy_timeout_s = edge.busy_timeout_s()
        # deployment id -> (holder, fencing token): writes for these deployments are fenced (`fence`)
        self._fences: dict[str, tuple[str, int]] = {}
        self.refused_writes = 0  # writes refused because a fence's token was no longer current
        # A private in-memory database is one connection, held for the store's life (see
        # _private_memory_connection); any other is reached through an engine of its own.
        self._connection: Connection | None = None
        self._engine: Engine | None = None
        if _is_private_memory(self._target):
            with edge.at_edge(self._target, self._busy_timeout_s):
                self._connection = _private_memory_connection(self._busy_timeout_s)
        else:
            self._engine = open_engine(url, busy_timeout_s=self._busy_timeout_s)

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on this store's database. A private in-memory store's is made when
        first asked for, over the store's own connection (the store itself does not use it)."""
        if self._engine is None:
            held = self._connection
            assert held is not None
            # the engine holds the store's connection, so the database lives as long as either
            self._engine = create_engine("sqlite://", creator=lambda: held.connection.driver_connection,
                                         poolclass=StaticPool)
        return self._engine

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with edge.at_edge(self._target, self._busy_timeout_s):
            if self._connection is None:
                with self.engine.begin() as conn:
                    yield conn
            else:
                with self._connection.begin():
                    yield self._connection

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction; a store that cannot be used raises StoreError (exit 4). A deferred
        store first writes what it kept, so every statement sees every transition saved."""
        if self._side_order:
            self.flush()
        with self._transaction() as conn:
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reading; a store that cannot be used raises StoreError (exit 4)."""
        if self._side_order:
            self.flush()
        with edge.at_edge(self._target, self._busy_timeout_s):
            if self._connection is None:
                with self.engine.connect() as conn:
                    yield conn
            else:
                try:
                    yield self._connection
                finally:
                    if self._connection.in_transaction():
                        self._connection.rollback()  # a read began one; the next write begins its own

    def close(self) -> None:
        if self._side_order:
            self.flush()
        if self._engine is not None:
            self._engine.dispose()
        if self._connection is not None:
            self._connection.close()

    # ------------------------------------------------------------ deployments

    def create_deployment(self, record: DeploymentRecord, events: Iterable[EventRecord] = ()) -> None:
        """Insert a new deployment; refuses (ConflictError from the caller's check) are done before."""
        with self._begin() as conn:
            conn.execute(insert(schema.deployments).values(**_shallow(record)))
            self._insert_events(conn, events)
        if self.deferred:
            self._versions[record.id] = record.row_version

    def save_transition(
        self,
        before: DeploymentRecord,
        after: DeploymentRecord,
        events: Iterable[EventRecord] = (),
        *,
        rollback: RollbackRecord | None = None,
        stable: StableVersion | None = None,
        retire: Retirement | None = None,
    ) -> DeploymentRecord:
        """Write `after` in place of `before` in one transaction, with its events and side records.

        Raises StaleStateError when another engine moved the row first. Only the columns that
        changed are written.

        A deferred store checks the row's version against the one it wrote last and keeps the
        transition in memory instead; the next statement of any kind (a read too), `flush` or
        `close` writes every kept transition in one transaction: each deployment's latest row,
        and the events and side records of every transition in the order they were saved, so
        the database then holds exactly what writing each transition at once would have left."""
        if self.deferred:
            known = self._versions.get(before.id)
            if known is not None:
                if known != before.row_version:
                    raise StaleStateError(f"deployment {before.id} was advanced by another engine")
                saved = after.replace(row_version=before.row_version + 1)
                pending = self._pending.get(before.id)
                if pending is None:
                    pending = self._pending[before.id] = _Pending(written=before, latest=saved)
                pending.latest = saved
                pending.side.append((list(events), rollback, stable, retire, before))
                self._side_order.append(before.id)
                self._versions[before.id] = saved.row_version
                return saved
        with self._begin() as conn:
            self._write_transition(conn, before, after, events, rollback=rollback, stable=stable, retire=retire)
        if self.deferred:
            self._versions[before.id] = before.row_version + 1
        return after.replace(row_version=before.row_version + 1)

    def _write_transition(
        self,
        conn: Connection,
        before: DeploymentRecord,
        after: DeploymentRecord,
        events: Iterable[EventRecord] = (),
        *,
        rollback: RollbackRecord | None = None,
        stable: StableVersion | None = None,
        retire: Retirement | None = None,
    ) -> None:
        values = _changed(before, after)
        values["row_version"] = before.row_version + 1
        values["match_id"], values["match_row_version"] = before.id, before.row_version
        token = self._check_fences(conn, (before.id,))
        if token is not None:
            values["fencing_token"] = token
        result = conn.execute(_GUARDED_UPDATE, values)
        if result.rowcount != 1:
            raise StaleStateError(f"deployment {before.id} was advanced by another engine")
        self._write_side(conn, before, events, rollback, stable, retire)

    def _write_side(
        self,
        conn: Connection,
        before: DeploymentRecord,
        events: Iterable[EventRecord],
        rollback: RollbackRecord | None,
        stable: StableVersion | None,
        retire: Retirement | None,
    ) -> None:
        self._insert_events(conn, events, self._fence_tokens())
        if rollback is not None:
            self._upsert_rollback(conn, rollback)
        if retire is not None:
            service, environment, keep_version, at = (retire.service, retire.environment,
                                                      retire.keep_version, retire.at)
            conn.execute(
                update(schema.stable_versions)
                .where(schema.stable_versions.c.service == service)
                .where(schema.stable_versions.c.environment == environment)
                .where(schema.stable_versions.c.retired_at.is_(None))
                .where(schema.stable_versions.c.version != keep_version)
                .values(retired_at=at)
            )
            if not retire.deployment_healthy:
                conn.execute(
                    update(schema.stable_versions)
                    .where(schema.stable_versions.c.deployment_id == before.id)
                    .values(healthy=False, retired_at=at)
                )
        if stable is not None:
            conn.execute(insert(schema.stable_versions).values(**dataclasses.asdict(stable)))

    def flush(self) -> None:
        """Write what a deferred store kept (nothing to do otherwise), in one transaction: the
        side records of every transition in the order they were saved, consecutive events in
        one statement, then each deployment's latest row in place of the one written before."""
        if not self._side_order:
            return
        pending, order = self._pending, self._side_order
        taken = dict.fromkeys(pending, 0)
        with self._transaction() as conn:
            events: list[EventRecord] = []
            for deployment_id in order:
                item = pending[deployment_id]
                batch, rollback, stable, retire, before = item.side[taken[deployment_id]]
                taken[deployment_id] += 1
                events.extend(batch)
                if rollback is None and stable is None and retire is None:
                    continue
                self._insert_events(conn, events)
                events = []
                self._write_side(conn, before, (), rollback, stable, retire)
            self._insert_events(conn, events)
            for item in pending.values():
                written, latest = item.written, item.latest
                values = _changed(written, latest)
                values["row_version"] = latest.row_version
                values["match_id"], values["match_row_version"] = written.id, written.row_version
                if conn.execute(_GUARDED_UPDATE, values).rowcount != 1:
                    raise StaleStateError(f"deployment {written.id} was advanced by another engine")
        # kept until written: a flush that failed leaves them for the next one
        self._pending, self._side_order = {}, []

    def get_deployment(self, deployment_id: str) -> DeploymentRecord:
        with self._connect() as conn:
            row = conn.execute(select(*_DEPLOYMENT_COLUMNS).where(schema.deployments.c.id == deployment_id)).first()
        if row is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return _deployment_from_row(row)

    def deployment_row_version(self, deployment_id: str) -> int:
        """The deployment's stored `row_version`, in a query that decodes no JSON column: whether
        a record read earlier is still the stored one (every write raises it). NotFoundError when
        there is no such deployment."""
        query = select(schema.deployments.c.row_version).where(schema.deployments.c.id == deployment_id)
        with self._connect() as conn:
            found = conn.execute(query).scalar()
        if found is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return int(found)

    def list_deployments(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active_only: bool = False,
        limit: int = 100,
    ) -> list[DeploymentRecord]:
        query = select(*_DEPLOYMENT_COLUMNS).order_by(schema.deployments.c.created_at.desc()).limit(limit)
        if service is not None:
            query = query.where(schema.deployments.c.service == service)
        if environment is not None:
            query = query.where(schema.deployments.c.environment == environment)
        if active_only:
            query = query.where(schema.deployments.c.phase.in_(ACTIVE_PHASES))
        with self._connect() as conn:
            return [_deployment_from_row(r) for r in conn.execute(query)]

    def active_deployment(self, service: str, environment: str) -> DeploymentRecord | None:
        found = self.list_deployments(service=service, environment=environment, active_only=True, limit=1)
        return found[0] if found else None

    def active_deployment_keys(self) -> list[tuple[str, str, str]]:
        """(id, service, environment) of every active deployment, oldest first, in one query that
        decodes no JSON column: what a driver needs to know which deployments to tick."""
        query = (
            select(schema.deployments.c.id, schema.deployments.c.service, schema.deployments.c.environment)
            .where(schema.deployments.c.phase.in_(ACTIVE_PHASES))
            .order_by(schema.deployments.c.created_at)
        )
        with self._connect() as conn:
            return [(str(r.id), str(r.service), str(r.environment)) for r in conn.execute(query)]

    def latest_deployments(self, environment: str, *, light: bool = False) -> dict[str, DeploymentRecord]:
        """The newest deployment of each service in `environment` (as `list_deployments(service=...,
        environment=..., limit=1)` gives it), in one query; services never deployed there are left out.

        `light`: each record's `status` holds only its `weights`, its `request` is empty and its
        `evidence` None, for a view of many deployments that shows none of them: decoding each
        deployment's whole status (several KB of JSON) is most of the cost of reading it."""
        table = schema.deployments
        columns = [c for c in _DEPLOYMENT_COLUMNS if c.name not in ("status", "request", "evidence")] + [
            table.c.status["weights"].label("weights")] if light else list(_DEPLOYMENT_COLUMNS)
        newest = (
            select(schema.deployments.c.service, func.max(schema.deployments.c.created_at).label("created_at"))
            .where(schema.deployments.c.environment == environment)
            .group_by(schema.deployments.c.service)
            .subquery()
        )
        query = (
            select(*columns)
            .join(newest, (schema.deployments.c.service == newest.c.service)
                  & (schema.deployments.c.created_at == newest.c.created_at))
            .where(schema.deployments.c.environment == environment)
        )
        found: dict[str, DeploymentRecord] = {}
        with self._connect() as conn:
            for row in conn.execute(query):
                if light:
                    values = dict(row._mapping)
                    weights = values.pop("weights")
                    record = DeploymentRecord(**values, status={} if weights is None else {"weights": weights},
                                              request={})
                else:
                    record = _deployment_from_row(row)
                if record.service not in found or record.id > found[record.service].id:
                    found[record.service] = record  # two created at the same instant: one, always the same
        return found

    def events(self, deployment_id: str) -> list[EventRecord]:
        query = (
            select(*_EVENT_COLUMNS)
            .where(schema.events.c.deployment_id == deployment_id)
            .order_by(schema.events.c.id)
        )
        with self._connect() as conn:
            return [_event_from_row(r) for r in conn.execute(query)]

    def events_since(self, after_id: int, *, limit: int = 500, deployment_id: str | None = None,
                     kinds: Collection[str] | None = None) -> list[EventRecord]:
        """Up to `limit` events with an id above `after_id`, in id order (the order they were
        written), each with its id; only `deployment_id`'s when given, only those of `kinds`
        when given (the others are not read at all).

        Ids become visible in order, so a reader that remembers the last id it saw never passes
        over an event committed later: on SQLite one transaction writes at a time, and on
        PostgreSQL a transaction writing events holds `EVENT_ORDER_LOCK` until it ends."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = (
            select(*_EVENT_COLUMNS)
            .where(schema.events.c.id > after_id)
            .order_by(schema.events.c.id)
            .limit(limit)
        )
        if deployment_id is not None:
            query = query.where(schema.events.c.deployment_id == deployment_id)
        if kinds is not None:
            query = query.where(schema.events.c.kind.in_(sorted(kinds)))
        with self._connect() as conn:
            return [_event_from_row(r) for r in conn.execute(query)]

    def last_event_id(self) -> int:
        """The id of the newest event, 0 when there is none: where a reader that wants only
        what happens from now on starts."""
        with self._connect() as conn:
            last = conn.execute(select(func.max(schema.events.c.id))).scalar()
        return int(last or 0)

    def add_events(self, events: Iterable[EventRecord]) -> None:
        """Append events; those of a fenced deployment are written only while its token is current."""
        events = list(events)
        with self._begin() as conn:
            if self._fences:
                self._check_fences(conn, dict.fromkeys(e.deployment_id for e in events))
            self._insert_events(conn, events, self._fence_tokens())

    @staticmethod
    def _insert_events(conn: Connection, events: Iterable[EventRecord],
                       tokens: Mapping[str, int] | None = None) -> None:
        """`tokens`: deployment id -> the fencing token its events are written with."""
        if conn.dialect.name == "sqlite":
            Store._insert_sqlite_events(conn, events, tokens)
            return
        rows = [_shallow(e) | {"data": redactor().redact(dict(e.data)),
                               "fencing_token": tokens.get(e.deployment_id) if tokens else None} for e in events]
        for row in rows:
            row.pop("id")  # the table numbers events itself
        if rows:
            # A sequence hands out ids as transactions ask, not as they commit: without this lock a
            # reader could see id 8 committed while 7 is still open, move its cursor past 7, and
            # never read it. Held until this transaction ends, the lock makes writers of events
            # take their ids and commit one at a time, as SQLite's single writer does.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_ORDER_LOCK})
            conn.execute(insert(schema.events), rows)

    @staticmethod
    def _insert_sqlite_events(conn: Connection, events: Iterable[EventRecord],
                              tokens: Mapping[str, int] | None = None) -> None:
        """The rows `insert(schema.events)` writes, in one statement the driver runs as it is: a
        simulation's store writes hundreds of events at once, and SQLAlchemy's processing of each
        row cost more than SQLite's. The data column holds json.dumps of the data, as the JSON
        type writes it."""
        masker = redactor()
        masked = bool(masker.values)
        rows = [(e.deployment_id, e.at, e.kind, masker.redact(e.message) if masked else e.message,
                 json.dumps(masker.redact(dict(e.data))), tokens.get(e.deployment_id) if tokens else None)
                for e in events]
        if rows:
            conn.exec_driver_sql(_INSERT_EVENT, rows)

    # ------------------------------------------------------------ event cursors

    def cursor(self, name: str) -> int:
        """The id of the last event consumer `name` is done with. A consumer that has not stored
        one yet starts at 0, or, in a database that held events before it had cursors, at the
        last of those events."""
        names = (name, schema.CURSOR_START)
        query = select(schema.cursors.c.name, schema.cursors.c.position).where(schema.cursors.c.name.in_(names))
        with self._connect() as conn:
            found = {row.name: int(row.position) for row in conn.execute(query)}
        return found.get(name, found.get(schema.CURSOR_START, 0))

    def start_cursor(self, name: str, position: int, *, at: float | None = None) -> int:
        """Give consumer `name` a cursor at `position` unless it has one already (a consumer that
        is new starts there instead of at the first event). Returns the position it holds."""
        if not name or name == schema.CURSOR_START:
            raise ValueError(f"{name!r} cannot name a cursor")
        table = schema.cursors
        with contextlib.suppress(sa_exc.IntegrityError), self._begin() as conn:  # another writer was first
            if conn.execute(select(table.c.position).where(table.c.name == name)).first() is None:
                conn.execute(insert(table).values(name=name, position=position,
                                                  updated_at=time.time() if at is None else at))
        return self.cursor(name)

    def advance_cursor(self, name: str, to_id: int, *, at: float | None = None) -> int:
        """Move consumer `name`'s cursor to `to_id`; a cursor never moves backwards, so a lower
        `to_id` leaves it where it is. Returns the position it holds afterwards."""
        if not name or name == schema.CURSOR_START:
            raise ValueError(f"{name!r} cannot name a cursor")
        when = time.time() if at is None else at
        table = schema.cursors
        for _ in range(2):
            try:
                with self._begin() as conn:
                    conn.execute(
                        update(table)
                        .where(table.c.name == name)
                        .where(table.c.position < to_id)
                        .values(position=to_id, updated_at=when)
                    )
                    row = conn.execute(select(table.c.position).where(table.c.name == name)).first()
                    if row is not None:
                        return int(row.position)
                    start = conn.execute(
                        select(table.c.position).where(table.c.name == schema.CURSOR_START)
                    ).scalar()
                    position = max(to_id, int(start or 0))
                    conn.execute(insert(table).values(name=name, position=position, updated_at=when))
                    return position
            except sa_exc.IntegrityError:
                continue  # another writer created the row first; the update applies now
        return self.cursor(name)

    # ------------------------------------------------------------ leases and fencing

    def take_lease(self, name: str, holder: str, *, now: float, duration: float,
                   take_from: str = "") -> LeaseRecord:
        """Take lease `name` for `holder` until `now + duration`, or renew it when `holder` has
        it already. A lease that is free (never taken, released) or expired at `now` is taken
        with a fencing token one above the last, and so is one `take_from` holds (a holder the
        caller knows is gone); one another holder has is left alone. Returns the lease as it
        stands afterwards: `holder`'s when it was taken, else the other's."""
        table = schema.leases
        for _ in range(5):
            try:
                with self._begin() as conn:
                    row = conn.execute(select(table).where(table.c.name == name)).first()
                    if row is None:
                        taken = LeaseRecord(name, holder, 1, now, now, now + duration)
                        conn.execute(insert(table).values(**dataclasses.asdict(taken)))
                        return taken
                    found = LeaseRecord(**dict(row._mapping))
                    if found.holder == holder:  # its own (expired or not: no one took it meanwhile)
                        taken = dataclasses.replace(found, renewed_at=now, expires_at=now + duration)
                    elif found.holder and found.expires_at > now and found.holder != take_from:
                        return found
                    else:
                        taken = LeaseRecord(name, holder, found.token + 1, now, now, now + duration)
                    result = conn.execute(
                        update(table).where(table.c.name == name).where(table.c.token == found.token)
                        .where(table.c.holder == found.holder).values(**dataclasses.asdict(taken))
                    )
                    if result.rowcount == 1:
                        return taken
            except sa_exc.IntegrityError:
                pass  # another holder inserted the row first: read it again
        lease = self.lease(name)
        assert lease is not None
        return lease

    def renew_lease(self, name: str, holder: str, token: int, *, now: float, duration: float) -> bool:
        """Extend `holder`'s lease to `now + duration`; False when its token is no longer the current one."""
        table = schema.leases
        with self._begin() as conn:
            result = conn.execute(
                update(table).where(table.c.name == name).where(table.c.holder == holder)
                .where(table.c.token == token).values(renewed_at=now, expires_at=now + duration)
            )
        return result.rowcount == 1

    def release_lease(self, name: str, holder: str, token: int) -> bool:
        """Let `holder`'s lease go (another controller may take it at once); its row and token
        stay, so the next token is still higher. False when it was not `holder`'s any more."""
        table = schema.leases
        with self._begin() as conn:
            result = conn.execute(
                update(table).where(table.c.name == name).where(table.c.holder == holder)
                .where(table.c.token == token).values(holder="", expires_at=0.0)
            )
        return result.rowcount == 1

    def lease(self, name: str) -> LeaseRecord | None:
        with self._connect() as conn:
            row = conn.execute(select(schema.leases).where(schema.leases.c.name == name)).first()
        return None if row is None else LeaseRecord(**dict(row._mapping))

    def fence(self, deployment_id: str, holder: str, token: int) -> None:
        """From now on every write this store makes for `deployment_id` (its transitions, events
        and side rows) carries `token` and is refused, in its own transaction, with
        LeaseLostError when `holder`'s token is no longer the lease's current one."""
        self._fences[deployment_id] = (holder, token)

    def unfence(self, deployment_id: str) -> None:
        self._fences.pop(deployment_id, None)

    def _fence_tokens(self) -> dict[str, int]:
        return {deployment_id: token for deployment_id, (_, token) in self._fences.items()}

    def _check_fences(self, conn: Connection, deployment_ids: Iterable[str]) -> int | None:
        """Check the fences of `deployment_ids` in the transaction of `conn`; the token of the last
        one fenced (None when none is). LeaseLostError when one's token is not current."""
        token = None
        for deployment_id in deployment_ids:
            held = self._fences.get(deployment_id)
            if held is None:
                continue
            holder, token = held
            result = conn.execute(_FENCE, {"fence_name": deployment_id, "fence_holder": holder, "fence_token": token})
            if result.rowcount != 1:
                self.refused_writes += 1
                row = conn.execute(select(schema.leases).where(schema.leases.c.name == deployment_id)).first()
                now = (f"token {row.token}, held by {row.holder or 'no one'}" if row is not None else "no lease")
                raise LeaseLostError(
                    f"deployment {deployment_id}: write refused: this controller's lease (token {token}) is no "
                    f"longer the current one ({now}); another controller drives it now"
                )
        return token

    # ------------------------------------------------------------ rollbacks

    @staticmethod
    def _upsert_rollback(conn: Connection, record: RollbackRecord) -> None:
        values = _shallow(record)
        exists = conn.execute(select(schema.rollbacks.c.id).where(schema.rollbacks.c.id == record.id)).first()
        if exists:
            conn.execute(update(schema.rollbacks).where(schema.rollbacks.c.id == record.id).values(**values))
        else:
            conn.execute(insert(schema.rollbacks).values(**values))

    def rollbacks(self, *, service: str | None = None, deployment_id: str | None = None) -> list[RollbackRecord]:
        query = select(schema.rollbacks).order_by(schema.rollbacks.c.timestamp.desc())
        if service is not None:
            query = query.where(schema.rollbacks.c.service == service)
        if deployment_id is not None:
            query = query.where(schema.rollbacks.c.deployment_id == deployment_id)
        with self._connect() as conn:
            return [RollbackRecord(**dict(r._mapping)) for r in conn.execute(query)]

    # ------------------------------------------------------------ stable versions

    def stable_versions(self, service: str, environment: str) -> list[StableVersion]:
        query = (
            select(schema.stable_versions)
            .where(schema.stable_versions.c.service == service)
            .where(schema.stable_versions.c.environment == environment)
            .order_by(schema.stable_versions.c.promoted_at.desc(), schema.stable_versions.c.id.desc())
        )
        with self._connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row.pop("id")
        return [StableVersion(**row) for row in rows]

    def current_version(self, service: str, environment: str) -> str | None:
        """The version serving now: the newest promoted one not yet retired."""
        for row in self.stable_versions(service, environment):
            if row.retired_at is None and row.healthy:
                return row.version
        return None

    def current_versions(self, environment: str) -> dict[str, str]:
        """`current_version` of every service serving in `environment`, in one query; a service
        that serves nothing there is left out."""
        table = schema.stable_versions
        query = (
            select(table.c.service, table.c.version)
            .where(table.c.environment == environment)
            .where(table.c.retired_at.is_(None))
            .where(table.c.healthy.is_(True))
            .order_by(table.c.promoted_at.desc(), table.c.id.desc())
        )
        found: dict[str, str] = {}
        with self._connect() as conn:
            for service, version in conn.execute(query):
                found.setdefault(str(service), str(version))
        return found

    def record_stable(self, stable: StableVersion) -> None:
        with self._begin() as conn:
            conn.execute(insert(schema.stable_versions).values(**dataclasses.asdict(stable)))

    # ------------------------------------------------------------ service settings

    def service_rollback_settings(self, service: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute(
                select(schema.service_settings.c.rollback).where(schema.service_settings.c.service == service)
            ).first()
        return dict(row[0]) if row and row[0] else None

    def set_service_rollback_settings(self, service: str, settings: Mapping[str, Any], at: float) -> None:
        with self._begin() as conn:
            conn.execute(delete(schema.service_settings).where(schema.service_settings.c.service == service))
            conn.execute(
                insert(schema.service_settings).values(service=service, rollback=dict(settings), updated_at=at)
            )

    def clear_service_rollback_settings(self, service: str) -> bool:
        """Drop the settings `rollback-manager --configure` stored for `service`; True when there were any."""
        with self._begin() as conn:
            result = conn.execute(delete(schema.service_settings).where(schema.service_settings.c.service == service))
        return bool(result.rowcount)

    # ------------------------------------------------------------ instance ledger (platforms.base.InstanceLedger)

    def save_instance(self, record: Mapping[str, object]) -> None:
        values = {
            "id": str(record["id"]),
            "service": str(record.get("service", "")),
            "environment": str(record.get("environment", "")),
            "record": dict(record),
        }
        with self._begin() as conn:
            conn.execute(delete(schema.instances).where(schema.instances.c.id == values["id"]))
            conn.execute(insert(schema.instances).values(**values))

    def delete_instance(self, instance_id: str) -> None:
        with self._begin() as conn:
            conn.execute(delete(schema.instances).where(schema.instances.c.id == instance_id))

    def load_instances(self, service: str | None = None, environment: str | None = None) -> list[dict[str, object]]:
        query = select(schema.instances.c.record)
        if service is not None:
            query = query.where(schema.instances.c.service == service)
        if environment is not None:
            query = query.where(schema.instances.c.environment == environment)
        with self._connect() as conn:
            return [dict(r[0]) for r in conn.execute(query)]

    def forget_environment(self, environment: str, at: float | None = None, *, service: str | None = None) -> None:
        """Drop an environment's live state (instances, prepared state); its history stays. The
        versions it served are retired at `at` (default: now): nothing serves there any more, so
        the next deployment is a first one, never a canary from a version with no instance.
        With `service`, that service's only (its instances and versions; the environment's
        prepared state stays): the service was removed from the environment."""
        instances, stable = schema.instances, schema.stable_versions
        drop = delete(instances).where(instances.c.environment == environment)
        retire = update(stable).where(stable.c.environment == environment).where(stable.c.retired_at.is_(None))
        if service is not None:
            drop = drop.where(instances.c.service == service)
            retire = retire.where(stable.c.service == service)
        with self._begin() as conn:
            conn.execute(drop)
            if service is None:
                conn.execute(delete(schema.environment_state).where(schema.environment_state.c.name == environment))
            conn.execute(retire.values(retired_at=time.time() if at is None else at))

    def save_environment_state(self, name: str, state: Mapping[str, Any], at: float) -> None:
        with self._begin() as conn:
            conn.execute(delete(schema.environment_state).where(schema.environment_state.c.name == name))
            conn.execute(insert(schema.environment_state).values(name=name, prepared_at=at, state=dict(state)))

    def environment_state(self, name: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute(
                select(schema.environment_state.c.state).where(schema.environment_state.c.name == name)
            ).first()
        return dict(row[0]) if row else None

    # ------------------------------------------------------------ build artifacts and pipeline runs

    def register_artifact(self, record: ArtifactRecord) -> None:
        """Record `record` as the release of its service and version, in place of any earlier one."""
        with self._begin() as conn:
            conn.execute(
                delete(schema.artifacts)
                .where(schema.artifacts.c.service == record.service)
                .where(schema.artifacts.c.version == record.version)
            )
            conn.execute(insert(schema.artifacts).values(**dataclasses.asdict(record)))

    def artifact(self, service: str, version: str) -> ArtifactRecord | None:
        """The release registered for `version` of `service`, None when no pipeline built one."""
        query = (
            select(schema.artifacts)
            .where(schema.artifacts.c.service == service)
            .where(schema.artifacts.c.version == version)
        )
        with self._connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else ArtifactRecord(**dict(row._mapping))

    def save_pipeline_run(self, record: PipelineRunRecord) -> None:
        """Insert the run, or write it in place of the row with its id."""
        values = _shallow(record)
        with self._begin() as conn:
            conn.execute(delete(schema.pipeline_runs).where(schema.pipeline_runs.c.id == record.id))
            conn.execute(insert(schema.pipeline_runs).values(**values))

    def get_pipeline_run(self, run_id: str) -> PipelineRunRecord:
        with self._connect() as conn:
            row = conn.execute(select(schema.pipeline_runs).where(schema.pipeline_runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"pipeline run {run_id!r} not found")
        return PipelineRunRecord(**dict(row._mapping))

    def pipeline_runs(self, *, service: str | None = None, limit: int = 100) -> list[PipelineRunRecord]:
        """The newest runs first, of `service` when given."""
        query = (
            select(schema.pipeline_runs)
            .order_by(schema.pipeline_runs.c.started_at.desc(), schema.pipeline_runs.c.id.desc())
            .limit(limit)
        )
        if service is not None:
            query = query.where(schema.pipeline_runs.c.service == service)
        with self._connect() as conn:
            return [PipelineRunRecord(**dict(r._mapping)) for r in conn.execute(query)]

    # ------------------------------------------------------------ API tokens and the audit table

    def create_token(self, record: TokenRecord) -> None:
        """Insert a new token; ConflictError when a token of that name exists (revoked ones too:
        their name stays in the audit table, so it is never given to another token)."""
        with self._begin() as conn:
            taken = conn.execute(select(schema.api_tokens.c.id).where(schema.api_tokens.c.name == record.name)).first()
            if taken is not None:
                raise ConflictError(f"a token named {record.name!r} exists already (names are never reused, "
                                    "even after `safeship token revoke`)")
            conn.execute(insert(schema.api_tokens).values(**dataclasses.asdict(record)))

    def tokens(self, *, include_revoked: bool = True) -> list[TokenRecord]:
        """Every token, oldest first."""
        query = select(schema.api_tokens).order_by(schema.api_tokens.c.created_at, schema.api_tokens.c.id)
        if not include_revoked:
            query = query.where(schema.api_tokens.c.revoked_at.is_(None))
        with self._connect() as conn:
            return [TokenRecord(**dict(r._mapping)) for r in conn.execute(query)]

    def token_by_sha256(self, digest: str) -> TokenRecord | None:
        """The token (revoked or not) whose SHA-256 is `digest`."""
        with self._connect() as conn:
            row = conn.execute(select(schema.api_tokens).where(schema.api_tokens.c.token_sha256 == digest)).first()
        return None if row is None else TokenRecord(**dict(row._mapping))

    def token_by_id(self, token_id: str) -> TokenRecord | None:
        with self._connect() as conn:
            row = conn.execute(select(schema.api_tokens).where(schema.api_tokens.c.id == token_id)).first()
        return None if row is None else TokenRecord(**dict(row._mapping))

    def touch_token(self, token_id: str, at: float) -> None:
        """Record that the token was used at `at`."""
        with self._begin() as conn:
            conn.execute(update(schema.api_tokens).where(schema.api_tokens.c.id == token_id).values(last_used_at=at))

    def revoke_token(self, name: str, at: float) -> TokenRecord:
        """Revoke the token named `name` (from then on it is refused); NotFoundError for a name no
        token has, ConflictError for one revoked already."""
        with self._begin() as conn:
            row = conn.execute(select(schema.api_tokens).where(schema.api_tokens.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"no token is named {name!r} (`safeship token list` shows them)")
            if row.revoked_at is not None:
                raise ConflictError(f"the token {name!r} was revoked already")
            conn.execute(update(schema.api_tokens).where(schema.api_tokens.c.id == row.id).values(revoked_at=at))
            return TokenRecord(**{**dict(row._mapping), "revoked_at": at})

    def append_audit(self, record: AuditRecord) -> int:
        """Append one row to the audit table (the only way rows get there); its id."""
        values = {k: v for k, v in dataclasses.asdict(record).items() if k != "id"}
        masker = redactor()
        if masker.values:
            values["outcome"] = masker.redact(values["outcome"])
        with self._begin() as conn:
            result = conn.execute(insert(schema.audit).values(**values))
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def audit(self, *, limit: int = 100, actor: str | None = None) -> list[AuditRecord]:
        """The newest rows first, of `actor` when given."""
        query = select(schema.audit).order_by(schema.audit.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(schema.audit.c.actor == actor)
        with self._connect() as conn:
            return [AuditRecord(**dict(r._mapping)) for r in conn.execute(query)]
