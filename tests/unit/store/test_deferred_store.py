"""A deferred store (a simulation's private in-memory database) keeps transitions in memory and
writes them when anything touches the database: it must leave exactly what a store that writes
every transition at once leaves, refuse a stale transition the same way, and never let a read
miss a transition that was saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, inspect, text

from safeship.errors import StaleStateError
from safeship.store import DeploymentRecord, EventRecord, Retirement, RollbackRecord, StableVersion, Store, schema
from safeship.store.store import _shallow

TABLES = ("deployments", "events", "rollbacks", "stable_versions")


def deployment(id_: str) -> DeploymentRecord:
    return DeploymentRecord(
        id=id_, service="svc", environment="prod", version="v2", from_version="v1",
        strategy="canary", strategy_reason="test", policy="safeship", phase="pending", step_index=0,
        plan=[{"kind": "weights", "weights": {"v2": 5}}], status={}, request={"service_name": "svc"},
        created_at=1.0, updated_at=1.0, phase_started_at=1.0, step_started_at=1.0,
    )


def rows(store: Store) -> dict[str, list[Any]]:
    with store.engine.connect() as conn:
        return {table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
                for table in TABLES}


def drive(store: Store) -> list[DeploymentRecord]:
    """Two deployments moved through ticks with events, a promotion and a rollback, interleaved;
    returns what each save returned."""
    store.record_stable(StableVersion("svc", "prod", "v1", None, 0.0, None, True))
    a, b = deployment("deploy-a"), deployment("deploy-b").replace(service="other")
    store.create_deployment(a, [EventRecord(a.id, 1.0, "created", "a")])
    store.create_deployment(b, [EventRecord(b.id, 1.0, "created", "b")])
    returned = []
    for tick in range(1, 6):
        now = 1.0 + tick
        status = {"look": tick, "snap": {"v2": [tick] * 4}}
        a2 = a.replace(phase="progressing", step_index=tick, status=status, updated_at=now)
        a = store.save_transition(a, a2, [EventRecord(a.id, now, "look", f"look {tick}", {"n": tick})])
        returned.append(a)
        if tick == 2:
            b = store.save_transition(b, b.replace(phase="preparing", updated_at=now))
            returned.append(b)
        if tick == 3:
            promoted = a.replace(decision="promote", decided_at=now, updated_at=now)
            a = store.save_transition(a, promoted, [EventRecord(a.id, now, "promoted", "v2 live")],
                                      stable=StableVersion("svc", "prod", "v2", a.id, now, None, True),
                                      retire=Retirement("svc", "prod", "v2", now, True))
            returned.append(a)
    rollback = RollbackRecord("rollback-1", b.id, "other", "prod", "v2", "v1", "bad", {"e": 1}, True, 9.0,
                              None, None, 9.0)
    b = store.save_transition(b, b.replace(phase="rolling_back", decision="rollback", reason="bad", updated_at=9.0),
                              [EventRecord(b.id, 9.0, "trigger", "bad")], rollback=rollback)
    done = RollbackRecord(**{**rollback.__dict__, "duration_s": 1.0, "success": True, "timestamp": 10.0})
    b = store.save_transition(b, b.replace(phase="rolled_back", finished_at=10.0, updated_at=10.0), [],
                              rollback=done, retire=Retirement("other", "prod", "v1", 10.0, False))
    returned.append(b)
    return returned


def test_a_deferred_store_leaves_what_writing_every_transition_leaves() -> None:
    plain, deferred = Store("sqlite://"), Store("sqlite://", deferred=True)
    assert drive(plain) == drive(deferred)
    deferred.flush()
    assert rows(deferred) == rows(plain)
    assert deferred.get_deployment("deploy-a") == plain.get_deployment("deploy-a")


def test_a_read_sees_every_transition_saved_before_it() -> None:
    store = Store("sqlite://", deferred=True)
    a = deployment("deploy-a")
    store.create_deployment(a)
    a = store.save_transition(a, a.replace(phase="preparing", updated_at=2.0), [EventRecord(a.id, 2.0, "phase", "p")])
    assert store.get_deployment(a.id) == a
    assert [e.message for e in store.events(a.id)] == ["p"]
    a = store.save_transition(a, a.replace(phase="progressing", updated_at=3.0))
    assert [d.phase for d in store.list_deployments()] == ["progressing"]


def test_a_stale_transition_is_refused_as_by_the_database() -> None:
    for store in (Store("sqlite://"), Store("sqlite://", deferred=True)):
        a = deployment("deploy-a")
        store.create_deployment(a)
        moved = store.save_transition(a, a.replace(phase="preparing"))
        with pytest.raises(StaleStateError):
            store.save_transition(a, a.replace(phase="cancelled"))
        store.flush()
        assert store.get_deployment(a.id) == moved


def test_a_row_the_store_did_not_write_is_saved_at_once_against_the_database() -> None:
    store = Store("sqlite://", deferred=True)
    a = deployment("deploy-a")
    with store.engine.begin() as conn:  # a row written by other means: its version is the database's to check
        conn.execute(insert(schema.deployments).values(**_shallow(a)))
    with pytest.raises(StaleStateError):
        store.save_transition(a.replace(row_version=7), a.replace(phase="preparing"))
    moved = store.save_transition(a, a.replace(phase="preparing"))
    with store.engine.connect() as conn:  # written already, without a flush
        phase = conn.execute(text("SELECT phase, row_version FROM deployments")).one()
    assert tuple(phase) == ("preparing", moved.row_version)


def test_only_a_private_in_memory_database_can_be_deferred(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="private in-memory"):
        Store(f"sqlite:///{tmp_path / 'state.db'}", deferred=True)


def _shape(engine: Engine) -> dict[str, Any]:
    """Every table's columns (name, type, nullable, primary key), indexes and unique constraints, and the triggers."""
    seen = inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(set(seen.get_table_names()) - {"alembic_version"}):
        shape[table] = (
            [(c["name"], str(c["type"]), c["nullable"], c.get("primary_key")) for c in seen.get_columns(table)],
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in seen.get_indexes(table)),
            sorted(tuple(u["column_names"]) for u in seen.get_unique_constraints(table)),
        )
    with engine.connect() as conn:
        shape["triggers"] = conn.execute(text("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' "
                                              "ORDER BY name")).all()
    return shape


def test_a_new_in_memory_store_has_the_schema_the_migrations_make(tmp_path: Path) -> None:
    migrated = Store(f"sqlite:///{tmp_path / 'state.db'}")
    memory = Store("sqlite://")
    try:
        expected = _shape(migrated.engine)
        assert "leases" in expected and expected["triggers"]
        assert _shape(memory.engine) == expected
    finally:
        migrated.close()
        memory.close()


def test_events_are_written_as_the_sqlalchemy_insert_writes_them() -> None:
    data: dict[str, Any] = {"e_values": {"errors": 1e-300, "p99": 12.5}, "nested": [1, 2.5, None, True, "naïve ✓"],
                            "nan": float("nan"), "big": 10**20}
    events = [EventRecord("deploy-a", 1.25, "look", "look at 5%: ✓ \u2028 line", data),
              EventRecord("deploy-a", 2.0, "phase", "phase", {})]
    store = Store("sqlite://")
    store.add_events(events)
    with store.engine.begin() as conn:  # the same events through SQLAlchemy's insert and JSON type
        conn.execute(insert(schema.events), [
            {k: v for k, v in _shallow(e).items() if k != "id"} | {"data": dict(e.data)} for e in events])
    with store.engine.connect() as conn:
        written = [tuple(r) for r in conn.execute(text("SELECT deployment_id, at, kind, message, data FROM events "
                                                       "ORDER BY id"))]
    assert written[:2] == written[2:]
    read = store.events("deploy-a")
    assert [(e.at, e.kind, e.message) for e in read[:2]] == [(e.at, e.kind, e.message) for e in events]
    assert read[0].data["e_values"] == data["e_values"] and read[0].data["big"] == 10**20
