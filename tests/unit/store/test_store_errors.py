"""A store that cannot be used says so in one sentence: exit 2 for a store.url that cannot be one,
exit 4 for a database that cannot be used. Never a traceback, never a driver's own exception."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import SQLAlchemyError

from safeship.cli import deployment_engine
from safeship.errors import InputError, StaleStateError, StoreError
from safeship.store import DeploymentRecord, Store
from safeship.store.edge import BUSY_TIMEOUT_ENV

ROOT = os.geteuid() == 0


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = deployment_engine.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_sentence(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "sqlalche.me" not in err and "[SQL:" not in err, err


def deployment(id_: str = "deploy-1") -> DeploymentRecord:
    return DeploymentRecord(
        id=id_, service="user-service", environment="production", version="v1.3.0", from_version=None,
        strategy="canary", strategy_reason="test", policy="safeship", phase="pending", step_index=0,
        plan=[], status={}, request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0,
        step_started_at=1.0,
    )


def new_store(path: Path) -> None:
    Store(url_of(path)).close()


# ---------------------------------------------------------------- 1. corrupt


def test_a_corrupt_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is no SQLite file, it is junk" * 200)
    with pytest.raises(StoreError) as caught:
        Store(url_of(path))
    assert str(caught.value) == (
        f"store {path}: is not a SQLite database (file is not a database); move it aside to start a new store"
    )
    assert caught.value.exit_code == 4


def test_cli_on_a_corrupt_store_exits_4_with_one_sentence(make_config, tmp_path: Path, capsys) -> None:
    config = make_config()
    state = tmp_path / ".safeship" / "state.db"
    state.parent.mkdir()
    state.write_bytes(os.urandom(8192))
    code, out, err = cli(["--list", "--config", str(config)], capsys)
    assert code == 4 and out == ""
    assert_one_sentence(err)
    assert f"store {state}: is not a SQLite database" in err and "move it aside" in err


def test_a_store_corrupted_after_opening_fails_on_its_next_operation(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(url_of(path))
    store.create_deployment(deployment())
    store.close()  # drops pooled connections; the next operation opens the file again
    for leftover in (tmp_path / "state.db-wal", tmp_path / "state.db-shm"):
        leftover.unlink(missing_ok=True)
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="is not a SQLite database"):
        store.list_deployments()
    with pytest.raises(StoreError, match="is not a SQLite database"):
        store.get_deployment("deploy-1")


# ---------------------------------------------------------------- 2. a directory


def test_a_directory_in_place_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.mkdir()
    with pytest.raises(StoreError) as caught:
        Store(url_of(path))
    message = str(caught.value)
    assert message.startswith(f"store {path}: is a directory, not a SQLite file") and "\n" not in message


# ---------------------------------------------------------------- 3. read-only


@pytest.mark.parametrize("form", ["plain", "uri"])
def test_a_read_only_store_reads_and_refuses_writes_with_one_sentence(tmp_path: Path, form: str) -> None:
    path = tmp_path / "state.db"
    writable = Store(url_of(path))
    writable.create_deployment(deployment())
    writable.close()
    url = f"{url_of(path)}?mode=ro" if form == "plain" else f"sqlite:///file:{path}?mode=ro&uri=true"
    store = Store(url)
    assert [d.id for d in store.list_deployments()] == ["deploy-1"]
    with pytest.raises(StoreError) as caught:
        store.create_deployment(deployment("deploy-2"))
    assert str(caught.value).startswith(f"store {path}: is read-only (attempt to write a readonly database)")
    assert "mode=ro" in str(caught.value)
    store.close()
    assert [d.id for d in Store(url_of(path)).list_deployments()] == ["deploy-1"]  # nothing changed


def test_a_read_only_store_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"{url_of(path)}?mode=ro")
    assert not path.exists()


def test_cli_deploy_into_a_read_only_store_exits_4(make_config, tmp_path: Path, capsys) -> None:
    new_store(tmp_path / ".safeship" / "state.db")
    config = make_config("sqlite:///.safeship/state.db?mode=ro")
    code, _, err = cli(["--deploy", "--service", "user-service", "--version", "v1.2.0", "--environment",
                        "production", "--config", str(config)], capsys)
    assert code == 4, err
    assert_one_sentence(err)
    assert "is read-only" in err


@pytest.mark.skipif(ROOT, reason="root writes through file modes; the mode=ro tests cover read-only as root")
def test_a_read_only_file_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    new_store(path)
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreError) as caught:
            Store(url_of(path)).create_deployment(deployment())
        assert str(caught.value).startswith(f"store {path}: ")
    finally:
        tmp_path.chmod(0o755)
        path.chmod(0o644)


# ---------------------------------------------------------------- 4. locked by another process

HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store whose write lock a child process holds until the test ends."""
    path = tmp_path / ".safeship" / "state.db"
    new_store(path)
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "0.5")
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield path, child.pid
    finally:
        child.kill()
        child.wait()


def test_a_locked_store_waits_then_names_the_process(locked) -> None:
    path, pid = locked
    store = Store(url_of(path))
    assert store.list_deployments() == []  # readers are not blocked
    with pytest.raises(StoreError) as caught:
        store.create_deployment(deployment())
    message = str(caught.value)
    assert message.startswith(f"store {path}: is locked by another process")
    assert "0.5 s" in message and BUSY_TIMEOUT_ENV in message
    if Path("/proc/locks").exists():
        assert f"PID {pid}: " in message and "sqlite3" in message


def test_cli_deploy_into_a_locked_store_exits_4(locked, make_config, capsys) -> None:
    config = make_config()
    code, _, err = cli(["--deploy", "--service", "user-service", "--version", "v1.2.0", "--environment",
                        "production", "--config", str(config)], capsys)
    assert code == 4, err
    assert_one_sentence(err)
    assert "is locked by another process" in err


def test_a_busy_timeout_that_is_not_a_number_is_bad_input(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "soon")
    with pytest.raises(InputError, match=f"{BUSY_TIMEOUT_ENV}: .*'soon'"):
        Store(url_of(tmp_path / "state.db"))


# ---------------------------------------------------------------- 5. and 6. a bad store.url


@pytest.mark.parametrize(("url", "expected"), [
    ("nonsense://x", "store.url: 'nonsense://x' names an unknown database kind 'nonsense'"),
    ("", "store.url: is empty"),
    ("sqlite:/x", "store.url: 'sqlite:/x' is not a database URL"),
    ("sqlite:///", "store.url: 'sqlite:///' names no file"),
    ("sqlite://host/x.db", "store.url: 'sqlite://host/x.db' is not a SQLite URL"),
])
def test_a_bad_url_is_bad_input_naming_store_url(url: str, expected: str) -> None:
    with pytest.raises(InputError) as caught:
        Store(url)
    assert str(caught.value).startswith(expected) and caught.value.exit_code == 2


@pytest.mark.parametrize(("url", "module", "package"), [
    ("postgresql://safeship:hunter2@db.example/safeship", "psycopg", "psycopg[binary]"),
    ("postgresql+psycopg://safeship@db.example/safeship", "psycopg", "psycopg[binary]"),
    ("postgresql+psycopg2://safeship@db.example/safeship", "psycopg2", "psycopg2-binary"),
])
def test_a_missing_driver_names_the_package_to_install(url: str, module: str, package: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(InputError) as caught:
        Store(url)
    message = str(caught.value)
    assert message.startswith("store.url: 'postgresql") and f"pip install '{package}'" in message
    assert "hunter2" not in message and caught.value.exit_code == 2


def test_cli_with_a_bad_store_url_exits_2_and_creates_nothing(make_config, tmp_path: Path, capsys) -> None:
    config = make_config("nonsense://x")
    code, _, err = cli(["--list", "--config", str(config)], capsys)
    assert code == 2
    assert_one_sentence(err)
    assert "store.url" in err and "nonsense://x" in err
    assert not (tmp_path / ".safeship" / "state.db").exists()


# ---------------------------------------------------------------- 7. an unwritable state directory


def test_a_state_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    path = blocker / "state.db"
    with pytest.raises(StoreError) as caught:
        Store(url_of(path))
    assert str(caught.value).startswith(f"store {path}: cannot create its directory {blocker}")
    assert caught.value.exit_code == 4


def test_cli_with_a_state_directory_that_cannot_be_created_exits_4(make_config, tmp_path: Path, capsys) -> None:
    (tmp_path / ".safeship").write_text("a file where the state directory should be")
    code, _, err = cli(["--list", "--config", str(make_config())], capsys)
    assert code == 4
    assert_one_sentence(err)
    assert "cannot create its directory" in err


@pytest.mark.skipif(ROOT, reason="root writes through directory modes; the file-in-the-way test covers it")
def test_a_state_directory_without_write_permission(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o555)
    try:
        with pytest.raises(StoreError) as caught:
            Store(url_of(directory / "state.db"))
        assert "is not writable" in str(caught.value)
    finally:
        directory.chmod(0o755)


# ---------------------------------------------------------------- unchanged behaviour


def test_row_version_conflicts_stay_stale_state_errors(tmp_path: Path) -> None:
    store = Store(url_of(tmp_path / "state.db"))
    before = deployment()
    store.create_deployment(before)
    store.save_transition(before, before.replace(phase="preparing"))
    with pytest.raises(StaleStateError):
        store.save_transition(before, before.replace(phase="cancelled"))
    assert store.get_deployment("deploy-1").phase == "preparing"


def test_the_store_stays_in_wal_mode(tmp_path: Path) -> None:
    store = Store(url_of(tmp_path / "state.db"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_no_driver_error_escapes_an_operation(tmp_path: Path) -> None:
    """Every public operation on an unusable store raises StoreError, never SQLAlchemy's errors."""
    path = tmp_path / "state.db"
    store = Store(url_of(path))
    store.close()
    for leftover in (tmp_path / "state.db-wal", tmp_path / "state.db-shm"):
        leftover.unlink(missing_ok=True)
    path.write_bytes(os.urandom(8192))
    calls = [
        lambda: store.create_deployment(deployment()),
        lambda: store.events("deploy-1"),
        lambda: store.add_events([]),
        lambda: store.rollbacks(),
        lambda: store.stable_versions("user-service", "production"),
        lambda: store.service_rollback_settings("user-service"),
        lambda: store.set_service_rollback_settings("user-service", {}, 1.0),
        lambda: store.clear_service_rollback_settings("user-service"),
        lambda: store.load_instances(),
        lambda: store.save_instance({"id": "i-1"}),
        lambda: store.delete_instance("i-1"),
        lambda: store.forget_environment("production"),
        lambda: store.save_environment_state("production", {}, 1.0),
        lambda: store.environment_state("production"),
    ]
    for call in calls:
        try:
            call()
        except StoreError:
            continue
        except SQLAlchemyError as exc:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{type(exc).__name__} escaped the store: {exc}")
        pytest.fail("an operation on a corrupt store succeeded")
