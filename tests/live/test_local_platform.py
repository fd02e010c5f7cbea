"""LocalPlatform with real processes and real HTTP probes on loopback.

Every process a test starts carries a unique marker in its environment; teardown stops the
platforms and then SIGKILLs whatever still carries the marker, so nothing outlives a failed test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from safeship.analysis.probes import probe
from safeship.errors import ConflictError, InputError, PermanentError
from safeship.platforms.base import Instance, InstanceSpec, InstanceState, MemoryLedger, ProbeSpec
from safeship.platforms.local import LocalPlatform

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
MARK = "SAFESHIP_TEST_MARK"
SECRET = "s3cr3t-token-value"
SERVICE, ENV = "user-service", "test"
USER_SERVICE = [
    "python",
    "-m",
    "examples.user_service",
    "--port",
    "{port}",
    "--version",
    "{version}",
]
# Binds {port} (so TCP probes pass) and ignores SIGTERM: only SIGKILL stops it.
STUBBORN = (
    "import signal, socket, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(600)\n"
)
SLEEPER = "import time; print('up', flush=True); time.sleep(600)"
# Kubernetes semantics: liveness counts from initial_delay, so it must outwait a slow start on a
# busy 2-core machine (Python start-up plus imports can take seconds there).
LIVENESS = ProbeSpec(
    kind="http", path="/health/live", interval=0.2, failure_threshold=5, initial_delay=5.0
)

MakePlatform = Callable[..., LocalPlatform]


def marked_pids(mark: str) -> list[int]:
    needle = f"{MARK}={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def kill_marked(mark: str) -> None:
    pids = marked_pids(mark)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:  # reap the ones that are our own children, so no zombie stays behind
        for _ in range(100):
            try:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.fixture
def mark() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
async def make_platform(
    tmp_path: Path, mark: str, ledger: MemoryLedger
) -> AsyncIterator[MakePlatform]:
    platforms: list[LocalPlatform] = []

    def make(**options: Any) -> LocalPlatform:
        settings: dict[str, Any] = {
            "state_dir": tmp_path / "state",
            "ledger": ledger,
            "prober": probe,
            "backoff_base": 0.5,
            "backoff_cap": 5.0,
            "secrets_for": lambda service, env: {"API_TOKEN": SECRET},
        }
        platform = LocalPlatform(**(settings | options))
        platforms.append(platform)
        return platform

    try:
        yield make
    finally:
        for platform in reversed(platforms):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(platform.close(stop_instances=True), 60)
        kill_marked(mark)


def spec(mark: str, version: str = "v1.2.0", index: int = 0, **changes: Any) -> InstanceSpec:
    fields: dict[str, Any] = {
        "service": SERVICE,
        "environment": ENV,
        "version": version,
        "index": index,
        "command": USER_SERVICE,
        "env": {MARK: mark, "GREETING": "hello"},
        "secret_env": {"API_TOKEN": SECRET},
        "liveness": LIVENESS,
        "readiness": ProbeSpec(
            kind="http", path="/health/ready", interval=0.2, failure_threshold=2
        ),
        "grace_period": 5.0,
        "workdir": str(REPO),
    }
    return InstanceSpec(**(fields | changes))


def script_spec(mark: str, code: str, **changes: Any) -> InstanceSpec:
    tcp = ProbeSpec(kind="tcp", interval=0.2, failure_threshold=3)
    fields: dict[str, Any] = {"liveness": replace(tcp, initial_delay=1.0), "readiness": tcp}
    return spec(
        mark, version="script", command=["python", "-c", code, "{port}"], **(fields | changes)
    )


async def wait_for(
    platform: LocalPlatform,
    check: Callable[[Instance], bool],
    *,
    instance_id: str | None = None,
    timeout: float = 60.0,
) -> Instance:
    """Poll the platform's view until `check` holds for the instance (bounded)."""
    last: Instance | None = None
    for _ in range(int(timeout / 0.05)):
        for inst in await platform.instances(SERVICE, ENV):
            if instance_id is None or inst.id == instance_id:
                last = inst
                if check(inst):
                    return inst
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached; last view: {last}")


def ready(inst: Instance) -> bool:
    return inst.state is InstanceState.READY


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        outcome = condition()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


# ---------------------------------------------------------------- start, probes, logs, env


async def test_start_becomes_ready_through_http_probe(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str, tmp_path: Path
) -> None:
    platform = make_platform()
    started = await platform.start(spec(mark))
    assert started.state is InstanceState.STARTING
    assert started.id == "test/user-service/v1.2.0-0"
    assert started.pid is not None and started.port > 0

    inst = await wait_for(platform, ready)
    async with httpx.AsyncClient() as client:
        home = (await client.get(f"http://{inst.host}:{inst.port}/", timeout=10)).json()
    assert home["version"] == "v1.2.0" and home["pid"] == inst.pid

    # Environment: the spec's variables and secrets reach the process.
    environ = Path(f"/proc/{inst.pid}/environ").read_bytes().split(b"\0")
    assert b"GREETING=hello" in environ
    assert f"API_TOKEN={SECRET}".encode() in environ
    assert b"SAFESHIP_INSTANCE_ID=test/user-service/v1.2.0-0" in environ

    # The log lives at the documented path and holds the service's own output.
    log_file = tmp_path / "state" / "logs" / "test" / "user-service" / "v1.2.0-0.log"
    await eventually(lambda: "listening on" in log_file.read_text())

    # The ledger knows the process, the secret's name, never its value.
    record = ledger.records[inst.id]
    assert (record["pid"], record["port"], record["state"]) == (inst.pid, inst.port, "ready")
    assert record["spec"]["secret_names"] == ["API_TOKEN"]  # type: ignore[index]
    assert SECRET not in json.dumps(ledger.records, default=str)
    assert SECRET not in log_file.read_text()


async def test_never_ready_release_stays_out_of_service(
    make_platform: MakePlatform, mark: str
) -> None:
    platform = make_platform()
    bad = await platform.start(spec(mark, version="v1.5.0"))
    await platform.start(spec(mark, version="v1.2.0"))
    await wait_for(platform, ready, instance_id="test/user-service/v1.2.0-0")
    await asyncio.sleep(2.0)  # ten more readiness probes
    (now,) = [i for i in await platform.instances(SERVICE, ENV) if i.id == bad.id]
    assert now.state is InstanceState.STARTING
    assert (now.pid, now.restarts) == (bad.pid, 0)  # alive: liveness passes, only readiness fails


# ---------------------------------------------------------------- crashes and restarts


async def test_kill_9_is_detected_and_restarted_with_backoff(
    make_platform: MakePlatform, mark: str
) -> None:
    # The crash streak must not be forgotten between the two kills, however long a busy machine
    # takes to get the second process ready: only a long-enough run resets the backoff.
    platform = make_platform(backoff_base=0.5, backoff_reset=3600.0)
    await platform.start(spec(mark))
    first = await wait_for(platform, ready)
    assert first.pid is not None

    killed_at = time.time()
    os.kill(first.pid, signal.SIGKILL)
    crashed = await wait_for(platform, lambda i: i.restarts == 1)
    assert crashed.last_failure is not None and "signal 9" in crashed.last_failure
    second = await wait_for(platform, lambda i: ready(i) and i.pid not in (None, first.pid))
    assert second.restarts == 1
    assert second.started_at - killed_at >= 0.5  # waited out the first backoff step

    assert second.pid is not None
    killed_again_at = time.time()
    os.kill(second.pid, signal.SIGKILL)
    third = await wait_for(platform, lambda i: i.restarts == 2 and i.pid not in (None, second.pid))
    assert third.started_at - killed_again_at >= 1.0  # the backoff doubled
    assert third.port == first.port  # a restart keeps the instance's address


async def test_liveness_failure_restarts_the_process(
    make_platform: MakePlatform, mark: str
) -> None:
    platform = make_platform()
    # It never listens, so the TCP liveness probe fails until the platform restarts it.
    started = await platform.start(script_spec(mark, SLEEPER))
    failed = await wait_for(platform, lambda i: i.restarts >= 1)
    assert failed.last_failure is not None
    assert failed.last_failure.startswith("liveness failed 3 times: ")
    assert started.pid is not None
    await eventually(lambda: not running(started.pid))  # type: ignore[arg-type]


async def test_exec_probe_output_is_redacted(make_platform: MakePlatform, mark: str) -> None:
    platform = make_platform()
    leaky = ProbeSpec(
        kind="exec",
        command=("python3", "-c", "import os; print(os.environ['API_TOKEN']); raise SystemExit(1)"),
        interval=0.3,
        timeout=10.0,
        failure_threshold=1,
    )
    await platform.start(spec(mark, liveness=leaky))
    failed = await wait_for(platform, lambda i: i.restarts >= 1)
    assert failed.last_failure is not None and "***" in failed.last_failure
    assert SECRET not in failed.last_failure


async def test_gives_up_after_the_restart_budget(make_platform: MakePlatform, mark: str) -> None:
    platform = make_platform(backoff_base=0.1, max_restarts=2)
    await platform.start(script_spec(mark, "raise SystemExit(1)"))
    failed = await wait_for(platform, lambda i: i.state is InstanceState.FAILED)
    assert failed.restarts == 3 and failed.pid is None
    assert failed.last_failure == "exited with code 1; gave up after 2 restarts"


async def test_an_instance_that_dies_is_reported_with_the_last_lines_of_its_log(
    make_platform: MakePlatform, mark: str
) -> None:
    platform = make_platform(backoff_base=0.1, max_restarts=0)
    code = "import sys; print('binding', flush=True); sys.exit('OSError: [Errno 98] Address already in use')"
    await platform.start(script_spec(mark, code))
    failed = await wait_for(platform, lambda i: i.state is InstanceState.FAILED)
    assert failed.last_failure == ("exited with code 1; last lines: binding | OSError: [Errno 98] Address already "
                                   "in use; gave up after 0 restarts")


async def test_memory_limit_is_applied_only_when_enforced(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str
) -> None:
    limited = make_platform(enforce_memory_limit=True)
    quiet = ProbeSpec(kind="tcp", initial_delay=600)  # no probe restarts during the test
    inst = await limited.start(script_spec(mark, SLEEPER, memory_mb=700, liveness=quiet))
    unlimited = make_platform(enforce_memory_limit=False)
    free = await unlimited.start(script_spec(mark, SLEEPER, index=1, liveness=quiet))

    def address_space(pid: int | None) -> str:
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        return next(line for line in limits if line.startswith("Max address space")).split()[3]

    # RLIMIT_AS is sized from the request (see platforms/limits.py: min(2x, +256 MiB)).
    assert address_space(inst.pid) == str((700 + 256) * 1024 * 1024)
    assert address_space(free.pid) == "unlimited"
    assert ledger.records[inst.id]["memory_limit_mb"] == 700
    assert limited.limits is not None and "memory" in limited.limits.support.describe()


HOG = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "time.sleep(0.5)\n"
    "hog = bytearray(512 * 1024 * 1024)\n"
    "time.sleep(600)\n"
)


async def test_an_instance_over_its_memory_limit_dies_with_that_evidence(
    make_platform: MakePlatform, mark: str
) -> None:
    limited = make_platform(enforce_memory_limit=True)
    await limited.start(script_spec(mark, HOG, memory_mb=64))
    crashed = await wait_for(limited, lambda i: i.restarts >= 1)
    assert crashed.last_failure is not None and "memory" in crashed.last_failure, crashed.last_failure


# ---------------------------------------------------------------- stopping


async def test_stop_sigkills_a_process_that_ignores_sigterm(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str, tmp_path: Path
) -> None:
    platform = make_platform()
    started = await platform.start(script_spec(mark, STUBBORN, grace_period=1.0))
    inst = await wait_for(platform, ready)
    log_file = tmp_path / "state" / "logs" / "test" / "user-service" / "script-0.log"
    await eventually(lambda: "ignoring SIGTERM" in log_file.read_text())

    began = time.monotonic()
    await platform.stop(started, drain=0.0)
    assert time.monotonic() - began >= 1.0  # it sat out the grace period before SIGKILL
    assert started.state is InstanceState.STOPPED
    assert inst.pid is not None and not running(inst.pid)
    assert "killed by signal 9" in log_file.read_text()
    assert await platform.instances(SERVICE, ENV) == []
    assert ledger.records == {}


async def test_stop_drains_then_terminates_gracefully(
    make_platform: MakePlatform, mark: str, tmp_path: Path
) -> None:
    platform = make_platform()
    inst = await platform.start(spec(mark))
    await wait_for(platform, ready)
    began = time.monotonic()
    stopping = asyncio.create_task(platform.stop(inst, drain=5.0))

    async def draining() -> bool:
        return [i.state for i in await platform.instances(SERVICE, ENV)] == [InstanceState.UNREADY]

    await eventually(draining, timeout=4.0)  # no longer a traffic target, while the drain lasts
    assert not stopping.done()
    await stopping
    assert time.monotonic() - began >= 5.0  # a lower bound: a slow machine only makes it longer
    log_text = (tmp_path / "state/logs/test/user-service/v1.2.0-0.log").read_text()
    assert "SIGTERM: draining" in log_text and "exited with code 0" in log_text


# ---------------------------------------------------------------- adoption


async def test_adopt_resumes_live_instances_and_restarts_dead_ones(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str
) -> None:
    first = make_platform()
    await first.start(spec(mark, index=0))
    await first.start(spec(mark, index=1))
    for index in (0, 1):
        await wait_for(first, ready, instance_id=f"test/user-service/v1.2.0-{index}")
    before = {i.index: i for i in await first.instances(SERVICE, ENV)}
    await first.close()  # the controller goes away; the services keep serving
    alive_pid, dead_pid = before[0].pid, before[1].pid
    assert alive_pid is not None and dead_pid is not None
    assert running(alive_pid) and running(dead_pid)
    os.kill(dead_pid, signal.SIGKILL)
    await eventually(lambda: not running(dead_pid))

    second = make_platform()
    adopted = {i.index: i for i in await second.adopt()}
    assert set(adopted) == {0, 1}
    assert adopted[0].pid == alive_pid and adopted[0].restarts == 0
    assert await second.adopt() == []  # idempotent

    revived = await wait_for(
        second, lambda i: ready(i) and i.pid not in (None, dead_pid), instance_id=before[1].id
    )
    assert revived.restarts == 1
    assert revived.last_failure is not None and "while unsupervised" in revived.last_failure
    assert set(marked_pids(mark)) == {alive_pid, revived.pid}  # no duplicates

    # The adopted process is supervised again: a crash is noticed and repaired.
    os.kill(alive_pid, signal.SIGKILL)
    await wait_for(
        second, lambda i: ready(i) and i.pid not in (None, alive_pid), instance_id=before[0].id
    )

    # A platform that did not adopt refuses to start a duplicate.
    with pytest.raises(ConflictError, match="adopt"):
        await make_platform().start(spec(mark, index=0))


async def test_adopt_does_not_trust_a_reused_pid(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str
) -> None:
    first = make_platform()
    inst = await first.start(spec(mark))
    await wait_for(first, ready)
    await first.close()
    assert inst.pid is not None
    os.kill(inst.pid, signal.SIGKILL)
    await eventually(lambda: not running(inst.pid))  # type: ignore[arg-type]
    # Pretend the PID was reused by a live process: this test runner.
    ledger.records[inst.id] |= {"pid": os.getpid(), "start_ticks": 1}

    second = make_platform()
    await second.adopt()
    revived = await wait_for(second, lambda i: ready(i) and i.pid not in (None, os.getpid()))
    assert revived.restarts == 1
    assert running(os.getpid())  # and nothing signalled the impostor


async def test_stop_without_adopting_still_stops_the_recorded_process(
    make_platform: MakePlatform, ledger: MemoryLedger, mark: str
) -> None:
    first = make_platform()
    inst = await first.start(spec(mark))
    await wait_for(first, ready)
    await first.close()
    assert inst.pid is not None and running(inst.pid)

    await make_platform().stop(inst, drain=0.0)
    await eventually(lambda: not running(inst.pid))  # type: ignore[arg-type]
    assert ledger.records == {}
    assert inst.state is InstanceState.STOPPED


# ---------------------------------------------------------------- bad input


async def test_start_rejects_bad_specs(make_platform: MakePlatform, mark: str, tmp_path: Path) -> None:
    platform = make_platform()
    with pytest.raises(InputError, match="unknown placeholder"):
        await platform.start(spec(mark, command=["python", "--prot", "{prot}"]))
    with pytest.raises(InputError, match="needs a command"):
        await platform.start(spec(mark, command=[]))
    for unsafe in ({"service": "../escape"}, {"environment": ".."}, {"environment": "../../victim"},
                   {"version": "../../../victim"}, {"version": ".."}, {"service": ""}, {"index": -1}):
        with pytest.raises(InputError):
            await platform.start(spec(mark, **unsafe))
        with pytest.raises(InputError):
            platform.log_path(spec(mark, **unsafe))
    assert not (tmp_path / "victim").exists() and not (tmp_path / "escape").exists()
    assert not (tmp_path / "state" / "logs").exists()  # refused before any folder was made
    with pytest.raises(PermanentError, match="could not start"):
        await platform.start(spec(mark, command=["/nonexistent/safeship-binary"]))
    await platform.start(spec(mark))
    with pytest.raises(ConflictError):
        await platform.start(spec(mark))


LISTENER = (
    "import os, socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('uid', os.getuid(), flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and /usr/bin/python3"
)
async def test_instances_drop_to_the_configured_unprivileged_user(make_platform: MakePlatform, mark: str) -> None:
    nobody = pwd.getpwnam("nobody")
    platform = make_platform(run_as_user=lambda _service, _env: "nobody", enforce_memory_limit=False)
    tcp = ProbeSpec(kind="tcp", interval=0.2, failure_threshold=3)
    started = await platform.start(spec(mark, version="script", command=["/usr/bin/python3", "-c", LISTENER, "{port}"],
                                        liveness=replace(tcp, initial_delay=1.0), readiness=tcp, workdir="/"))
    await wait_for(platform, ready)
    status = Path(f"/proc/{started.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:3] == [str(nobody.pw_uid)] * 2
