"""The Platform protocol: where instances run. Only the interface and its value types live here."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from safeship.clock import Clock
from safeship.config.models import Environment, SafeshipConfig


class InstanceState(str, enum.Enum):
    STARTING = "starting"  # process up, not yet ready
    READY = "ready"  # passing readiness: may get traffic
    UNREADY = "unready"  # alive but failing readiness
    RESTARTING = "restarting"  # liveness failed or the process died; waiting out its backoff
    FAILED = "failed"  # gave up (exceeded restart budget) or could not start
    STOPPED = "stopped"

    @property
    def is_serving(self) -> bool:
        return self is InstanceState.READY


@dataclass(frozen=True)
class ProbeSpec:
    """One probe (liveness or readiness). kind: http | tcp | exec."""

    kind: str = "http"
    path: str = "/health/ready"
    command: tuple[str, ...] = ()
    timeout: float = 1.0
    interval: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0.0
    # exec: the user and group the command runs as (the environment's run_as_user, when the
    # controller is root); None: the controller's own.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class InstanceSpec:
    service: str
    environment: str
    version: str
    index: int  # 0.. replicas-1 within the version; also names the log file
    command: Sequence[str] = ()  # template; {port}, {version}, {service}, {environment}, {index}
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)  # never logged
    cpu: float = 0.1  # cores requested
    memory_mb: int = 128  # requested; also the memory limit where limits are enforced
    liveness: ProbeSpec = ProbeSpec(path="/health/live")
    readiness: ProbeSpec = ProbeSpec(path="/health/ready")
    grace_period: float = 10.0  # SIGTERM .. SIGKILL
    workdir: str | None = None


@dataclass
class Instance:
    id: str  # "<environment>/<service>/<version>-<index>"
    service: str
    environment: str
    version: str
    index: int
    host: str = "127.0.0.1"
    port: int = 0
    pid: int | None = None
    state: InstanceState = InstanceState.STARTING
    started_at: float = 0.0
    restarts: int = 0
    last_failure: str | None = None  # evidence for HealthCheckFailure: "exit code -9", "OOM", ...
    # While not ready: the last failed readiness probe, named with its timeout ("readiness probe
    # GET /health/ready (timeout 1s): timed out after 1s"), so a readiness timeout says why.
    unready_because: str | None = None

    @property
    def ready(self) -> bool:
        return self.state.is_serving

    @property
    def stopped(self) -> bool:
        return self.state is InstanceState.STOPPED


# index -> the spec of that instance; called only for instances that must be started
SpecTemplate = Callable[[int], InstanceSpec]
# called once, before any instance is stopped, with the instances of the version that keep
# serving (ready, index < replicas): the caller's router drains the leaving ones there
LeavingHook = Callable[[Sequence[Instance]], Awaitable[None]]
StartedHook = Callable[[Instance], None]
StoppedHook = Callable[[Instance], None]


class Platform(Protocol):
    """Where instances run: starts, stops, lists and scales the instances of a version of a
    service in an environment, and keeps them alive (restarts with backoff) in between.

    Contract:
    - `start` returns at once (state STARTING); readiness comes later and is seen in `instances`.
    - `stop` is called after the caller's router has drained the instance; it waits `drain`
      seconds for in-flight work, then terminates. Stopping an unknown or stopped instance is a no-op.
    - `scale` converges a version to `replicas` instances (indexes 0..replicas-1): missing indexes
      are started from `template(index)`, higher ones are drained first (`on_leaving`) and then
      stopped. It is idempotent.
    - `adopt` takes over the instances a previous owner left running (a restarted controller)
      and returns them; a platform whose instances do not outlive it returns [].
    - Errors of the platform's own machinery (processes, sockets, an API) reach callers only as
      `TemporaryError` (try again after `delay`) or `PermanentError`; bad specs as `InputError`.

    What differs between platforms, and so decides how safeship drives them, is said by class
    attributes of the registered class (see `PlatformTraits`).
    """

    async def start(self, spec: InstanceSpec) -> Instance:
        """Start one instance and return at once (state STARTING); readiness comes later."""
        ...

    async def stop(self, instance: Instance, *, drain: float) -> None:
        """Stop it: wait `drain` seconds for in-flight work, then terminate."""
        ...

    async def instances(self, service: str, environment: str) -> list[Instance]:
        """Every instance the platform knows for this service, with its current state."""
        ...

    async def scale(
        self,
        service: str,
        environment: str,
        version: str,
        replicas: int,
        template: SpecTemplate,
        *,
        drain: float,
        on_leaving: LeavingHook | None = None,
        on_started: StartedHook | None = None,
        on_stopped: StoppedHook | None = None,
    ) -> None:
        """Converge `version` to `replicas` instances (see the class contract)."""
        ...

    async def adopt(self) -> list[Instance]:
        """Take over the instances left running by a previous owner; [] when there are none."""
        ...

    async def close(self) -> None: ...


class PlatformTraits(Protocol):
    """The class attributes of a registered platform class.

    runs_in_controller: a deployment there is driven by the controller daemon (real time, real
                        instances that outlive any one command); False: the command that deploys
                        drives it in the foreground on a virtual clock.
    runs_commands:      instances are processes started on this host from `services.<name>.command`,
                        so their commands and this host's process limits can be checked beforehand.
    router:             the name of the router (in `safeship.routing.ROUTERS`) that steers its traffic.
    traffic:            the name of the traffic source (in `safeship.traffic.TRAFFIC_SOURCES`) that
                        measures it.
    """

    runs_in_controller: ClassVar[bool]
    runs_commands: ClassVar[bool]
    router: ClassVar[str]
    traffic: ClassVar[str]

    def create(self, setup: PlatformSetup) -> Platform: ...


@dataclass(frozen=True)
class PlatformSetup:
    """What a registered platform may be built from, by the controller that owns it.

    state_dir:   where it may keep files (logs, state);
    ledger:      where it records the instances it starts, so that a restarted owner adopts them;
    clock:       the clock of its world;
    prober:      how to probe an instance (`safeship.analysis.probes.probe`), or None for the
                 platform's own default;
    secrets_for: (service, environment) -> secret values to give the instances;
    run_as_user: (service, environment) -> the user to run instances as, or None;
    config, environment: the settings it runs (None where a test builds it bare); a platform built
                 per environment (`PlatformTraits.per_environment`) gets its environment here.
    """

    state_dir: Path
    ledger: InstanceLedger
    clock: Clock
    prober: Any = None
    secrets_for: Callable[[str, str], Mapping[str, str]] | None = None
    run_as_user: Callable[[str, str], str | None] | None = None
    config: SafeshipConfig | None = None
    environment: Environment | None = None


class InstanceLedger(Protocol):
    """Where a platform keeps the records of instances it started (PIDs, ports), so that a restarted
    controller adopts them instead of starting duplicates. The store implements it; tests may use
    `MemoryLedger`."""

    def save_instance(self, record: Mapping[str, object]) -> None:
        """Insert or replace the record whose "id" matches."""
        ...

    def delete_instance(self, instance_id: str) -> None: ...

    def load_instances(self, service: str | None = None, environment: str | None = None) -> list[dict[str, object]]: ...


class MemoryLedger:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, object]] = {}

    def save_instance(self, record: Mapping[str, object]) -> None:
        self.records[str(record["id"])] = dict(record)

    def delete_instance(self, instance_id: str) -> None:
        self.records.pop(instance_id, None)

    def load_instances(self, service: str | None = None, environment: str | None = None) -> list[dict[str, object]]:
        return [
            dict(r)
            for r in self.records.values()
            if (service is None or r.get("service") == service)
            and (environment is None or r.get("environment") == environment)
        ]
