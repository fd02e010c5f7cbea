"""Schema revisions: a store made before revisions were kept is upgraded in place with its rows,
a new store starts at the newest revision, and a store written by a newer safeship is refused
(exit 4) without a change; on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import olddb
import pytest
from sqlalchemy import create_engine, inspect, text
from test_store_errors import assert_one_sentence, cli

from safeship.errors import StoreError
from safeship.store import AuditRecord, Store, migrate

OLD_ROWS = (
    "INSERT INTO deployments (id, service, environment, version, from_version, strategy, strategy_reason, policy, "
    "phase, step_index, plan, status, request, created_at, updated_at, phase_started_at, step_started_at, "
    "row_version) VALUES ('deploy-old', 'svc', 'prod', 'v2', 'v1', 'canary', 'why', 'safeship', 'succeeded', 3, "
    "'[]', '{\"weights\": {\"v2\": 100}}', '{}', 1.5, 2.5, 1.5, 2.5, 7)",
    "INSERT INTO events (deployment_id, at, kind, message, data) VALUES ('deploy-old', 2.5, 'phase', 'done', '{}')",
    "INSERT INTO stable_versions (service, environment, version, deployment_id, promoted_at, healthy) "
    "VALUES ('svc', 'prod', 'v2', 'deploy-old', 2.5, true)",
    "INSERT INTO cursors (name, position, updated_at) VALUES ('notifications', 1, 2.5)",
    "INSERT INTO audit (at, actor, role, action, target, source, status, outcome) "
    "VALUES (2.5, 'local admin', 'admin', 'POST /deployments', 'svc/prod', 'cli', 201, 'ok')",
)


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return migrate.current(conn)
    finally:
        engine.dispose()


def test_an_old_store_is_upgraded_in_place_and_keeps_its_rows(backend_url: str) -> None:
    old = create_engine(backend_url)
    olddb.create(old)
    with old.begin() as conn:
        for statement in OLD_ROWS:
            conn.exec_driver_sql(statement)
    assert "alembic_version" not in inspect(old).get_table_names()
    old.dispose()

    store = Store(backend_url)
    try:
        record = store.get_deployment("deploy-old")
        assert (record.phase, record.step_index, record.row_version, record.status) == (
            "succeeded", 3, 7, {"weights": {"v2": 100}})
        assert [e.message for e in store.events("deploy-old")] == ["done"]
        assert store.current_version("svc", "prod") == "v2"
        assert store.cursor("notifications") == 1
        assert [(r.actor, r.status) for r in store.audit()] == [("local admin", 201)]
        seen = inspect(store.engine)
        assert "leases" in seen.get_table_names()
        assert "fencing_token" in {c["name"] for c in seen.get_columns("deployments")}
        lease = store.take_lease("deploy-old", "ctl", now=1.0, duration=15.0)
        assert lease.token == 1
        store.append_audit(AuditRecord(at=3.0, actor="after", action="POST /deployments", status=201))
        with store.engine.begin() as conn, pytest.raises(Exception, match="append-only"):
            conn.execute(text("DELETE FROM audit"))
    finally:
        store.close()
    assert _revision(backend_url) == migrate.head() == "0002"
    reopened = Store(backend_url)  # at the newest revision: nothing to do, nothing lost
    try:
        assert [r.actor for r in reopened.audit()] == ["after", "local admin"]
    finally:
        reopened.close()


def test_a_store_from_a_newer_safeship_is_refused_unchanged(backend_url: str) -> None:
    Store(backend_url).close()
    engine = create_engine(backend_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        conn.execute(text("DROP TABLE leases"))  # what revision 0099 might have done
    engine.dispose()

    with pytest.raises(StoreError) as caught:
        Store(backend_url)
    message = str(caught.value)
    assert caught.value.exit_code == 4
    assert "revision '0099', which this safeship does not know (it knows up to '0002')" in message
    assert _revision(backend_url) == "0099"
    engine = create_engine(backend_url)
    try:
        assert "leases" not in inspect(engine).get_table_names()  # nothing was changed
    finally:
        engine.dispose()


def test_the_cli_refuses_a_newer_store_with_exit_4(make_config, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'state.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    code, _, err = cli(["--list", "--config", str(make_config(url))], capsys)
    assert code == 4, err
    assert_one_sentence(err)
    assert "newer safeship" in err
    with pytest.raises(StoreError, match="does not know"):
        Store(f"{url}?mode=ro")  # read-only: refused all the same


def _open_and_close(url: str, start: Any) -> None:
    start.wait(timeout=60)
    Store(url).close()


@pytest.mark.parametrize("how", ["processes", "threads"])
def test_stores_opening_one_new_database_at_once_all_open_it(backend_url: str, how: str) -> None:
    """Controllers and commands started together on a new store: each opens it, one set of tables."""
    if how == "processes":
        context = multiprocessing.get_context("fork")
        start: Any = context.Barrier(3)
        workers: list[Any] = [context.Process(target=_open_and_close, args=(backend_url, start)) for _ in range(3)]
    else:
        start = threading.Barrier(3)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                _open_and_close(backend_url, start)
            except BaseException as exc:
                failed.append(exc)

        workers = [threading.Thread(target=run) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    if how == "processes":
        assert [w.exitcode for w in workers] == [0, 0, 0]
    else:
        assert failed == []
    store = Store(backend_url)
    try:
        assert store.take_lease("deploy-a", "ctl", now=1.0, duration=15.0).token == 1
        assert [r.actor for r in store.audit()] == []
    finally:
        store.close()
    assert _revision(backend_url) == migrate.head()
