"""Resource limits on real child processes, with whichever mechanism this host offers, plus the cgroup
bookkeeping on a fake cgroup tree (so it is checked even where no writable cgroup v2 exists).

Every child is started through `spawn`, which SIGKILLs it by PID and reaps it at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from safeship.errors import InputError, PermanentError
from safeship.platforms.limits import MIB, LimitPlan, LimitSupport, ProcessLimits, detect

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
# Allocates argv[1] MiB and touches every page, so a cgroup charges all of it.
HOG = (
    "import sys\n"
    "n = int(sys.argv[1]) * 1024 * 1024\n"
    "b = bytearray(n)\n"
    "for i in range(0, n, 4096):\n"
    "    b[i] = 1\n"
    "print('survived', flush=True)\n"
)
# Stays small, but runs 8 threads (each reserves an 8 MiB stack) and reports its limits. An RLIMIT_AS of
# just 64 MiB would let it start only 4 of them: see the sizing note in limits.py.
SMALL = (
    "import os, resource, threading, time\n"
    "b = bytearray(16 * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096):\n"
    "    b[i] = 1\n"
    "threads = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(8)]\n"
    "[t.start() for t in threads]\n"
    "[t.join() for t in threads]\n"
    "print(resource.getrlimit(resource.RLIMIT_AS)[0], os.environ.get('MALLOC_ARENA_MAX'), flush=True)\n"
)

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture(scope="module")
def limits() -> ProcessLimits:
    return ProcessLimits(group=f"safeship-test-{os.getpid()}")


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[tuple[subprocess.Popen[str], LimitPlan]] = []

    def start(plan: LimitPlan, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        child: subprocess.Popen[str] = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **plan.extra_env},
            preexec_fn=plan.preexec,
            **kwargs,  # type: ignore[call-overload]
        )
        started.append((child, plan))
        plan.attach(child.pid)
        return child

    try:
        yield start
    finally:
        for child, plan in started:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
            plan.release()


def test_describe_names_the_mechanism_in_force(limits: ProcessLimits) -> None:
    support = detect()
    text = support.describe()
    print(text)  # shown with -s: which mechanism this host uses
    memory = "memory: cgroup v2 memory.max" if support.memory_cgroup else "memory: RLIMIT_AS (address space)"
    cpu = "cpu: cgroup v2 cpu.max" if support.cpu_cgroup else "cpu: not enforced ("
    assert text.startswith(memory) and cpu in text
    assert limits.describe() == text


@pytest.mark.parametrize("allocate_mb", [512, 128])  # far beyond, and exactly twice, a 64 MiB limit
def test_a_child_allocating_beyond_its_limit_dies_and_is_explained(
    limits: ProcessLimits, spawn: Spawn, allocate_mb: int
) -> None:
    plan = limits.for_instance(f"test/limits/hog-{allocate_mb}", 64, 0.5)
    child = spawn(plan, [sys.executable, "-c", HOG, str(allocate_mb)])
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode != 0, f"survived {allocate_mb} MiB under {plan.describe()}"
    assert "survived" not in stdout
    explanation = plan.explain_exit(child.returncode, stderr[-2000:])
    assert explanation is not None, stderr[-2000:]
    if plan.memory_cgroup:
        assert child.returncode == -signal.SIGKILL
        assert plan.oom_killed()
        assert explanation == "killed by the kernel OOM killer (memory.max 64Mi)"
    else:
        assert "MemoryError" in stderr
        assert explanation == "ran out of memory under RLIMIT_AS 128Mi (for memory 64Mi; MemoryError)"


def test_a_child_within_its_limit_survives(limits: ProcessLimits, spawn: Spawn) -> None:
    plan = limits.for_instance("test/limits/small-0", 64, 0.5)
    child = spawn(plan, [sys.executable, "-c", SMALL])
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    assert plan.explain_exit(child.returncode, stderr) is None
    assert not plan.oom_killed()
    address_space, arenas = stdout.split()
    if plan.address_space_bytes is not None:
        assert int(address_space) == plan.address_space_bytes
        assert arenas == "1"
    else:
        assert int(address_space) == resource.RLIM_INFINITY


def test_the_example_service_runs_under_the_default_128_mib(limits: ProcessLimits, spawn: Spawn) -> None:
    """A real service (threads, sockets, shared libraries) starts and answers under its default limit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plan = limits.for_instance("test/limits/user-service-0", 128, 1.0)
    argv = [sys.executable, "-m", "examples.user_service", "--port", str(port), "--version", "v1.2.0"]
    child = spawn(plan, argv, cwd=REPO)
    deadline = time.monotonic() + 60
    while True:
        assert child.poll() is None, f"exited {child.returncode} under {plan.describe()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
                assert response.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)


@pytest.mark.parametrize(("memory_mb", "address_space_mb"), [(1, 2), (64, 128), (128, 256), (256, 512), (1024, 1280)])
def test_rlimit_as_is_memory_plus_at_most_256_mib(memory_mb: int, address_space_mb: int) -> None:
    plan = ProcessLimits(LimitSupport()).for_instance("a/b/c-0", memory_mb, 1.0)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    expected = address_space_mb * MIB if hard == resource.RLIM_INFINITY else min(address_space_mb * MIB, hard)
    assert plan.address_space_bytes == expected
    assert plan.cgroup is None and plan.extra_env == {"MALLOC_ARENA_MAX": "1"}
    assert plan.describe() == f"RLIMIT_AS {expected // MIB}Mi for memory {memory_mb}Mi, cpu unlimited"


@pytest.mark.parametrize(
    ("memory_mb", "cpu", "group"), [(0, 1.0, "safeship"), (64, 0.0, "safeship"), (64, 1.0, "../escape")]
)
def test_bad_limits_are_input_errors(memory_mb: int, cpu: float, group: str) -> None:
    with pytest.raises(InputError):
        ProcessLimits(LimitSupport(), group=group).for_instance("a/b/c-0", memory_mb, cpu)


# ---------------------------------------------------------------- a fake cgroup tree


def fake_cgroup(plan: LimitPlan, files: Sequence[str]) -> Path:
    """What the kernel creates on mkdir: the control files, empty here."""
    assert plan.cgroup is not None
    plan.cgroup.mkdir(parents=True)
    (plan.cgroup.parent / "cgroup.subtree_control").write_text("")
    for name in files:
        (plan.cgroup / name).write_text("")
    return plan.cgroup


def test_a_cgroup_plan_writes_its_limits_and_reads_oom_kills(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    support = LimitSupport(tmp_path, memory_cgroup=True, cpu_cgroup=True, reason="")
    assert support.describe() == "memory: cgroup v2 memory.max; cpu: cgroup v2 cpu.max"
    plan = ProcessLimits(support, group="safeship-test").for_instance("prod/web/1.2.3-0", 64, 0.5)
    assert plan.address_space_bytes is None and plan.extra_env == {}
    cgroup = fake_cgroup(plan, ["memory.max", "memory.oom.group", "cpu.max", "cgroup.procs", "memory.events"])
    assert cgroup.parent == tmp_path / "safeship-test" and cgroup.name.startswith("prod_web_1.2.3-0-")
    (cgroup / "memory.events").write_text("oom 2\noom_kill 2\n")  # an earlier incarnation's kills

    plan.attach(4242)
    assert (cgroup / "memory.max").read_text() == str(64 * MIB)
    assert (cgroup / "memory.oom.group").read_text() == "1"
    assert (cgroup / "cpu.max").read_text() == "50000 100000"
    assert (cgroup / "cgroup.procs").read_text() == "4242"
    assert "+cpu" in (cgroup.parent / "cgroup.subtree_control").read_text()
    assert plan.describe() == "memory.max 64Mi, cpu.max 50000 100000"
    assert not plan.oom_killed()
    assert plan.explain_exit(-9, "") is None  # killed, but not by the OOM killer

    (cgroup / "memory.events").write_text("oom 3\noom_kill 3\n")
    assert plan.oom_killed()
    assert plan.explain_exit(-9, "") == "killed by the kernel OOM killer (memory.max 64Mi)"
    assert plan.explain_exit(0, "") is None

    with caplog.at_level(logging.WARNING):
        plan.release()  # a real cgroup with files is removable; this fake one is not
    assert "could not remove cgroup" in caplog.text
    for entry in cgroup.iterdir():
        entry.unlink()
    plan.release()
    assert not cgroup.exists()
    assert plan.oom_killed()  # remembered from before the cgroup went away


def test_a_cpu_only_cgroup_leaves_memory_to_rlimit_as(tmp_path: Path) -> None:
    support = LimitSupport(tmp_path, memory_cgroup=False, cpu_cgroup=True, reason="no memory controller")
    assert support.describe() == "memory: RLIMIT_AS (address space); cpu: cgroup v2 cpu.max"
    plan = ProcessLimits(support).for_instance("prod/web/1.2.3-0", 64, 0.005)
    assert plan.address_space_bytes == 128 * MIB
    assert plan.cpu_max == "1000 100000"  # the kernel's smallest quota
    cgroup = fake_cgroup(plan, ["cpu.max", "cgroup.procs"])
    plan.attach(4242)
    assert (cgroup / "cpu.max").read_text() == "1000 100000"
    assert not (cgroup / "memory.max").exists()


def test_attach_failing_is_a_permanent_error(tmp_path: Path) -> None:
    support = LimitSupport(tmp_path / "missing", memory_cgroup=True, cpu_cgroup=True, reason="")
    plan = ProcessLimits(support).for_instance("prod/web/1.2.3-0", 64, 1.0)
    with pytest.raises(PermanentError, match=r"could not limit prod/web/1\.2\.3-0"):
        plan.attach(4242)


def test_detect_without_a_usable_cgroup_falls_back_to_rlimit_as(tmp_path: Path) -> None:
    cgroup_root = tmp_path / "unified dir"
    cgroup_root.mkdir()
    (cgroup_root / "cgroup.controllers").write_text("hugetlb\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        f"40 31 0:37 / {str(cgroup_root).replace(' ', chr(92) + '040')} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text("4:memory:/x\n0::/\n")
    support = detect(mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert support.cgroup_parent is None and not support.memory_cgroup and not support.cpu_cgroup
    assert support.describe() == (
        "memory: RLIMIT_AS (address space); "
        f"cpu: not enforced (cgroup v2 at {cgroup_root} offers only hugetlb, not memory or cpu)"
    )
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n")
    assert detect(mountinfo=mountinfo, proc_cgroup=proc_cgroup).reason == "no cgroup v2 mounted"
