"""The audit table is append-only: SQLite triggers refuse an UPDATE or DELETE whoever sends it (the
store, SQLAlchemy, the sqlite3 shell), and an existing state.db from before tokens and the audit
table is upgraded in place, its rows kept."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, update
from sqlalchemy.exc import IntegrityError

from safeship.store import AuditRecord, Store, TokenRecord, schema

OLD_TABLES = [t for t in schema.metadata.sorted_tables if t.name not in ("api_tokens", "audit")]


def _row(actor: str = "local admin") -> AuditRecord:
    return AuditRecord(at=time.time(), actor=actor, role="admin", action="POST /deployments",
                       target="user-service/staging", source="127.0.0.1:5000", status=201, outcome="ok")


def test_rows_are_appended_and_read_newest_first(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/state.db")
    try:
        first = store.append_audit(_row("a"))
        second = store.append_audit(_row("b"))
        assert second > first
        assert [r.actor for r in store.audit()] == ["b", "a"]
        assert [r.actor for r in store.audit(actor="a")] == ["a"]
        assert store.audit(limit=1)[0].id == second
    finally:
        store.close()


@pytest.mark.parametrize("url", ["file", "memory"])
def test_update_and_delete_of_audit_rows_are_refused(tmp_path: Path, url: str) -> None:
    store = Store(f"sqlite:///{tmp_path}/state.db" if url == "file" else "sqlite://")
    try:
        store.append_audit(_row())
        with store.engine.begin() as conn, pytest.raises(IntegrityError, match="append-only"):
            conn.execute(update(schema.audit).values(actor="someone else"))
        with store.engine.begin() as conn, pytest.raises(IntegrityError, match="append-only"):
            conn.execute(delete(schema.audit))
        assert [r.actor for r in store.audit()] == ["local admin"]
    finally:
        store.close()


def test_the_sqlite3_shell_cannot_change_or_delete_rows_either(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(f"sqlite:///{path}").close()
    store = Store(f"sqlite:///{path}")
    store.append_audit(_row())
    store.close()
    with sqlite3.connect(path) as db:
        for statement in ("UPDATE audit SET outcome = 'nothing happened'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        assert db.execute("SELECT outcome FROM audit").fetchall() == [("ok",)]


def test_an_existing_state_db_without_the_new_tables_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(old, tables=OLD_TABLES)
    with old.begin() as conn:
        conn.exec_driver_sql("INSERT INTO service_settings (service, rollback, updated_at) VALUES ('a', NULL, 1.0)")
    old.dispose()

    store = Store(f"sqlite:///{path}")
    try:
        store.append_audit(_row())
        store.create_token(TokenRecord(id="tok-0123456789", name="ci", token_sha256="0" * 64, role="viewer",
                                       environments=None, created_at=1.0))
        assert [t.name for t in store.tokens()] == ["ci"]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        triggers = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"audit_no_update", "audit_no_delete"} <= triggers
        assert db.execute("SELECT service FROM service_settings").fetchall() == [("a",)]
