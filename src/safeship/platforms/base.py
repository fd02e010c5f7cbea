"""The Platform protocol: where instances run. Only the interface and its value types live here."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


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

    @property
    def ready(self) -> bool:
        return self.state.is_serving


class Platform(Protocol):
    async def start(self, spec: InstanceSpec) -> Instance:
        """Start one instance and return at once (state STARTING); readiness comes later."""
        ...

    async def stop(self, instance: Instance, *, drain: float) -> None:
        """Stop it: wait `drain` seconds for in-flight work, then terminate."""
        ...

    async def instances(self, service: str, environment: str) -> list[Instance]:
        """Every instance the platform knows for this service, with its current state."""
        ...

    async def close(self) -> None: ...


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
