"""Per-process memory and CPU limits for instances on the local platform.

Two mechanisms, picked once by `detect()`:

* **cgroup v2** where this process can create cgroups with the memory and/or cpu controller: each
  instance gets its own cgroup with `memory.max` = memory_mb MiB (what Kubernetes enforces: memory
  actually charged, not reserved), `memory.swap.max` = 0 and `cpu.max` = cpu x 100 ms per 100 ms.
  A process over memory.max is killed by the kernel OOM killer, which `memory.events` records.
* **RLIMIT_AS** otherwise, for memory only; CPU is then not enforced (RLIMIT_CPU caps total CPU
  seconds, not a rate, so it is no substitute).

RLIMIT_AS caps virtual address space, which is always more than memory in use: shared libraries are
mapped whole, every thread reserves an 8 MiB stack, and glibc reserves 64 MiB for each extra malloc
arena (one per thread, up to 8 x cores). Measured here: a bare Python needs ~13 MiB of it; under an
RLIMIT_AS of 64 MiB it can start only 6 threads ("can't start new thread"), 14 under 128 MiB.
Limiting address space to memory_mb alone would therefore starve thread pools long before memory
runs out. So the limit is memory_mb plus an allowance of memory_mb again, capped at 256 MiB:
min(2 x memory_mb, memory_mb + 256). The allowance buys thread stacks and mappings; the cap keeps
large limits meaningful; and since the limit never exceeds 2 x memory_mb while the interpreter itself
occupies some address space, a process that allocates twice its memory_mb always fails. A purely
fixed allowance (+256 MiB) could not promise that for small limits.

Children under RLIMIT_AS also get MALLOC_ARENA_MAX=1 (`LimitPlan.extra_env`): an extra arena appears
at an unpredictable moment and takes 64 MiB of the budget at once (measured: with 2 arenas, a child
holding 16 MiB under 128 MiB started 12 threads in some runs, 4 in others). One arena makes the budget predictable,
and Python's GIL already serialises most allocations, so the lost malloc concurrency costs little.

The cgroup is joined by `attach(pid)` after the child has exec'd, so for those few milliseconds the
child runs unlimited, and memory it charged before the move stays charged to the parent's cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from safeship.config.names import inside
from safeship.errors import InputError, PermanentError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses smaller cpu.max quotas
ADDRESS_SPACE_ALLOWANCE_CAP_MB = 256
MALLOC_ARENAS = "1"
CONTROLLERS = ("memory", "cpu")
# What a process prints when an allocation fails under RLIMIT_AS (Python, libc, C++, Go).
_OUT_OF_MEMORY_SIGNS = (
    "MemoryError",
    "can't start new thread",
    "can't create new thread",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class LimitSupport:
    """Which mechanism limits what on this host. `cgroup_parent` is where instance cgroups go."""

    cgroup_parent: Path | None = None
    memory_cgroup: bool = False
    cpu_cgroup: bool = False
    reason: str = "no writable cgroup v2"  # why a resource is not limited through a cgroup

    def describe(self) -> str:
        memory = "cgroup v2 memory.max" if self.memory_cgroup else "RLIMIT_AS (address space)"
        cpu = "cgroup v2 cpu.max" if self.cpu_cgroup else f"not enforced ({self.reason})"
        return f"memory: {memory}; cpu: {cpu}"


def detect(
    *, mountinfo: Path = Path("/proc/self/mountinfo"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> LimitSupport:
    """Find a cgroup v2 directory where a child cgroup with the memory and cpu controllers can be
    made: the cgroup2 mount's root, else this process's own cgroup. Probes by creating and removing
    `safeship-<pid>-probe`. Controllers it enables in a parent's cgroup.subtree_control stay enabled
    (others may rely on them by then)."""
    mount = _cgroup2_mount(mountinfo)
    if mount is None:
        return LimitSupport(reason="no cgroup v2 mounted")
    candidates = [mount]
    own = _own_cgroup(proc_cgroup)
    if own and own != "/":
        candidates.append(mount / own.lstrip("/"))
    reasons = []
    for base in candidates:
        support, reason = _probe(base)
        if support is not None:
            return support
        reasons.append(reason)
    return LimitSupport(reason="; ".join(reasons))


class ProcessLimits:
    """Makes a LimitPlan per instance. `group` names the cgroup holding this controller's instances,
    so two controllers on one host (say, two test runs) keep apart."""

    def __init__(self, support: LimitSupport | None = None, *, group: str = "safeship") -> None:
        if not group or _UNSAFE.search(group) or group.startswith("."):
            raise InputError(f"cgroup group name {group!r} must be letters, digits, '.', '_' or '-'")
        self.support = support if support is not None else detect()
        self.group = group

    def describe(self) -> str:
        return self.support.describe()

    def for_instance(self, instance_id: str, memory_mb: int, cpu: float) -> LimitPlan:
        if memory_mb < 1:
            raise InputError(f"{instance_id}: memory limit must be at least 1 MiB, got {memory_mb}")
        if cpu <= 0:
            raise InputError(f"{instance_id}: cpu limit must be positive, got {cpu:g}")
        support = self.support
        cgroup = None
        if support.cgroup_parent is not None and (support.memory_cgroup or support.cpu_cgroup):
            # _cgroup_name keeps only safe characters; inside() makes sure anyway, as this folder
            # is created and later removed.
            cgroup = inside(inside(support.cgroup_parent, self.group), _cgroup_name(instance_id))
        address_space = None if support.memory_cgroup else _address_space_bytes(memory_mb)
        return LimitPlan(
            instance_id,
            memory_mb,
            cpu,
            cgroup=cgroup,
            memory_cgroup=support.memory_cgroup,
            cpu_cgroup=support.cpu_cgroup,
            address_space_bytes=address_space,
        )


class LimitPlan:
    """The limits of one instance's process. Use: Popen(env=... | plan.extra_env,
    preexec_fn=plan.preexec), then plan.attach(pid); after it exits, plan.explain_exit(...) and
    plan.release()."""

    def __init__(
        self,
        instance_id: str,
        memory_mb: int,
        cpu: float,
        *,
        cgroup: Path | None,
        memory_cgroup: bool,
        cpu_cgroup: bool,
        address_space_bytes: int | None,
    ) -> None:
        self.instance_id = instance_id
        self.memory_mb = memory_mb
        self.cpu = cpu
        self.cgroup = cgroup
        self.memory_cgroup = memory_cgroup and cgroup is not None
        self.cpu_cgroup = cpu_cgroup and cgroup is not None
        self.address_space_bytes = address_space_bytes
        self._oom_kills_before = 0  # a reused cgroup's earlier kills are not this process's
        self._oom_kills_at_release: int | None = None

    @property
    def extra_env(self) -> dict[str, str]:
        return {"MALLOC_ARENA_MAX": MALLOC_ARENAS} if self.address_space_bytes is not None else {}

    @property
    def cpu_max(self) -> str:
        return f"{max(MIN_CPU_QUOTA_US, int(self.cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}"

    def describe(self) -> str:
        parts = []
        if self.memory_cgroup:
            parts.append(f"memory.max {self.memory_mb}Mi")
        elif self.address_space_bytes is not None:
            parts.append(f"RLIMIT_AS {self.address_space_bytes // MIB}Mi for memory {self.memory_mb}Mi")
        parts.append(f"cpu.max {self.cpu_max}" if self.cpu_cgroup else "cpu unlimited")
        return ", ".join(parts)

    def preexec(self) -> None:
        """Runs in the child between fork and exec: only a setrlimit call, nothing that takes locks."""
        if self.address_space_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.address_space_bytes, self.address_space_bytes))

    def attach(self, pid: int) -> None:
        """Create this instance's cgroup with its limits and move `pid` into it (no-op without one)."""
        if self.cgroup is None:
            return
        controllers = [c for c, on in (("memory", self.memory_cgroup), ("cpu", self.cpu_cgroup)) if on]
        try:
            self.cgroup.parent.mkdir(exist_ok=True)
            _enable_controllers(self.cgroup.parent, controllers)
            self.cgroup.mkdir(exist_ok=True)
            if self.memory_cgroup:
                _write(self.cgroup / "memory.max", str(self.memory_mb * MIB))
                with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to cap
                    _write(self.cgroup / "memory.swap.max", "0")
                with contextlib.suppress(FileNotFoundError):  # an OOM kills the whole instance, as in Kubernetes
                    _write(self.cgroup / "memory.oom.group", "1")
                self._oom_kills_before = _oom_kills(self.cgroup) or 0
            if self.cpu_cgroup:
                _write(self.cgroup / "cpu.max", self.cpu_max)
            _write(self.cgroup / "cgroup.procs", str(pid))
        except ProcessLookupError:
            return  # it already exited; the caller sees that exit
        except OSError as exc:
            raise PermanentError(
                f"could not limit {self.instance_id} (pid {pid}) with cgroup {self.cgroup}: {exc.strerror or exc}"
            ) from exc
        self._oom_kills_at_release = None

    def release(self) -> None:
        """Remove the cgroup once its process has exited. A cgroup still holding processes (children
        that outlived their parent) is left in place with a warning."""
        if self.cgroup is None:
            return
        if self.memory_cgroup:  # memory.events goes with the cgroup: keep its count for oom_killed()
            kills = _oom_kills(self.cgroup)
            self._oom_kills_at_release = kills if kills is not None else self._oom_kills_at_release
        try:
            self.cgroup.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove cgroup %s of %s: %s", self.cgroup, self.instance_id, exc.strerror or exc)

    def oom_killed(self) -> bool:
        """Whether the kernel OOM killer killed a process of this cgroup since `attach`. Always False
        under RLIMIT_AS, where running out shows as a failed allocation instead (see explain_exit)."""
        if not self.memory_cgroup or self.cgroup is None:
            return False
        kills = self._oom_kills_at_release
        if kills is None:
            kills = _oom_kills(self.cgroup)
        return kills is not None and kills > self._oom_kills_before

    def explain_exit(self, returncode: int | None, stderr_tail: str) -> str | None:
        """Why the process died, when it was the memory limit; None otherwise (or when unsure)."""
        if returncode is None or returncode == 0:
            return None
        if self.oom_killed():
            return f"killed by the kernel OOM killer (memory.max {self.memory_mb}Mi)"
        if self.address_space_bytes is not None:
            sign = next((s for s in _OUT_OF_MEMORY_SIGNS if s in stderr_tail), None)
            if sign is not None:
                limit = self.address_space_bytes // MIB
                return f"ran out of memory under RLIMIT_AS {limit}Mi (for memory {self.memory_mb}Mi; {sign})"
        return None


# ---------------------------------------------------------------- helpers


def _address_space_bytes(memory_mb: int) -> int:
    limit = (memory_mb + min(memory_mb, ADDRESS_SPACE_ALLOWANCE_CAP_MB)) * MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)  # only root may raise it


def _cgroup_name(instance_id: str) -> str:
    """A readable directory name; the hash keeps "a/b_c" and "a_b/c" apart."""
    digest = hashlib.sha256(instance_id.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', instance_id.replace('/', '_')).strip('.')}-{digest}"


def _probe(base: Path) -> tuple[LimitSupport | None, str]:
    try:
        available = (base / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return None, f"cannot read {base}/cgroup.controllers: {exc.strerror or exc}"
    wanted = [c for c in CONTROLLERS if c in available]
    if not wanted:
        offered = f"only {', '.join(available)}" if available else "no controllers"
        return None, f"cgroup v2 at {base} offers {offered}, not memory or cpu"
    wanted = _enable_controllers(base, wanted, strict=False)
    if not wanted:
        return None, f"cannot enable memory or cpu in {base}/cgroup.subtree_control"
    probe = base / f"safeship-{os.getpid()}-probe"
    try:
        probe.mkdir(exist_ok=True)
        try:
            usable = [c for c in wanted if os.access(probe / f"{c}.max", os.W_OK)]
        finally:
            probe.rmdir()
    except OSError as exc:
        return None, f"cannot create a cgroup under {base}: {exc.strerror or exc}"
    if not usable:
        return None, f"a cgroup under {base} gets no writable memory.max or cpu.max"
    missing = [c for c in CONTROLLERS if c not in usable]
    reason = f"cgroup v2 at {base} has no usable {' or '.join(missing)} controller" if missing else ""
    return LimitSupport(base, "memory" in usable, "cpu" in usable, reason), ""


def _enable_controllers(cgroup: Path, controllers: list[str], *, strict: bool = True) -> list[str]:
    """Enable `controllers` for the children of `cgroup`; returns those now enabled."""
    control = cgroup / "cgroup.subtree_control"
    try:
        enabled = set(control.read_text().split())
    except FileNotFoundError:
        enabled = set()
    done = []
    for name in controllers:
        if name not in enabled:
            try:
                _write(control, f"+{name}")
            except OSError as exc:
                if strict:
                    raise
                log.debug("cannot enable %s in %s: %s", name, control, errno.errorcode.get(exc.errno or 0, exc))
                continue
        done.append(name)
    return done


def _write(path: Path, text: str) -> None:
    # One write call: cgroup files act on each write(2), and text mode could split or buffer it.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _oom_kills(cgroup: Path) -> int | None:
    try:
        lines = (cgroup / "memory.events").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def _cgroup2_mount(mountinfo: Path) -> Path | None:
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if rest.split()[:1] == ["cgroup2"] and len(parts) > 4:
            return Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4]))  # \040 is a space
    return None


def _own_cgroup(proc_cgroup: Path) -> str | None:
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None
