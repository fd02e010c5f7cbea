"""The local platform: every instance is an OS process on this host, supervised the way a kubelet
supervises a container.

One asyncio task per instance spawns the process, watches for its exit (a pidfd, so a crash is seen
at once, with a polling fallback), runs the readiness and liveness probes, and restarts it with
CrashLoopBackOff-style backoff. Everything needed to take over after a controller restart (PID,
process start time, port, spec without secret values) is written to the ledger on every change, so
`adopt()` can resume supervising processes that kept serving while the controller was away.

Linux only: process identity comes from /proc/<pid>/stat, exit detection from pidfd_open.

Released bytes: when the ledger also knows build artifacts (the store does: `safeship pipeline
run` registers one per version it built and tested), an instance of a version with an artifact
runs those bytes. The file is hashed again before anything starts (a changed file refuses the
start); a tarball (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) is unpacked once into
`<state_dir>/releases/<service>/<version>-<sha256 prefix>/`, which becomes the instance's working
directory (so `python -m package` imports the release's code first), and the `{artifact}`
placeholder of the command names the file itself. Versions without an artifact run as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol, runtime_checkable

from safeship.clock import Clock, RealClock
from safeship.config.names import check_name, inside
from safeship.errors import ConflictError, InputError, PermanentError, TemporaryError
from safeship.platforms.base import (
    Instance,
    InstanceLedger,
    InstanceSpec,
    InstanceState,
    Platform,
    PlatformSetup,
    ProbeSpec,
)
from safeship.platforms.ledger import (
    as_int,
    as_mapping,
    as_optional_int,
    as_str_list,
    instance_from_record,
    instance_id_of,
    record_of,
    spec_from_record,
)
from safeship.platforms.limits import LimitPlan, ProcessLimits
from safeship.platforms.processes import (
    claim_detached,
    describe_exit,
    detach,
    proc_start_ticks,
    reap_detached,
    same_process,
    signal_group,
    spawn,
    terminate_group,
    user_identity,
    wait_for_exit,
)
from safeship.platforms.scaling import ScalesOneByOne
from safeship.store import ArtifactRecord

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PLATFORM_NAME = "local"
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR")
PLACEHOLDERS = ("port", "version", "service", "environment", "index", "artifact")
ARTIFACT_ENV = "SAFESHIP_ARTIFACT"  # the release file an instance runs (set only when there is one)
ARTIFACT_SHA_ENV = "SAFESHIP_ARTIFACT_SHA256"
_TARBALLS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_RELEASE_MEMBERS = 100_000  # members of a release tarball
MAX_RELEASE_BYTES = 4 * 2**30  # what a release tarball unpacks to, at most
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PORT_ATTEMPTS = 50
RETRY_DELAY_S = 2.0  # how long a caller waits before trying again after a passing OS failure
# OS failures that may pass on their own (a port or process slot taken, a full disk); any other
# OSError (permissions, a missing folder or binary) will not go away by retrying.
_PASSING_ERRNOS = frozenset({errno.EADDRINUSE, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOSPC,
                             errno.ENOMEM, errno.EINTR, errno.EBUSY})


@contextlib.contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Translate an OSError of `action` into TemporaryError (it may pass) or PermanentError."""
    try:
        yield
    except OSError as exc:
        text = exc.strerror or str(exc)
        if exc.errno in _PASSING_ERRNOS:
            raise TemporaryError(f"{action}: {text}", delay=RETRY_DELAY_S) from exc
        raise PermanentError(f"{action}: {text}") from exc


@runtime_checkable
class ArtifactSource(Protocol):
    """A ledger that also knows the build artifact registered for a version (the store)."""

    def artifact(self, service: str, version: str) -> ArtifactRecord | None: ...


class ProbeOutcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def detail(self) -> str: ...


class Prober(Protocol):
    """What the controller injects (`safeship.analysis.probes.probe` fits)."""

    def __call__(
        self, spec: ProbeSpec, *, host: str, port: int, env: Mapping[str, str] | None = None
    ) -> Awaitable[ProbeOutcome]: ...


SecretsFor = Callable[[str, str], Mapping[str, str]]


@dataclass(frozen=True)
class _CheckResult:
    ok: bool
    detail: str


async def tcp_check(
    spec: ProbeSpec, *, host: str, port: int, env: Mapping[str, str] | None = None
) -> _CheckResult:
    """The fallback prober: whatever the probe's kind, the instance is healthy if it accepts a
    TCP connection within the probe's timeout."""
    try:
        async with asyncio.timeout(spec.timeout):
            _reader, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except TimeoutError:
        return _CheckResult(False, f"tcp connect timed out after {spec.timeout:g}s")
    except OSError as exc:
        return _CheckResult(False, f"tcp connect failed: {exc.strerror or exc}")
    return _CheckResult(True, "connected")


def describe_probe(role: str, spec: ProbeSpec) -> str:
    """'readiness probe GET /health/ready (timeout 1s)': which probe, with its timeout."""
    if spec.kind == "http":
        target = f"GET {spec.path if spec.path.startswith('/') else '/' + spec.path}"
    elif spec.kind == "exec":
        target = f"exec {' '.join(spec.command)[:80]}"
    else:
        target = spec.kind
    return f"{role} probe {target} (timeout {spec.timeout:g}s)"


@dataclass
class _Supervised:
    spec: InstanceSpec
    instance: Instance
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None  # None for a process adopted from another parent
    start_ticks: int | None = None  # /proc/<pid>/stat field 22: tells a reused PID apart
    env: dict[str, str] = field(default_factory=dict)  # includes secrets: memory only
    crash_streak: int = 0  # failures since the last long-enough run; drives the backoff
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    limits: LimitPlan | None = None  # this process's memory/cpu limits, when they are enforced


class LocalPlatform(ScalesOneByOne):
    """Platform whose instances are processes on this host, each on its own loopback port.

    Its processes outlive it: `close` leaves them running, and the next owner `adopt`s them from
    the ledger. OS failures reach callers as TemporaryError or PermanentError."""

    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = True
    router: ClassVar[str] = "builtin"
    traffic: ClassVar[str] = "router"

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        platform = cls(state_dir=setup.state_dir, ledger=setup.ledger, prober=setup.prober, clock=setup.clock,
                       secrets_for=setup.secrets_for, run_as_user=setup.run_as_user)
        if platform.limits is not None:
            log.info("process limits in force: %s", platform.limits.support.describe())
        return platform

    def __init__(
        self,
        *,
        state_dir: Path,
        ledger: InstanceLedger,
        prober: Prober | None = None,
        clock: Clock | None = None,
        secrets_for: SecretsFor | None = None,
        run_as_user: Callable[[str, str], str | None] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        backoff_reset: float | None = None,
        max_restarts: int | None = None,
        enforce_memory_limit: bool | None = None,
        exit_poll_interval: float = 0.2,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._ledger = ledger
        self._prober: Prober = prober if prober is not None else tcp_check
        self._clock: Clock = clock if clock is not None else RealClock()
        self._secrets_for = secrets_for
        self._run_as_user = run_as_user
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # Kubernetes forgets the crash streak after a container ran 10 min (twice its 5 min cap).
        self._backoff_reset = backoff_reset if backoff_reset is not None else 2 * backoff_cap
        self._max_restarts = max_restarts
        if enforce_memory_limit is None:
            # On by default: a service's requested memory is its limit. SAFESHIP_ENFORCE_MEMORY_LIMIT=0
            # turns it off (for services whose address space dwarfs their resident memory).
            flag = os.environ.get("SAFESHIP_ENFORCE_MEMORY_LIMIT", "1")
            enforce_memory_limit = flag.lower() not in ("0", "false", "no")
        self._enforce_memory_limit = enforce_memory_limit
        self.limits: ProcessLimits | None = ProcessLimits() if enforce_memory_limit else None
        self._exit_poll_interval = exit_poll_interval
        self._supervised: dict[str, _Supervised] = {}

    # ------------------------------------------------------------ Platform

    async def start(self, spec: InstanceSpec) -> Instance:
        """Spawn the process and return at once (STARTING); readiness is probed in the background.

        Raises InputError for a bad command template or names, ConflictError when the instance
        already runs, PermanentError when the process cannot be started at all."""
        instance_id = instance_id_of(spec)
        _check_names(spec)
        spec = self._with_release(spec)
        _render_command(spec.command, _template_values(spec, port=0))  # fail before spawning
        if instance_id in self._supervised:
            raise ConflictError(f"instance {instance_id} already exists")
        self._forget_dead_record(spec.service, spec.environment, instance_id)
        sup = _Supervised(
            spec=spec,
            instance=Instance(
                id=instance_id,
                service=spec.service,
                environment=spec.environment,
                version=spec.version,
                index=spec.index,
                host=HOST,
            ),
            log_path=self.log_path(spec),
        )
        with _os_errors(f"could not start {instance_id}"):
            self._spawn(sup)
        self._supervised[instance_id] = sup
        self._save(sup)
        sup.task = asyncio.create_task(self._supervise(sup), name=f"supervise {instance_id}")
        return dataclasses.replace(sup.instance)

    async def stop(self, instance: Instance, *, drain: float) -> None:
        """Stop serving (the caller's router has drained it), wait `drain` seconds, SIGTERM the
        process group, SIGKILL it after the grace period, and forget the instance."""
        sup = self._supervised.get(instance.id)
        with _os_errors(f"could not stop {instance.id}"):
            if sup is None:
                await self._stop_unsupervised(instance)
            else:
                if sup.stop_task is None:
                    sup.stop_task = asyncio.create_task(
                        self._stop(sup, drain), name=f"stop {sup.instance.id}"
                    )
                # Shielded: a caller that gives up waiting must not leave a half-stopped instance.
                await asyncio.shield(sup.stop_task)
        instance.state = InstanceState.STOPPED
        instance.pid = None

    async def instances(self, service: str, environment: str) -> list[Instance]:
        """Snapshots (copies) of every instance of the service in the environment, by id."""
        found = [
            dataclasses.replace(sup.instance)
            for sup in self._supervised.values()
            if sup.instance.service == service and sup.instance.environment == environment
        ]
        return sorted(found, key=lambda inst: inst.id)

    async def close(self, *, stop_instances: bool = False) -> None:
        """Stop supervising. Processes keep serving unless `stop_instances`; their ledger records
        stay so that the next controller adopts them."""
        if stop_instances:
            await asyncio.gather(
                *(self.stop(dataclasses.replace(s.instance), drain=0.0) for s in self._all())
            )
            return
        tasks = [s.task for s in self._all() if s.task is not None and s.stop_task is None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stops = [s.stop_task for s in self._all() if s.stop_task is not None]
        await asyncio.gather(*stops, return_exceptions=True)
        reap_detached()  # children an earlier close() left that have exited since
        for sup in self._all():
            if sup.popen is not None:
                detach(sup.popen)
        self._supervised.clear()

    # ------------------------------------------------------------ adoption

    async def adopt(self) -> list[Instance]:
        """Take over the instances recorded in the ledger: live processes (same PID and start time)
        are supervised again untouched, dead ones are restarted, interrupted stops are finished.
        Safe to call twice: instances already supervised are skipped."""
        adopted: list[Instance] = []
        for record in self._ledger.load_instances():
            if record.get("platform") != PLATFORM_NAME or str(record.get("id")) in self._supervised:
                continue
            try:
                sup = self._from_record(record)
            except (KeyError, TypeError, ValueError, InputError) as exc:
                log.warning("skipping unreadable ledger record %s: %s", record.get("id"), exc)
                continue
            if bool(record.get("stopping")):
                await self._finish_interrupted_stop(sup)
                continue
            self._resume(sup)
            adopted.append(dataclasses.replace(sup.instance))
        return adopted

    def _resume(self, sup: _Supervised) -> None:
        inst = sup.instance
        self._supervised[inst.id] = sup
        if inst.state is InstanceState.FAILED:
            self._save(sup)  # gave up before; stays visible until stopped
            return
        if inst.pid is not None and self._is_alive(sup):
            sup.env = self._environment(sup.spec, inst.port)
            log.info("adopted %s (pid %d)", inst.id, inst.pid)
        elif inst.pid is not None:
            pid = inst.pid
            self._note_failure(sup, f"process {pid} {self._reap(sup)} while unsupervised")
        sup.task = asyncio.create_task(self._supervise(sup), name=f"supervise {inst.id}")

    def _forget_dead_record(self, service: str, environment: str, instance_id: str) -> None:
        for record in self._ledger.load_instances(service, environment):
            if str(record.get("id")) != instance_id:
                continue
            pid, ticks = as_optional_int(record.get("pid")), as_optional_int(record.get("start_ticks"))
            if pid is not None and same_process(pid, ticks):
                raise ConflictError(
                    f"instance {instance_id} is running (pid {pid}) but not supervised; "
                    "adopt() it instead of starting it again"
                )
            self._ledger.delete_instance(instance_id)

    # ------------------------------------------------------------ supervision

    async def _supervise(self, sup: _Supervised) -> None:
        try:
            while not sup.stopping:
                if sup.instance.pid is None:
                    try:
                        self._spawn(sup)
                    except PermanentError as exc:
                        self._give_up(sup, str(exc))
                        return
                    self._save(sup)
                ran_from = sup.instance.started_at
                failure = await self._watch(sup)
                await self._terminate(sup, sup.spec.grace_period)
                if self._clock.now() - ran_from >= self._backoff_reset:
                    sup.crash_streak = 0
                self._note_failure(sup, failure)
                if self._max_restarts is not None and sup.instance.restarts > self._max_restarts:
                    self._give_up(sup, f"{failure}; gave up after {self._max_restarts} restarts")
                    return
                self._save(sup)
                await self._clock.sleep(self._backoff_delay(sup.crash_streak))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the instance silently unwatched
            log.exception("supervisor of %s failed", sup.instance.id)
            self._give_up(sup, f"supervisor error: {self._redact(sup, str(exc))}")

    def _backoff_delay(self, streak: int) -> float:
        return min(self._backoff_cap, self._backoff_base * 2.0 ** max(0, streak - 1))

    def _note_failure(self, sup: _Supervised, failure: str) -> None:
        inst = sup.instance
        inst.last_failure = failure
        inst.restarts += 1
        inst.state = InstanceState.RESTARTING
        sup.crash_streak += 1
        log.warning("%s failed (%s); restart %d", inst.id, failure, inst.restarts)

    def _give_up(self, sup: _Supervised, reason: str) -> None:
        sup.instance.state = InstanceState.FAILED
        sup.instance.last_failure = reason
        self._save(sup)
        log.error("%s failed for good: %s", sup.instance.id, reason)

    async def _watch(self, sup: _Supervised) -> str:
        """Run the probes until the process exits or liveness gives up; return why it ended."""
        exited = asyncio.create_task(self._exit_reason(sup))
        liveness = asyncio.create_task(self._liveness_loop(sup))
        readiness = asyncio.create_task(self._readiness_loop(sup))
        try:
            done, _ = await asyncio.wait({exited, liveness}, return_when=asyncio.FIRST_COMPLETED)
            return exited.result() if exited in done else liveness.result()
        finally:
            for task in (exited, liveness, readiness):
                task.cancel()
            await asyncio.gather(exited, liveness, readiness, return_exceptions=True)

    async def _exit_reason(self, sup: _Supervised) -> str:
        await self._wait_for_exit(sup)
        return self._reap(sup)

    async def _readiness_loop(self, sup: _Supervised) -> None:
        spec = sup.spec.readiness
        await self._clock.sleep(spec.initial_delay)
        successes = failures = 0
        while True:
            began = time.monotonic()
            result = await self._probe(sup, spec)
            successes, failures = (successes + 1, 0) if result.ok else (0, failures + 1)
            state = sup.instance.state
            if not result.ok and state is not InstanceState.READY:
                sup.instance.unready_because = f"{describe_probe('readiness', spec)}: {result.detail}"
            if state in (InstanceState.STARTING, InstanceState.UNREADY):
                if successes >= spec.success_threshold:
                    sup.instance.unready_because = None
                    self._set_state(sup, InstanceState.READY, None)
            elif state is InstanceState.READY and failures >= spec.failure_threshold:
                sup.instance.unready_because = f"{describe_probe('readiness', spec)}: {result.detail}"
                self._set_state(sup, InstanceState.UNREADY, f"readiness: {result.detail}")
            await self._clock.sleep(spec.interval - (time.monotonic() - began))

    async def _liveness_loop(self, sup: _Supervised) -> str:
        spec = sup.spec.liveness
        await self._clock.sleep(spec.initial_delay)
        failures = 0
        while True:
            began = time.monotonic()
            result = await self._probe(sup, spec)
            failures = 0 if result.ok else failures + 1
            if failures >= spec.failure_threshold:
                return f"liveness failed {failures} times: {result.detail}"
            await self._clock.sleep(spec.interval - (time.monotonic() - began))

    async def _probe(self, sup: _Supervised, spec: ProbeSpec) -> _CheckResult:
        if spec.kind == "exec" and spec.command and spec.command[0] in ("python", "python3"):
            spec = dataclasses.replace(spec, command=(sys.executable, *spec.command[1:]))
        try:
            if spec.kind == "exec":  # as the instance runs: the environment's run_as_user
                identity = self._identity(sup.spec)
                spec = dataclasses.replace(spec, uid=identity.get("user"), gid=identity.get("group"))
            outcome = await self._prober(spec, host=HOST, port=sup.instance.port, env=sup.env)
            ok, detail = bool(outcome.ok), str(outcome.detail)
        except Exception as exc:  # a broken prober counts as a failed probe, never a dead loop
            ok, detail = False, f"probe error: {type(exc).__name__}: {exc}"
        return _CheckResult(ok, self._redact(sup, detail))

    def _set_state(self, sup: _Supervised, state: InstanceState, why: str | None) -> None:
        if sup.stopping or sup.instance.state is state:
            return
        sup.instance.state = state
        self._save(sup)
        log.info("%s is %s%s", sup.instance.id, state.value, f" ({why})" if why else "")

    # ------------------------------------------------------------ processes

    def _spawn(self, sup: _Supervised) -> None:
        spec, inst = sup.spec, sup.instance
        port = inst.port if inst.port and _port_is_free(inst.port) else self._pick_port()
        argv = _render_command(spec.command, _template_values(spec, port=port))
        sup.env = self._environment(spec, port)
        sup.limits = self.limits.for_instance(inst.id, spec.memory_mb, spec.cpu) if self.limits else None
        if sup.limits is not None:
            sup.env.update(sup.limits.extra_env)
        sup.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _private_log(sup.log_path) as log_file:
            _log_line(
                log_file,
                f"starting {inst.id} on port {port}: {' '.join(argv)}"
                + (f" (in {spec.workdir})" if spec.workdir else ""),
                sup.spec.secret_env,
            )
            try:
                popen = spawn(
                    argv,
                    log_file=log_file,
                    env=sup.env,
                    cwd=spec.workdir or None,
                    preexec_fn=sup.limits.preexec if sup.limits is not None else None,
                    identity=self._identity(spec),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                message = f"could not start {inst.id}: {argv[0]}: {text}"
                _log_line(log_file, message, sup.spec.secret_env)
                raise PermanentError(self._redact(sup, message)) from exc
        sup.popen = popen
        if sup.limits is not None:
            sup.limits.attach(popen.pid)
        sup.start_ticks = proc_start_ticks(popen.pid)
        inst.pid, inst.port = popen.pid, port
        inst.state = InstanceState.STARTING
        inst.started_at = self._clock.now()
        log.info("started %s: pid %d, port %d", inst.id, popen.pid, port)

    def _with_release(self, spec: InstanceSpec) -> InstanceSpec:
        """`spec` running the artifact registered for its version, verified (and unpacked when it
        is a tarball); `spec` itself when no artifact is registered. PermanentError when the
        file is gone or changed, or cannot be unpacked."""
        if spec.workdir is not None or not isinstance(self._ledger, ArtifactSource):
            return spec
        artifact = self._ledger.artifact(spec.service, spec.version)
        if artifact is None:
            return spec
        folder = unpack_release(self._state_dir / "releases", artifact)
        env = {**spec.env, ARTIFACT_ENV: artifact.path, ARTIFACT_SHA_ENV: artifact.sha256}
        return dataclasses.replace(spec, env=env, workdir=None if folder is None else str(folder))

    def _identity(self, spec: InstanceSpec) -> dict[str, Any]:
        """Drop to the environment's unprivileged user when the controller runs as root."""
        user = self._run_as_user(spec.service, spec.environment) if self._run_as_user else None
        return user_identity(user)

    def _environment(self, spec: InstanceSpec, port: int) -> dict[str, str]:
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.update(spec.env)
        env.update(spec.secret_env)
        env.setdefault("PORT", str(port))
        env["SAFESHIP_INSTANCE_ID"] = instance_id_of(spec)
        return env

    def _pick_port(self) -> int:
        taken = {s.instance.port for s in self._supervised.values()}
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            if port not in taken:
                return port
        raise PermanentError(f"no free loopback port after {_PORT_ATTEMPTS} attempts")

    def _is_alive(self, sup: _Supervised) -> bool:
        pid = sup.instance.pid
        if pid is None:
            return False
        if sup.popen is not None and sup.start_ticks is None:
            return sup.popen.poll() is None
        return same_process(pid, sup.start_ticks)

    async def _wait_for_exit(self, sup: _Supervised) -> None:
        pid = sup.instance.pid
        if pid is None:
            return
        await wait_for_exit(pid, lambda: self._is_alive(sup), self._exit_poll_interval)

    async def _terminate(self, sup: _Supervised, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after `grace`, reap it."""
        if sup.instance.pid is None:
            return
        if self._is_alive(sup):
            await terminate_group(sup.instance.pid, grace, lambda: self._wait_for_exit(sup))
        self._reap(sup)

    def _reap(self, sup: _Supervised) -> str:
        """The process has exited: kill what it left in its group, collect its status."""
        pid = sup.instance.pid
        if pid is None:
            return "no process"
        # Safe while our child is an unreaped zombie (its PID cannot be reused yet); for an adopted
        # process, skip when the PID visibly belongs to a new process.
        if sup.popen is not None or proc_start_ticks(pid) is None:
            signal_group(pid, signal.SIGKILL)
        code = sup.popen.poll() if sup.popen is not None else None
        if sup.popen is not None and code is None:
            description = "did not exit after SIGKILL"
        else:
            description = describe_exit(code)
        if sup.limits is not None:
            # Out of memory is a HealthCheckFailure with that evidence, not just "exit code 1".
            description = sup.limits.explain_exit(code, _log_tail(sup.log_path)) or description
            sup.limits.release()
        with contextlib.suppress(OSError), _private_log(sup.log_path) as log_file:
            _log_line(log_file, f"pid {pid} {description}", sup.spec.secret_env)
        self._clear_process(sup)
        last = _last_lines(sup.log_path, sup.spec.secret_env)  # why it died, in its own words
        return f"{description}; last lines: {last}" if last else description

    def _clear_process(self, sup: _Supervised) -> None:
        sup.popen, sup.start_ticks = None, None
        sup.instance.pid = None

    # ------------------------------------------------------------ stopping

    async def _stop(self, sup: _Supervised, drain: float) -> None:
        sup.stopping = True
        if sup.task is not None:
            sup.task.cancel()
            await asyncio.gather(sup.task, return_exceptions=True)
        inst = sup.instance
        running = inst.pid is not None and self._is_alive(sup)
        if inst.state is not InstanceState.FAILED:
            inst.state = InstanceState.UNREADY  # terminating: no longer a traffic target
        self._save(sup)
        if running and drain > 0:
            await self._clock.sleep(drain)
        await self._terminate(sup, sup.spec.grace_period)
        inst.state = InstanceState.STOPPED
        self._ledger.delete_instance(inst.id)
        self._supervised.pop(inst.id, None)
        log.info("stopped %s", inst.id)

    async def _stop_unsupervised(self, instance: Instance) -> None:
        records = self._ledger.load_instances(instance.service, instance.environment)
        for record in records:
            if str(record.get("id")) == instance.id:
                with contextlib.suppress(KeyError, TypeError, ValueError, InputError):
                    await self._finish_interrupted_stop(self._from_record(record))
                self._ledger.delete_instance(instance.id)

    async def _finish_interrupted_stop(self, sup: _Supervised) -> None:
        sup.stopping = True
        await self._terminate(sup, sup.spec.grace_period)
        self._ledger.delete_instance(sup.instance.id)
        log.info("finished stopping %s", sup.instance.id)

    # ------------------------------------------------------------ the ledger

    def log_path(self, spec: InstanceSpec) -> Path:
        """<state_dir>/logs/<environment>/<service>/<version>-<index>.log, each part a folder or file
        of its own there; InputError when a name would lead anywhere else."""
        _check_names(spec)
        folder = inside(inside(self._state_dir / "logs", spec.environment), spec.service)
        return inside(folder, f"{spec.version}-{spec.index}.log")

    def _save(self, sup: _Supervised) -> None:
        self._ledger.save_instance(record_of(sup, self._memory_limit(sup.spec), platform=PLATFORM_NAME))

    def _memory_limit(self, spec: InstanceSpec) -> int | None:
        return spec.memory_mb if self._enforce_memory_limit else None

    def _from_record(self, record: Mapping[str, object]) -> _Supervised:
        service, environment = str(record["service"]), str(record["environment"])
        secrets = dict(self._secrets_for(service, environment)) if self._secrets_for else {}
        spec = spec_from_record(record, secrets)
        missing = sorted(
            set(as_str_list(as_mapping(record["spec"]).get("secret_names", []))) - set(secrets)
        )
        if missing:
            log.warning("secrets %s of %s/%s were not supplied", missing, environment, service)
        sup = _Supervised(
            spec=spec, instance=instance_from_record(record, spec, default_host=HOST), log_path=self.log_path(spec)
        )
        sup.start_ticks = as_optional_int(record.get("start_ticks"))
        sup.crash_streak = as_int(record.get("crash_streak", 0))
        if sup.instance.pid is not None:
            sup.popen = claim_detached(sup.instance.pid, sup.start_ticks)
        return sup

    def _redact(self, sup: _Supervised, text: str) -> str:
        return _redact(text, sup.spec.secret_env)

    def _all(self) -> list[_Supervised]:
        return list(self._supervised.values())


# ---------------------------------------------------------------- helpers


def _check_names(spec: InstanceSpec) -> None:
    """Names become log paths and process labels: each must be a valid name of its kind."""
    check_name("environment", spec.environment, field="environment")
    check_name("service", spec.service, field="service")
    check_name("version", spec.version, field="version")
    if isinstance(spec.index, bool) or not isinstance(spec.index, int) or spec.index < 0:
        raise InputError(f"index: an instance index must be a whole number of at least 0, got {spec.index!r}")


def _template_values(spec: InstanceSpec, *, port: int) -> dict[str, str]:
    values = {
        "port": str(port),
        "version": spec.version,
        "service": spec.service,
        "environment": spec.environment,
        "index": str(spec.index),
    }
    if spec.env.get(ARTIFACT_ENV):
        values["artifact"] = spec.env[ARTIFACT_ENV]
    return values


def _private_log(path: Path) -> BinaryIO:
    """An instance's log, opened to append; made 0600 (it may hold what the service prints)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


def unpack_release(releases: Path, artifact: ArtifactRecord) -> Path | None:
    """The folder the tarball `artifact` is unpacked in (once per service, version and hash), or
    None when the artifact is not a tarball. The file is opened once: the bytes hashed (they must
    still hash to `artifact.sha256`) are the bytes unpacked, even if the path is replaced meanwhile.
    A tarball of more than MAX_RELEASE_MEMBERS members or MAX_RELEASE_BYTES unpacked, or with a
    member that is absolute, climbs out with `..`, or links outside the folder, is refused."""
    what = f"the artifact {artifact.path} of {artifact.service} {artifact.version}"
    try:
        handle = open(artifact.path, "rb")  # noqa: SIM115 (closed below, after the unpacking)
    except OSError as exc:
        raise PermanentError(f"{what} cannot be read ({exc.strerror or exc}); "
                             f"expected sha256 {artifact.sha256}") from exc
    with handle:
        digest = hashlib.sha256()
        try:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        except OSError as exc:
            raise PermanentError(f"{what} cannot be read ({exc.strerror or exc}); "
                                 f"expected sha256 {artifact.sha256}") from exc
        found = digest.hexdigest()
        if found != artifact.sha256:
            raise PermanentError(f"{what} changed: expected sha256 {artifact.sha256}, found {found}")
        if not artifact.path.endswith(_TARBALLS):
            return None
        folder = releases / artifact.service / f"{artifact.version}-{artifact.sha256[:16]}"
        marker = folder / ".safeship-sha256"
        with contextlib.suppress(OSError):
            if marker.read_text().strip() == artifact.sha256:
                return folder
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            handle.seek(0)
            with tarfile.open(fileobj=handle) as tar:
                members = _release_members(tar, what)
                partial.mkdir(parents=True)
                tar.extractall(partial, members=members, filter="data")  # the checks again, as a backstop
            (partial / ".safeship-sha256").write_text(artifact.sha256 + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise PermanentError(f"{what} could not be unpacked into {folder}: {exc}") from exc
    return folder


def _release_members(tar: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    """The tarball's members, read header by header; PermanentError (one sentence naming the
    member) when there are too many, they unpack to too much, or one would land or point outside
    the folder."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= MAX_RELEASE_MEMBERS:
            raise PermanentError(f"{what} could not be unpacked: it has more than {MAX_RELEASE_MEMBERS} members")
        total += member.size
        if total > MAX_RELEASE_BYTES:
            raise PermanentError(f"{what} could not be unpacked: it unpacks to more than {MAX_RELEASE_BYTES} bytes")
        if _leaves_folder(member.name):
            raise PermanentError(f"{what} could not be unpacked: member {member.name!r} would land outside the "
                                 "release folder")
        if member.issym() or member.islnk():
            target = member.linkname if member.islnk() else posixpath.join(posixpath.dirname(member.name),
                                                                          member.linkname)
            if member.linkname.startswith("/") or _leaves_folder(target):
                raise PermanentError(f"{what} could not be unpacked: member {member.name!r} links to "
                                     f"{member.linkname!r}, outside the release folder")
        members.append(member)
    return members


def _leaves_folder(name: str) -> bool:
    """An absolute name, or one whose `..` climb above the folder it is unpacked in."""
    if name.startswith("/"):
        return True
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _render_command(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    if not template:
        raise InputError("the local platform needs a command (services.<name>.command)")
    argv: list[str] = []
    for arg in template:
        unknown = [m for m in _PLACEHOLDER.findall(arg) if m not in values]
        if unknown == ["artifact"]:
            raise InputError(
                f"command argument {arg!r} uses {{artifact}}, but no build artifact is registered for this "
                f"version; build it with `safeship pipeline run` first"
            )
        if unknown:
            raise InputError(
                f"command argument {arg!r} uses unknown placeholder {{{unknown[0]}}}; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        argv.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg))
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # the controller's interpreter, with its virtualenv
    return argv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind: a previous incarnation's TIME_WAIT connections do not block the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _log_tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_lines(path: Path, secrets: Mapping[str, str], count: int = 3, width: int = 200) -> str:
    """The instance's last `count` lines of output (not safeship's own lines), joined with ' | ',
    each cut to `width` characters, secrets masked; '' when it printed nothing."""
    lines = [line.strip() for line in _log_tail(path).splitlines()]
    own = [line for line in lines if line and not line.startswith("--- safeship ")]
    return " | ".join(_redact(line[:width], secrets) for line in own[-count:])


def _log_line(log_file: BinaryIO, message: str, secrets: Mapping[str, str]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    log_file.write(f"--- safeship {stamp}: {_redact(message, secrets)} ---\n".encode())
    log_file.flush()


def _redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if value:
            text = text.replace(value, "***")
    return text
