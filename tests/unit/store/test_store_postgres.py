"""The store on a real PostgreSQL server: the backend-agnostic store tests run again here with a
`store` on PostgreSQL, and what only PostgreSQL can get wrong is checked beside them (JSON and
float columns, generated ids, the audit table's triggers, upserts that race)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError
from test_artifacts import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_an_artifact_is_registered_per_version_and_replaced_by_a_rebuild,
    test_check_artifact_passes_unbuilt_and_intact_versions_and_refuses_changed_bytes,
    test_pipeline_runs_round_trip_newest_first,
)
from test_deferred_store import drive
from test_event_cursors import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_a_cursor_starts_at_zero_and_never_moves_backwards,
    test_events_carry_their_id_in_the_per_deployment_history,
    test_events_since_reads_in_written_order_with_ids,
    test_events_since_starts_after_the_id_honours_limit_and_deployment,
)

from safeship.errors import StoreError
from safeship.store import BUSY_TIMEOUT_ENV, AuditRecord, EventRecord, Store, TokenRecord, schema


@pytest.fixture
def store(pg_server) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    opened = Store(pg_server.new_database())
    try:
        yield opened
    finally:
        opened.close()


def test_a_postgresql_url_without_a_driver_uses_psycopg(pg_server) -> None:  # type: ignore[no-untyped-def]
    url = pg_server.new_database().replace("postgresql+psycopg://", "postgresql://")
    store = Store(url)
    try:
        assert store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


def test_transitions_with_side_records_read_back_as_on_sqlite(store: Store) -> None:
    reference = Store("sqlite://")
    assert drive(store) == drive(reference)  # every saved record, with its row_version
    for deployment_id in ("deploy-a", "deploy-b"):
        assert store.get_deployment(deployment_id) == reference.get_deployment(deployment_id)
        assert store.events(deployment_id) == reference.events(deployment_id)
    assert store.rollbacks() == reference.rollbacks()
    for service in ("svc", "other"):
        assert store.stable_versions(service, "prod") == reference.stable_versions(service, "prod")
    assert store.current_version("svc", "prod") == "v2"
    status = store.get_deployment("deploy-a").status
    assert status == {"look": 5, "snap": {"v2": [5, 5, 5, 5]}}  # JSON, not text
    assert store.get_deployment("deploy-a").updated_at == 6.0


def test_instances_settings_environment_state_tokens_and_audit(store: Store) -> None:
    store.save_instance({"id": "svc-v1-0", "service": "svc", "environment": "prod", "pid": 7})
    store.save_instance({"id": "svc-v1-0", "service": "svc", "environment": "prod", "pid": 8})  # an upsert
    assert store.load_instances("svc") == [{"id": "svc-v1-0", "service": "svc", "environment": "prod", "pid": 8}]
    store.set_service_rollback_settings("svc", {"auto": True}, 1.0)
    assert store.service_rollback_settings("svc") == {"auto": True}
    store.save_environment_state("prod", {"dirs": ["/x"]}, 1.5)
    assert store.environment_state("prod") == {"dirs": ["/x"]}
    store.forget_environment("prod", at=2.0)
    assert store.load_instances() == [] and store.environment_state("prod") is None
    assert store.start_cursor("sink", 5) == 5 and store.start_cursor("sink", 9) == 5

    store.create_token(TokenRecord(id="tok-0123456789", name="ci", token_sha256="0" * 64, role="viewer",
                                   environments=["prod"], created_at=1.0))
    assert store.revoke_token("ci", 2.0).revoked_at == 2.0
    assert [t.environments for t in store.tokens()] == [["prod"]]
    first = store.append_audit(AuditRecord(at=1.25, actor="a", action="POST /deployments", status=201))
    second = store.append_audit(AuditRecord(at=1.5, actor="b", action="POST /deployments", status=201))
    assert second > first and [r.actor for r in store.audit()] == ["b", "a"]


def test_the_audit_table_is_append_only_on_postgresql(store: Store) -> None:
    store.append_audit(AuditRecord(at=1.0, actor="local admin", action="POST /deployments", status=201))
    for statement in (update(schema.audit).values(actor="someone else"), delete(schema.audit)):
        with store.engine.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(statement)
    with store.engine.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("TRUNCATE audit"))
    # psql or any other client is refused the same way: the guard is in the database
    url = store.engine.url
    with psycopg.connect(host=url.query["host"], user=url.username, dbname=url.database,
                         options=url.query["options"]) as raw:
        for statement in ("UPDATE audit SET outcome = 'x'", "DELETE FROM audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                raw.execute(statement)
            raw.rollback()
    assert [r.actor for r in store.audit()] == ["local admin"]


def test_a_row_locked_by_another_session_is_waited_for_then_refused_in_one_sentence(
        pg_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "0.3")
    url = pg_server.new_database()
    store = Store(url)
    try:
        store.take_lease("deploy-a", "ctl-a", now=1.0, duration=15.0)
        engine = store.engine.url
        with psycopg.connect(host=engine.query["host"], user=engine.username, dbname=engine.database,
                             options=engine.query["options"]) as other:
            other.execute("SELECT * FROM leases WHERE name = 'deploy-a' FOR UPDATE")  # held, not committed
            with pytest.raises(StoreError) as caught:
                store.take_lease("deploy-a", "ctl-b", now=100.0, duration=15.0)
            other.rollback()
        assert caught.value.exit_code == 4
        assert "is locked by another process and stayed locked for 0.3 s" in str(caught.value)
        lease = store.lease("deploy-a")
        assert lease is not None and (lease.holder, lease.token) == ("ctl-a", 1)  # nothing changed
    finally:
        store.close()


def test_a_cursor_reader_never_passes_an_event_committed_late(pg_server) -> None:  # type: ignore[no-untyped-def]
    """Writer A takes an event id and has not committed; writer B writes an event meanwhile. A
    reader that moves its cursor to the last id it saw must still read A's event once A commits:
    B waits for A (the events' order lock), so B's later id is never visible before A's."""
    url = pg_server.new_database()
    first, second, reader = Store(url), Store(url), Store(url)
    engine = first.engine.url
    done = threading.Event()

    def write_b() -> None:
        second.add_events([EventRecord("deploy-b", 2.0, "info", "from B")])
        done.set()

    try:
        with psycopg.connect(host=engine.query["host"], user=engine.username, dbname=engine.database,
                             options=engine.query["options"], autocommit=True) as watcher:
            with first._begin() as conn:  # A: an id taken, not committed
                Store._insert_events(conn, [EventRecord("deploy-a", 1.0, "info", "from A")])
                thread = threading.Thread(target=write_b)
                thread.start()
                for _ in range(400):  # until B has committed, or waits on a lock
                    waiting = watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
                    if done.is_set() or (waiting is not None and waiting[0] > 0):
                        break
                    done.wait(0.05)
                seen = reader.events_since(0)
                cursor = max([e.id or 0 for e in seen], default=0)
            thread.join(timeout=30)
            seen += reader.events_since(cursor)
        assert sorted(e.message for e in seen) == ["from A", "from B"]
        assert [e.message for e in reader.events_since(0)] == ["from A", "from B"]  # ids in commit order
    finally:
        for store in (first, second, reader):
            store.close()
