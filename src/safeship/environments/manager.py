"""Prepare, validate and clean up environments. Platform-neutral: each check is a named result, so
Kubernetes objects (namespaces, quotas, network policies) can add their own checks later."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeship.config.models import DeploymentStrategy, Environment, EnvironmentType, SafeshipConfig
from safeship.errors import ConflictError, NotFoundError

MIN_FREE_DISK_MB = 200


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def environment_or_fail(config: SafeshipConfig, name: str) -> Environment:
    environment = config.environment(name)
    if environment is None:
        known = ", ".join(e.name for e in config.environment_management.environments) or "none"
        raise NotFoundError(f"environment {name!r} is not configured (known: {known})")
    return environment


def required_capacity(config: SafeshipConfig, strategy: DeploymentStrategy | None = None) -> tuple[float, float]:
    """cpu cores and MiB all services need at once, with room for one deployment's extra capacity:
    blue-green doubles a service, canary and rolling add a surge."""
    cpu = memory = 0.0
    extra_cpu = extra_memory = 0.0
    surge = config.intelligent_deployment.strategies.rolling.max_surge
    for service in config.services.values():
        cpu += service.replicas * service.resources.cpu
        memory += service.replicas * service.resources.memory
        factor = service.replicas if strategy in (None, DeploymentStrategy.BLUE_GREEN) else max(1, surge)
        extra_cpu = max(extra_cpu, factor * service.resources.cpu)
        extra_memory = max(extra_memory, factor * service.resources.memory)
    return cpu + extra_cpu, memory + extra_memory


class EnvironmentManager:
    def __init__(self, config: SafeshipConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir

    def paths(self, environment: Environment) -> dict[str, Path]:
        return {
            "state": self.state_dir / "environments" / environment.name,
            "logs": self.state_dir / "logs" / environment.name,
        }

    def prepare(self, name: str) -> list[Check]:
        environment = environment_or_fail(self.config, name)
        checks = []
        for label, path in self.paths(environment).items():
            path.mkdir(parents=True, exist_ok=True)
            checks.append(Check(f"{label} directory", True, f"{path} ready"))
        config_file = self.paths(environment)["state"] / "environment.env"
        lines = [f"{k}={v}" for k, v in sorted(environment.variables.items())]
        config_file.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        checks.append(Check("config", True, f"{len(lines)} variables written to {config_file}"))
        return checks

    def validate(self, name: str) -> list[Check]:
        environment = environment_or_fail(self.config, name)
        checks = []
        for label, path in self.paths(environment).items():
            writable = path.is_dir() and os.access(path, os.W_OK)
            checks.append(Check(f"{label} directory", writable,
                                f"{path} is writable" if writable else f"{path} is missing or not writable "
                                f"(run environment-manager --prepare --environment {name})"))
        cpu, memory = required_capacity(self.config)
        quota = environment.resource_quotas
        checks.append(Check("cpu quota", cpu <= quota.cpu,
                            f"services need {cpu:g} cpu (blue-green headroom included), quota {quota.cpu:g}"))
        checks.append(Check("memory quota", memory <= quota.memory,
                            f"services need {memory:g}Mi (blue-green headroom included), quota {quota.memory:g}Mi"))
        if environment.platform == "local":
            for service_name, service in self.config.services.items():
                if not service.command:
                    checks.append(Check(f"{service_name} command", False, "no command configured"))
                    continue
                program = service.command[0]
                found = program in ("python", "python3") or shutil.which(program) is not None
                checks.append(Check(f"{service_name} command", found,
                                    f"{program} {'found' if found else 'not found on PATH'}"))
        free_mb = shutil.disk_usage(self.state_dir if self.state_dir.exists() else Path.cwd()).free / 2**20
        checks.append(Check("disk space", free_mb >= MIN_FREE_DISK_MB, f"{free_mb:.0f}Mi free"))
        return checks

    def cleanup(self, name: str, *, force: bool, ledger: Any) -> list[Check]:
        environment = environment_or_fail(self.config, name)
        if environment.type is EnvironmentType.PRODUCTION and not force:
            raise ConflictError(f"environment {name!r} is production: cleanup needs --force")
        checks = []
        stopped = 0
        for record in ledger.load_instances(environment=name):
            pid = record.get("pid")
            if isinstance(pid, int) and pid > 0:
                try:
                    os.killpg(pid, signal.SIGTERM)
                    stopped += 1
                except (ProcessLookupError, PermissionError):
                    pass
            ledger.delete_instance(str(record["id"]))
        checks.append(Check("instances", True, f"{stopped} instances told to stop"))
        for label, path in self.paths(environment).items():
            if label == "state" and path.exists():
                shutil.rmtree(path)
            checks.append(Check(f"{label} directory", True, f"{path} removed" if label == "state"
                                else f"{path} kept (history)"))
        return checks


def summary(checks: list[Check]) -> Mapping[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]}
