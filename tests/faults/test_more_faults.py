"""Faults other than a killed controller: HAProxy killed in the middle of a deployment, and a
route port that another process holds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import ROUTE, Controller, Fault, Outcome, chain
from haproxykit import needs_haproxy
from livekit import CONFIG, ENV, MARK, SERVICE, Setup, _kill_services, _marked, deploy, wait_final, wait_for

from safeship.api.client import ControllerClient
from safeship.routing.haproxy import haproxy_pid
from safeship.store import Store

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]


def listening(state_dir: Path) -> int | None:
    """The route's port once the controller says it listens there (its routes.json)."""
    with contextlib.suppress(OSError, ValueError):
        for row in json.loads((state_dir / "routes.json").read_text())["routes"]:
            if f"{row['environment']}/{row['service']}" == ROUTE and row.get("listening"):
                return int(row["port"])
    return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@needs_haproxy
def test_haproxy_killed_mid_deployment_is_started_again_and_the_deployment_ends_right(tmp_path: Path) -> None:
    """SIGKILL HAProxy's master and workers at a canary's second step: the router starts it again
    from its routing picture at its next call, the deployment ends succeeded, and from then on
    no request fails; ledger, store and notifications hold (faultkit's invariants)."""
    with chain(tmp_path, "haproxy") as made:
        state = made.setup.state_dir
        master = haproxy_pid(state)
        assert master is not None
        version = made.next_version
        started = time.time()
        asked = deploy(made.client, version, deployment_strategy="canary")["id"]

        def at_second_step() -> bool:
            store = Store(f"sqlite:///{state}/state.db")
            try:
                record = store.get_deployment(asked)
            finally:
                store.close()
            return record.phase == "progressing" and record.step_index >= 3

        wait_for(at_second_step, 120, "the canary's first analysis")
        for pid in [*children(master), master]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: haproxy_pid(state) not in (None, master), 60, "HAProxy to be started again")
        restarted = time.time()
        final, _ = wait_final(made.client, asked, timeout=180)
        ended = time.time()
        assert made.load is not None
        outage = made.load.window(started, restarted)  # type: ignore[arg-type]
        outcome = Outcome(Fault("canary", boundary="haproxy SIGKILL"), "haproxy", asked, final["phase"])
        outcome.requests, outcome.failed = made.load.window(restarted + 1.0, ended)  # type: ignore[arg-type]
        made.check(outcome, final, version if final["phase"] == "succeeded" else made.current, started, ended)
        print(f"\nrequests while HAProxy was down and starting again: {outage[1]} of {outage[0]} failed; "
              f"{outcome.failed} of {outcome.requests} after")
        assert final["phase"] == "succeeded", final["reason"]
        assert not outcome.violations, outcome.violations
        assert made.load is not None and made.load.window(started, restarted)[0] > 0  # type: ignore[arg-type]


def test_a_route_port_held_by_another_process_starts_nothing_then_the_release_ships(tmp_path: Path) -> None:
    """The route's configured port is held by another process: a deployment waits in preparing
    (event `route_unavailable`), starts no instance, and fails once the readiness timeout is
    spent, instead of shipping a release nobody can reach. Once the port is free, the controller
    listens on it and the next deployment ships."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    mark = uuid.uuid4().hex
    config = tmp_path / "safeship.yaml"
    text = CONFIG.format(state_dir=tmp_path / "state", env=ENV, service=SERVICE, mark=MARK, mark_value=mark)
    text = text.replace(f"ports: {{{ENV}: 0}}", f"ports: {{{ENV}: {port}}}")
    text = text.replace("{type: health_check_failure, timeout: 10s}", "{type: health_check_failure, timeout: 6s}")
    assert f"{ENV}: {port}" in text and "timeout: 6s" in text
    config.write_text(text)
    setup = Setup(config, tmp_path / "state", mark)
    running = Controller(setup)
    try:
        running.start()
        client = ControllerClient(setup.state_dir)
        first, phases = wait_final(client, deploy(client, "v1.2.0")["id"], timeout=120)
        assert first["phase"] == "failed" and "does not listen" in first["reason"], first["reason"]
        assert "progressing" not in phases
        assert "route_unavailable" in [e["kind"] for e in first["events"]]
        assert setup.ledger() == [] and _marked(mark) == set()  # nothing was started
        holder.close()
        wait_for(lambda: listening(setup.state_dir) == port, 60, "the route to listen on its port once free")
        second, _ = wait_final(client, deploy(client, "v1.2.0")["id"], timeout=120)
        assert second["phase"] == "succeeded", second["reason"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        holder.close()
        running.stop()
        _kill_services(setup)


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and Path("/proc/filesystems").read_text().count(
        "tmpfs") > 0


@contextlib.contextmanager
def small_filesystem(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MB mounted on `where` (unmounted on the way out)."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(where)], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


def fill(where: Path) -> Path:
    """A file that takes every free byte of `where`'s file system."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return filler


@pytest.mark.skipif(not can_mount_tmpfs(), reason="mounting a small tmpfs needs root")
def test_a_full_disk_under_the_store_mid_deployment_loses_nothing_once_space_returns(tmp_path: Path) -> None:
    """The state dir (store, ledger, logs) lives on a 32 MB tmpfs. A canary is under way when the
    file system fills up: the controller cannot write, so the deployment stands still (no request
    fails meanwhile) and the controller says so in one sentence per failure, no traceback; once the
    space is back it ends succeeded or rolled back with faultkit's invariants (ledger, store rows,
    notifications, traffic)."""
    with small_filesystem(tmp_path / "state", 32), chain(tmp_path, "builtin") as made:
        state = made.setup.state_dir
        version = made.next_version
        started = time.time()
        asked = deploy(made.client, version, deployment_strategy="canary")["id"]
        wait_for(lambda: made._phase(asked).startswith("progressing step") and
                 int(made._phase(asked).split()[-1]) >= 3, 120, "the canary's first analysis")
        filler = fill(state)
        print(f"\nfilled {filler.stat().st_size >> 20} MB; free now {shutil.disk_usage(state).free} bytes")
        time.sleep(6.0)
        errors = [line for line in (tmp_path / "controller.log").read_text().splitlines()
                  if "the disk is full" in line]
        filler.unlink()
        final, _ = wait_final(made.client, asked, timeout=180)
        ended = time.time()
        assert made.load is not None
        outcome = Outcome(Fault("canary", boundary="store disk full 6s"), "builtin", asked, final["phase"])
        outcome.requests, outcome.failed = made.load.window(started, ended)  # type: ignore[arg-type]
        made.check(outcome, final, version if final["phase"] == "succeeded" else made.current, started, ended)
        print(f"{len(errors)} log lines about the full disk, e.g. {errors[:1]}; {outcome.row()}")
        assert errors, "the controller said nothing about the full disk"
        assert all("free some space and try again" in line for line in errors)
        # said in a sentence, not a traceback every second (a traceback is for a bug)
        assert "Traceback" not in (tmp_path / "controller.log").read_text()
        assert final["phase"] in ("succeeded", "rolled_back")
        assert not outcome.violations, outcome.violations
