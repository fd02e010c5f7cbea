"""Reading the events table from a position, and the cursors consumers keep in the store."""

from __future__ import annotations

from pathlib import Path

import olddb
import pytest
from sqlalchemy import create_engine, inspect, text

from safeship.store import DeploymentRecord, EventRecord, Store


def deployment(id_: str) -> DeploymentRecord:
    return DeploymentRecord(
        id=id_, service="user-service", environment="production", version="v1.3.0", from_version="v1.2.0",
        strategy="canary", strategy_reason="test", policy="safeship", phase="pending", step_index=0,
        plan=[], status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0,
        step_started_at=1.0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'state.db'}")


def test_events_since_reads_in_written_order_with_ids(store: Store) -> None:
    written = [EventRecord("deploy-a", 1.0, "created", "a0"), EventRecord("deploy-a", 1.0, "strategy", "a1")]
    store.create_deployment(deployment("deploy-a"), written)
    store.create_deployment(deployment("deploy-b"), [EventRecord("deploy-b", 2.0, "created", "b0", {"n": 1})])
    store.add_events([EventRecord("deploy-a", 3.0, "phase", "a2", {"phase": "preparing"})])

    events = store.events_since(0)

    assert [e.message for e in events] == ["a0", "a1", "b0", "a2"]
    ids = [e.id or 0 for e in events]
    assert all(e.id is not None for e in events) and ids == sorted(ids) and len(set(ids)) == 4
    assert events[:2] == written  # the id is not part of equality; everything else round-trips
    assert events[2].data == {"n": 1}
    assert store.last_event_id() == ids[-1]


def test_events_since_starts_after_the_id_honours_limit_and_deployment(store: Store) -> None:
    store.create_deployment(deployment("deploy-a"), [EventRecord("deploy-a", 1.0, "e", f"a{i}") for i in range(5)])
    store.create_deployment(deployment("deploy-b"), [EventRecord("deploy-b", 1.0, "e", f"b{i}") for i in range(3)])
    ids = [e.id for e in store.events_since(0)]
    assert ids[0] is not None and ids[3] is not None

    assert [e.message for e in store.events_since(ids[3])] == ["a4", "b0", "b1", "b2"]
    assert [e.message for e in store.events_since(ids[0], limit=2)] == ["a1", "a2"]
    assert [e.message for e in store.events_since(0, deployment_id="deploy-b", limit=2)] == ["b0", "b1"]
    assert store.events_since(store.last_event_id()) == []
    with pytest.raises(ValueError):
        store.events_since(0, limit=0)


def test_events_carry_their_id_in_the_per_deployment_history(store: Store) -> None:
    store.create_deployment(deployment("deploy-a"), [EventRecord("deploy-a", 1.0, "created", "a0")])
    (event,) = store.events("deploy-a")
    assert event.id == store.last_event_id()


def test_a_cursor_starts_at_zero_and_never_moves_backwards(store: Store) -> None:
    assert store.cursor("dashboard") == 0
    assert store.advance_cursor("dashboard", 10) == 10
    assert store.advance_cursor("dashboard", 4) == 10
    assert store.cursor("dashboard") == 10
    assert store.advance_cursor("dashboard", 12) == 12
    assert store.cursor("dashboard") == 12
    assert store.cursor("webhooks") == 0  # each consumer has its own
    with pytest.raises(ValueError):
        store.advance_cursor("", 1)


def test_a_cursor_survives_reopening_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = Store(url)
    first.advance_cursor("notifications", 7)
    first.close()
    assert Store(url).cursor("notifications") == 7


def _old_database(path: Path, events: int) -> None:
    """A database as written before the cursors table existed (and before schema revisions were
    kept), holding `events` events."""
    engine = create_engine(f"sqlite:///{path}")
    olddb.create(engine, without=["cursors"])
    with engine.begin() as conn:
        for i in range(events):
            conn.execute(text("INSERT INTO events (deployment_id, at, kind, message, data) "
                              "VALUES ('deploy-old', 1.0, 'phase', :message, '{\"phase\": \"succeeded\"}')"),
                         {"message": f"old {i}"})
    engine.dispose()


def test_opening_an_older_database_adds_cursors_starting_after_its_events(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _old_database(path, events=3)

    store = Store(f"sqlite:///{path}")

    assert "cursors" in inspect(store.engine).get_table_names()
    assert store.cursor("notifications") == 3  # what was there was handled before cursors existed
    store.add_events([EventRecord("deploy-new", 2.0, "created", "new")])
    assert [e.message for e in store.events_since(store.cursor("notifications"))] == ["new"]
    assert store.advance_cursor("notifications", 1) == 3  # a new cursor never starts below that either
    store.close()
    assert Store(f"sqlite:///{path}").cursor("webhooks") == 3  # reopening adds no second start


def test_an_older_database_without_events_starts_cursors_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _old_database(path, events=0)
    assert Store(f"sqlite:///{path}").cursor("notifications") == 0


def test_an_older_database_still_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _old_database(path, events=2)
    store = Store(f"sqlite:///{path}?mode=ro")
    assert [e.message for e in store.events_since(0)] == ["old 0", "old 1"]
    assert "cursors" not in inspect(store.engine).get_table_names()
