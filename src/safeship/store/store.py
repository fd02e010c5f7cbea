"""The store: one SQLite file (or any SQLAlchemy URL). Every state transition is one transaction,
guarded by `row_version` so two engines can never both advance the same deployment."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, delete, event, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from safeship.errors import NotFoundError, StaleStateError
from safeship.redaction import redactor
from safeship.store import edge, schema

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


# Built once: this runs on every state transition, and building it costs more than running it.
_GUARDED_UPDATE = (
    update(schema.deployments)
    .where(schema.deployments.c.id == bindparam("match_id"))
    .where(schema.deployments.c.row_version == bindparam("match_row_version"))
)


_FREE_TEXT = ("reason", "evidence", "request", "message", "data")


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


def open_engine(url: str, *, busy_timeout_s: float | None = None) -> Engine:
    """An engine on `url` with the schema in place. InputError (exit 2) for a URL that cannot be
    one, StoreError (exit 4) for a database that cannot be used; never a driver's own error."""
    target = edge.parse(url)
    waited = edge.busy_timeout_s() if busy_timeout_s is None else busy_timeout_s
    edge.ensure_directory(target)
    connect_url = edge.sqlite_connect_url(target) if target.is_sqlite else target.url
    try:
        if target.is_sqlite and target.sqlite_path is None and "uri" not in target.url.query:
            engine = create_engine(connect_url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif target.is_sqlite:
            engine = create_engine(connect_url, connect_args={"check_same_thread": False, "timeout": waited})
        else:
            engine = create_engine(connect_url)
    except ImportError as exc:
        raise edge.driver_missing(target, exc) from exc
    except sa_exc.ArgumentError as exc:
        raise edge.StoreURLError(url, f"{target.shown!r} cannot be used: {exc}") from exc
    if target.is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas(int(waited * 1000)))
    try:
        with edge.at_edge(target, waited):
            schema.metadata.create_all(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _deployment_from_row(row: Any) -> DeploymentRecord:
    values = dict(row._mapping)
    return DeploymentRecord(**values)


class Store:
    def __init__(self, url: str = "sqlite:///.safeship/state.db") -> None:
        self.url = url
        self._target = edge.parse(url)
        self._busy_timeout_s = edge.busy_timeout_s()
        self.engine = open_engine(url, busy_timeout_s=self._busy_timeout_s)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction; a store that cannot be used raises StoreError (exit 4)."""
        with edge.at_edge(self._target, self._busy_timeout_s), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reading; a store that cannot be used raises StoreError (exit 4)."""
        with edge.at_edge(self._target, self._busy_timeout_s), self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ deployments

    def create_deployment(self, record: DeploymentRecord, events: Iterable[EventRecord] = ()) -> None:
        """Insert a new deployment; refuses (ConflictError from the caller's check) are done before."""
        with self._begin() as conn:
            conn.execute(insert(schema.deployments).values(**_shallow(record)))
            self._insert_events(conn, events)

    def save_transition(
        self,
        before: DeploymentRecord,
        after: DeploymentRecord,
        events: Iterable[EventRecord] = (),
        *,
        rollback: RollbackRecord | None = None,
        stable: StableVersion | None = None,
        retire: tuple[str, str, str, float, bool] | None = None,
    ) -> DeploymentRecord:
        """Write `after` in place of `before` in one transaction, with its events and side records.

        Raises StaleStateError when another engine moved the row first."""
        values = _shallow(after)
        values.pop("id")
        values["row_version"] = before.row_version + 1
        values["match_id"], values["match_row_version"] = before.id, before.row_version
        with self._begin() as conn:
            result = conn.execute(_GUARDED_UPDATE, values)
            if result.rowcount != 1:
                raise StaleStateError(f"deployment {before.id} was advanced by another engine")
            self._insert_events(conn, events)
            if rollback is not None:
                self._upsert_rollback(conn, rollback)
            if retire is not None:
                service, environment, keep_version, at, healthy = retire
                conn.execute(
                    update(schema.stable_versions)
                    .where(schema.stable_versions.c.service == service)
                    .where(schema.stable_versions.c.environment == environment)
                    .where(schema.stable_versions.c.retired_at.is_(None))
                    .where(schema.stable_versions.c.version != keep_version)
                    .values(retired_at=at)
                )
                if not healthy:
                    conn.execute(
                        update(schema.stable_versions)
                        .where(schema.stable_versions.c.deployment_id == before.id)
                        .values(healthy=False, retired_at=at)
                    )
            if stable is not None:
                conn.execute(insert(schema.stable_versions).values(**dataclasses.asdict(stable)))
        return after.replace(row_version=before.row_version + 1)

    def get_deployment(self, deployment_id: str) -> DeploymentRecord:
        with self._connect() as conn:
            row = conn.execute(select(schema.deployments).where(schema.deployments.c.id == deployment_id)).first()
        if row is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return _deployment_from_row(row)

    def list_deployments(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active_only: bool = False,
        limit: int = 100,
    ) -> list[DeploymentRecord]:
        query = select(schema.deployments).order_by(schema.deployments.c.created_at.desc()).limit(limit)
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

    def events(self, deployment_id: str) -> list[EventRecord]:
        query = (
            select(schema.events)
            .where(schema.events.c.deployment_id == deployment_id)
            .order_by(schema.events.c.id)
        )
        with self._connect() as conn:
            return [
                EventRecord(r.deployment_id, r.at, r.kind, r.message, r.data or {})
                for r in conn.execute(query)
            ]

    def add_events(self, events: Iterable[EventRecord]) -> None:
        with self._begin() as conn:
            self._insert_events(conn, events)

    @staticmethod
    def _insert_events(conn: Connection, events: Iterable[EventRecord]) -> None:
        rows = [_shallow(e) | {"data": redactor().redact(dict(e.data))} for e in events]
        if rows:
            conn.execute(insert(schema.events), rows)

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

    def forget_environment(self, environment: str) -> None:
        """Drop an environment's live state (instances, prepared state); its history stays."""
        with self._begin() as conn:
            conn.execute(delete(schema.instances).where(schema.instances.c.environment == environment))
            conn.execute(delete(schema.environment_state).where(schema.environment_state.c.name == environment))

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


