"""Admission gates that run before anything starts: freeze windows, concurrency, quota."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from safeship.config.models import Environment, SafeshipConfig
from safeship.engine.selection import Capacity
from safeship.errors import ConflictError, InputError
from safeship.store import Store, sha256_of
from safeship.strategies.base import Step


class QuotaExceeded(InputError):
    """The deployment would not fit the environment's resource quota; nothing was started."""


class ArtifactMismatch(ConflictError):
    """The version's registered build artifact is missing or its bytes changed; nothing was started."""


class FrozenError(ConflictError):
    """A freeze window is in force."""


def check_freeze(environment: Environment, now: datetime, override_reason: str | None) -> str | None:
    """The description of the freeze window in force, when overridden; raises when not overridden."""
    if not environment.freeze_windows:
        return None
    from safeship.environments.freeze import active_window, describe, parse_window

    windows = [parse_window(w.model_dump(), "safeship.yaml", f"environments.{environment.name}.freeze_windows")
               for w in environment.freeze_windows]
    active = active_window(windows, now)
    if active is None:
        return None
    described = describe(active)
    if override_reason is None or not override_reason.strip():
        raise FrozenError(
            f"{environment.name} is frozen by {described}; deploy later or pass --override-freeze REASON"
        )
    return described


def check_artifact(store: Store, service: str, version: str) -> None:
    """Refuses a version whose registered build artifact no longer hashes to what the pipeline
    tested (the file is gone, unreadable or changed), so that a deploy runs exactly the tested
    bytes. Versions that no pipeline built have no artifact and pass."""
    artifact = store.artifact(service, version)
    if artifact is None:
        return
    try:
        found = sha256_of(artifact.path)
    except FileNotFoundError:
        found = "none (the file is missing)"
    except OSError as exc:
        found = f"none (the file cannot be read: {exc.strerror or exc})"
    if found != artifact.sha256:
        raise ArtifactMismatch(
            f"{service} {version}: the artifact {artifact.path} that pipeline run {artifact.run_id} built "
            f"no longer matches: expected sha256 {artifact.sha256}, found {found}; nothing was started "
            f"(run `safeship pipeline run` again to rebuild it)"
        )


def check_concurrency(store: Store, environment: Environment) -> None:
    limit = environment.max_concurrent_deployments
    if limit is None:
        return
    active = store.list_deployments(environment=environment.name, active_only=True, limit=limit + 1)
    if len(active) >= limit:
        names = ", ".join(f"{d.service} {d.version} ({d.id})" for d in active)
        raise ConflictError(
            f"{environment.name} allows {limit} deployment(s) at a time and has {len(active)} running: {names}"
        )


def free_capacity(config: SafeshipConfig, store: Store, service: str, environment: Environment) -> Capacity:
    """The quota left for `service`: the quota minus what the other services serving there request."""
    cpu, memory = environment.resource_quotas.cpu, environment.resource_quotas.memory
    serving = store.current_versions(environment.name)  # one query, however many services there are
    for name, other in config.services.items():
        if name == service or name not in serving:
            continue
        cpu -= other.replicas * other.resources.cpu
        memory -= other.replicas * other.resources.memory
    return Capacity(cpu_free=cpu, memory_free_mb=memory)


def peak_instances(plan: Sequence[Step], baseline: str | None, replicas: int) -> int:
    """The most instances of the service that run at once while the plan runs."""
    counts: dict[str, int] = {baseline: replicas} if baseline else {}
    peak = sum(counts.values())
    for step in plan:
        if step["kind"] == "scale":
            counts[step["version"]] = int(step["replicas"])
            peak = max(peak, sum(counts.values()))
    return peak


@dataclass(frozen=True)
class Shortfall:
    resource: str
    requested: float
    available: float
    unit: str

    def __str__(self) -> str:
        return f"{self.resource}: needs {self.requested:g}{self.unit} at peak, {self.available:g}{self.unit} available"


def shortfall(peak: int, cpu_each: float, memory_each: float, capacity: Capacity) -> Shortfall | None:
    cpu, memory = peak * cpu_each, peak * memory_each
    if cpu > capacity.cpu_free + 1e-9:
        return Shortfall("cpu", round(cpu, 3), round(max(capacity.cpu_free, 0.0), 3), " cores")
    if memory > capacity.memory_free_mb + 1e-9:
        return Shortfall("memory", math.ceil(memory), math.floor(max(capacity.memory_free_mb, 0.0)), "Mi")
    return None
