"""The local platform's ledger record codec: a supervised instance to the stored record dict, and back.

A record holds everything needed to take over after a controller restart (PID, process start
time, port, the spec) except secret values, which never leave memory: only their names are
stored, and the values are supplied again when the record is read back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from safeship.platforms.base import Instance, InstanceSpec, InstanceState, ProbeSpec


def instance_id_of(spec: InstanceSpec) -> str:
    return f"{spec.environment}/{spec.service}/{spec.version}-{spec.index}"


class Supervision(Protocol):
    """What a record is made from: the instance, its spec and its supervisor's bookkeeping."""

    @property
    def spec(self) -> InstanceSpec: ...

    @property
    def instance(self) -> Instance: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def start_ticks(self) -> int | None: ...

    @property
    def crash_streak(self) -> int: ...

    @property
    def stopping(self) -> bool: ...


def record_of(sup: Supervision, memory_limit_mb: int | None, *, platform: str) -> dict[str, object]:
    """The ledger record of a supervised instance: no secret value, only secret names."""
    spec, inst = sup.spec, sup.instance
    return {
        "id": inst.id,
        "platform": platform,
        "service": inst.service,
        "environment": inst.environment,
        "version": inst.version,
        "index": inst.index,
        "host": inst.host,
        "port": inst.port,
        "pid": inst.pid,
        "start_ticks": sup.start_ticks,
        "state": inst.state.value,
        "started_at": inst.started_at,
        "restarts": inst.restarts,
        "last_failure": inst.last_failure,
        "crash_streak": sup.crash_streak,
        "stopping": sup.stopping,
        "log_path": str(sup.log_path),
        "memory_limit_mb": memory_limit_mb,
        "spec": {
            "command": list(spec.command),
            "env": dict(spec.env),
            "secret_names": sorted(spec.secret_env),  # names only: values never leave memory
            "cpu": spec.cpu,
            "memory_mb": spec.memory_mb,
            "liveness": _probe_record(spec.liveness),
            "readiness": _probe_record(spec.readiness),
            "grace_period": spec.grace_period,
            "workdir": spec.workdir,
        },
    }


def spec_from_record(record: Mapping[str, object], secrets: Mapping[str, str]) -> InstanceSpec:
    raw = as_mapping(record["spec"])
    workdir = raw.get("workdir")
    return InstanceSpec(
        service=str(record["service"]),
        environment=str(record["environment"]),
        version=str(record["version"]),
        index=as_int(record["index"]),
        command=as_str_list(raw["command"]),
        env={str(k): str(v) for k, v in as_mapping(raw.get("env", {})).items()},
        secret_env=dict(secrets),
        cpu=float(_number(raw.get("cpu", 0.1))),
        memory_mb=as_int(raw.get("memory_mb", 128)),
        liveness=_probe_from(raw["liveness"]),
        readiness=_probe_from(raw["readiness"]),
        grace_period=float(_number(raw.get("grace_period", 10.0))),
        workdir=None if workdir is None else str(workdir),
    )


def instance_from_record(record: Mapping[str, object], spec: InstanceSpec, *, default_host: str) -> Instance:
    last_failure = record.get("last_failure")
    return Instance(
        id=instance_id_of(spec),
        service=spec.service,
        environment=spec.environment,
        version=spec.version,
        index=spec.index,
        host=str(record.get("host", default_host)),
        port=as_int(record.get("port", 0)),
        pid=as_optional_int(record.get("pid")),
        state=InstanceState(str(record.get("state", InstanceState.STARTING.value))),
        started_at=float(_number(record.get("started_at", 0.0))),
        restarts=as_int(record.get("restarts", 0)),
        last_failure=None if last_failure is None else str(last_failure),
    )


def _probe_record(probe: ProbeSpec) -> dict[str, object]:
    return dataclasses.asdict(probe) | {"command": list(probe.command)}


def _probe_from(raw: object) -> ProbeSpec:
    data = as_mapping(raw)
    return ProbeSpec(
        kind=str(data.get("kind", "http")),
        path=str(data.get("path", "/")),
        command=tuple(as_str_list(data.get("command", []))),
        timeout=float(_number(data.get("timeout", 1.0))),
        interval=float(_number(data.get("interval", 1.0))),
        failure_threshold=as_int(data.get("failure_threshold", 3)),
        success_threshold=as_int(data.get("success_threshold", 1)),
        initial_delay=float(_number(data.get("initial_delay", 0.0))),
    )


def as_mapping(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def as_str_list(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return [str(item) for item in value]


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def as_int(value: object) -> int:
    return int(_number(value))


def as_optional_int(value: object) -> int | None:
    return None if value is None else as_int(value)
