"""Prepare, validate and clean up environments (seed §3) on the local platform.

Platform-neutral by shape: every action is a list of named checks (`Check`), and what it touched is
recorded in the store. A Kubernetes manager adds its own checks (namespace, quota objects, network
policies, RBAC) behind the same three verbs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeship.config.models import Environment, EnvironmentType, SafeshipConfig
from safeship.config.names import check_name, inside
from safeship.config.ports import route_port, route_port_rule
from safeship.environments.ports import describe_holder, ephemeral_range
from safeship.environments.scrape import write_scrape_config
from safeship.environments.secrets import load_secrets, register, secrets_dir
from safeship.errors import ConfigError, ConflictError, NotFoundError
from safeship.platforms import runs_commands
from safeship.platforms.limits import detect
from safeship.routing.base import RouteKey
from safeship.store import Store

MIN_FREE_DISK_MB = 200
ROUTES_FILE = "routes.json"
KUBERNETES = "kubernetes"  # environments on this platform are prepared on their cluster


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passed, but something the user should change

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "warning": self.warning}


def environment_or_fail(config: SafeshipConfig, name: str) -> Environment:
    """The configured environment called `name`. Its name becomes folder names under the state
    directory, so it is checked here as well as when the config loads: a config object built
    some other way must not lead prepare or cleanup out of their folders."""
    check_name("environment", name, field="--environment")
    environment = config.environment(name)
    if environment is None:
        known = ", ".join(e.name for e in config.environment_management.environments) or "none"
        raise NotFoundError(f"environment {name!r} is not configured (known: {known})")
    check_name("environment", environment.name, field="environment_management.environments.name")
    return environment


def configured_port(config: SafeshipConfig, service: str, environment: str) -> int | None:
    """The route port of a service in an environment, or None when any free port will do
    (`services.<name>.ports.<environment>: 0`). The rule is in config/ports.py: the port the
    config gives, else one hashed from the two names; never one from the order of a list."""
    return route_port(config, service, environment)


def port_rule(config: SafeshipConfig, service: str, environment: str) -> str:
    """Where `configured_port` got its number, in words, for prepare and validate to print."""
    return route_port_rule(config, service, environment)


def required_capacity(config: SafeshipConfig) -> tuple[float, float, str]:
    """cpu cores and MiB all services need at once, plus the extra capacity of the hungriest
    deployment (blue-green and the end of a canary double a service; rolling adds its surge)."""
    cpu = memory = extra_cpu = extra_memory = 0.0
    hungriest = "none"
    for name, service in config.services.items():
        cpu += service.replicas * service.resources.cpu
        memory += service.replicas * service.resources.memory
        if service.replicas * service.resources.cpu > extra_cpu:
            extra_cpu = service.replicas * service.resources.cpu
            extra_memory = service.replicas * service.resources.memory
            hungriest = name
    return cpu + extra_cpu, memory + extra_memory, hungriest


def read_routes(state_dir: Path) -> dict[RouteKey, int]:
    """The route ports the controller last bound, from `<state_dir>/routes.json` (empty if none)."""
    try:
        data = json.loads((state_dir / ROUTES_FILE).read_text())
        return {RouteKey(r["service"], r["environment"]): int(r["port"]) for r in data["routes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def port_owner(port: int, owned: set[int]) -> str:
    """'free', 'ours' (our running controller listens there) or 'taken'."""
    if port in owned:
        return "ours"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return "taken"
    return "free"


class EnvironmentManager:
    def __init__(self, config: SafeshipConfig, *, state_dir: Path, root: Path, store: Store) -> None:
        self.config = config
        self.state_dir = state_dir
        self.root = root  # the config file's folder: secrets/<env>/ lives here
        self.store = store

    def paths(self, environment: Environment) -> dict[str, Path]:
        """The environment's own folders; InputError when its name would lead anywhere else."""
        return {
            "state": inside(self.state_dir / "environments", environment.name),
            "logs": inside(self.state_dir / "logs", environment.name),
        }

    def owned_ports(self) -> set[int]:
        return set(read_routes(self.state_dir).values())

    def secret_names(self) -> list[str]:
        return sorted({name for service in self.config.services.values() for name in service.secrets})

    def _on_cluster(self, environment: Environment) -> Any:
        """The environment on its Kubernetes cluster (`environments.kubernetes`, imported only here
        so that the local platform never loads the Kubernetes code)."""
        from safeship.environments.kubernetes import KubernetesEnvironment

        return KubernetesEnvironment(self.config, environment, root=self.root, store=self.store)

    # ------------------------------------------------------------ prepare

    def prepare(self, name: str) -> list[Check]:
        environment = environment_or_fail(self.config, name)
        if environment.platform == KUBERNETES:
            from safeship.environments.kubernetes import run

            return run(self._on_cluster(environment).prepare)
        paths = self.paths(environment)
        files = self._config_map_files(environment, paths["state"])  # every name checked before any write
        env_file = inside(paths["state"], "environment.env")
        secrets = load_secrets(self.root, name, self.secret_names())  # unsafe or missing: refused now
        register(secrets.values())
        checks: list[Check] = [*_router_check(environment)]
        for label, path in paths.items():
            path.mkdir(parents=True, exist_ok=True)
            checks.append(Check(f"{label} directory", True, f"{path} ready"))
        ports = self._reserve_ports(environment, checks)
        for map_name, values in environment.config_maps.items():
            folder = inside(paths["state"], "config", map_name)
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in values.items():
                files[map_name, key].write_text(value, encoding="utf-8")
            checks.append(Check(f"config map {map_name}", True, f"{len(values)} keys written to {folder}"))
        lines = [f"{k}={v}" for k, v in sorted(environment.variables.items())]
        env_file.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        checks.append(Check("variables", True, f"{len(lines)} variables written to {env_file}"))
        if environment.traffic_source == "prometheus":  # a scrape job for the user's Prometheus
            written = write_scrape_config(environment, self.state_dir, paths["state"])
            checks.append(Check("prometheus scrape config", True, written))
        checks.append(Check("secrets", True, f"{len(secrets)} loaded from "
                            f"{secrets_dir(self.root, name)} ({', '.join(sorted(secrets)) or 'none'}), all 0600"))
        self.store.save_environment_state(name, {
            "directories": {k: str(v) for k, v in paths.items()},
            "ports": ports,
            "config_maps": sorted(environment.config_maps),
            "secrets": sorted(secrets),
        }, time.time())
        checks.append(Check("store", True, f"prepared state of {name} recorded"))
        return checks

    @staticmethod
    def _config_map_files(environment: Environment, state: Path) -> dict[tuple[str, str], Path]:
        """`<state>/config/<map>/<key>` for every config map key, each refused unless it stays in
        its map's folder (a key such as `../../x` would write elsewhere)."""
        files: dict[tuple[str, str], Path] = {}
        for map_name, values in environment.config_maps.items():
            folder = inside(state, "config", map_name)
            if folder.parent != inside(state, "config"):
                raise ConfigError("environment_management", f"config_maps.{map_name}",
                                  "a config map name must be a single folder name")
            for key in values:
                target = inside(folder, key)
                if target.parent != folder:
                    raise ConfigError("environment_management", f"config_maps.{map_name}.{key}",
                                      "a config map key must be a single file name")
                files[map_name, key] = target
        return files

    def _reserve_ports(self, environment: Environment, checks: list[Check]) -> dict[str, int | None]:
        owned = self.owned_ports()
        ports: dict[str, int | None] = {}
        for service in self.config.services:
            port = configured_port(self.config, service, environment.name)
            ports[service] = port
            if port is None:
                checks.append(Check(f"{service} port", True, "picked by the controller when it starts"))
                continue
            owner = port_owner(port, owned)
            if owner == "taken":
                raise ConflictError(f"port {port} for {service} in {environment.name} is taken by another process "
                                    f"({describe_holder(port)})")
            rule = port_rule(self.config, service, environment.name)
            checks.append(Check(f"{service} port", True, f"127.0.0.1:{port} ({rule}) reserved ({owner})"))
        return ports

    # ------------------------------------------------------------ validate

    def validate(self, name: str) -> list[Check]:
        """The environment's checks; the results are kept with the environment's state, so the
        dashboard shows the last validation whoever ran it."""
        checks = self._checks(name)
        state = self.store.environment_state(name) or {}
        state["last_validate"] = {"at": time.time(), "ok": all(c.ok for c in checks),
                                  "checks": [c.to_json() for c in checks]}
        self.store.save_environment_state(name, state, time.time())
        return checks

    def _checks(self, name: str) -> list[Check]:
        environment = environment_or_fail(self.config, name)
        if environment.platform == KUBERNETES:
            from safeship.environments.kubernetes import run

            return run(self._on_cluster(environment).validate)
        checks = [self._writable(label, path) for label, path in self.paths(environment).items()]
        checks.append(self._secrets_check(name))
        checks += _router_check(environment)
        checks += self._port_checks(name)
        cpu, memory, hungriest = required_capacity(self.config)
        quota = environment.resource_quotas
        checks.append(Check("cpu quota", cpu <= quota.cpu, f"services need {cpu:g} cores with room for one "
                            f"deployment of {hungriest} at double capacity; quota {quota.cpu:g}"))
        checks.append(Check("memory quota", memory <= quota.memory, f"services need {memory:g}Mi with room "
                            f"for one deployment of {hungriest} at double capacity; quota {quota.memory:g}Mi"))
        if runs_commands(environment.platform):
            checks += [self._command_check(service) for service in self.config.services]
            checks.append(Check("process limits", True, detect().describe()))
        usage = shutil.disk_usage(self.state_dir if self.state_dir.exists() else self.root)
        free_mb = usage.free / 2**20
        checks.append(Check("disk space", free_mb >= MIN_FREE_DISK_MB,
                            f"{free_mb:.0f}Mi free (at least {MIN_FREE_DISK_MB}Mi wanted)"))
        return checks

    def _port_checks(self, name: str) -> list[Check]:
        """Each route's port: free or ours, else failed naming the process that holds it; a port in
        the kernel's ephemeral range passes with a warning, since any outgoing connection may be
        handed it while the controller is down."""
        owned = self.owned_ports()
        low, high = ephemeral_range()
        checks = []
        for service in self.config.services:
            port = configured_port(self.config, service, name)
            if port is None:
                checks.append(Check(f"{service} port", True, "any free port, picked by the controller "
                                    f"(services.{service}.ports.{name}: 0)"))
                continue
            owner = port_owner(port, owned)
            rule = port_rule(self.config, service, name)
            detail = f"127.0.0.1:{port} ({rule}) is {owner}"
            if owner == "taken":
                detail += f": {describe_holder(port)}"
            warning = low <= port <= high
            if warning:
                detail += (f"; warning: {port} is inside the ephemeral port range {low}-{high} "
                           "(/proc/sys/net/ipv4/ip_local_port_range), which the kernel hands to outgoing "
                           "connections: choose a port outside it")
            checks.append(Check(f"{service} port", owner != "taken", detail, warning=warning))
        return checks

    @staticmethod
    def _writable(label: str, path: Path) -> Check:
        """A directory that exists must be writable. One that does not exist yet is no failure: the
        first deploy (or --prepare) creates it, so it only needs a writable folder to go in."""
        if path.is_dir():
            ok = os.access(path, os.W_OK | os.X_OK)
            return Check(f"{label} directory", ok, f"{path} is writable" if ok else f"{path} is not writable")
        if path.exists():
            return Check(f"{label} directory", False, f"{path} exists but is not a directory")
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
            return Check(f"{label} directory", True,
                         f"{path} does not exist yet; it will be created on first deploy (or by --prepare)")
        return Check(f"{label} directory", False,
                     f"{path} does not exist and cannot be created: {ancestor} is not a writable directory")

    def _secrets_check(self, name: str) -> Check:
        wanted = self.secret_names()
        try:
            found = load_secrets(self.root, name, wanted)
        except ConfigError as exc:
            return Check("secrets", False, str(exc))
        return Check("secrets", True, f"{len(found)} of {len(wanted)} present and private")

    def _command_check(self, service: str) -> Check:
        command = self.config.services[service].command
        if not command:
            return Check(f"{service} command", False, "no command configured")
        program = command[0]
        found = program in ("python", "python3") or shutil.which(program) is not None
        return Check(f"{service} command", found, f"{program} {'found' if found else 'not found on PATH'}")

    # ------------------------------------------------------------ cleanup

    def cleanup(self, name: str, *, force: bool,
                controller_cleanup: Callable[[str], Mapping[str, Any]] | None) -> list[Check]:
        """Stop the environment's instances and routes, release its ports, remove its state; keep
        its history. With a running controller, the controller stops them (it would restart
        processes killed behind its back); without one, the recorded PIDs are stopped here."""
        environment = environment_or_fail(self.config, name)
        if environment.platform == KUBERNETES:
            from safeship.environments.kubernetes import run

            on_cluster = self._on_cluster(environment)
            return run(lambda: on_cluster.cleanup(force=force))
        state = self.paths(environment)["state"]  # refused here, before anything is stopped
        if environment.type is EnvironmentType.PRODUCTION and not force:
            raise ConflictError(f"environment {name!r} is production: cleanup needs --force")
        checks: list[Check] = []
        if controller_cleanup is not None:
            done = controller_cleanup(name)
            checks.append(Check("instances", True, f"controller stopped {done.get('instances_stopped', 0)} "
                                f"instances and closed {done.get('routes_closed', 0)} routes"))
        else:
            stopped = self._stop_recorded(name)
            checks.append(Check("instances", True, f"{stopped} recorded instances stopped (no controller running)"))
        self.store.forget_environment(name)
        checks.append(Check("ports", True, "reservations released"))
        if state.is_dir():
            shutil.rmtree(state)
        checks.append(Check("state directory", True, f"{state} removed"))
        checks.append(Check("history", True, f"deployments, rollbacks and logs of {name} kept"))
        return checks

    def _stop_recorded(self, name: str) -> int:
        pids = [pid for r in self.store.load_instances(environment=name) if isinstance(pid := r.get("pid"), int)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    continue
            if sig is signal.SIGTERM and pids:
                time.sleep(1.0)
        return len(pids)


def _router_check(environment: Environment) -> list[Check]:
    """`router: haproxy` needs the haproxy program: a failed check now, not an error mid-deploy."""
    if environment.router != "haproxy":
        return []
    from safeship.routing.haproxy import check_binary

    found, detail = check_binary()
    return [Check("haproxy", found, detail)]


def summary(checks: list[Check]) -> Mapping[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]}
