"""The controller daemon's core: the platform, router and traffic source of the environments it
runs (built from the registries by each environment's platform), and one DeploymentEngine.

A background loop keeps every route's backends equal to the ready instances of each version and
runs one task per active deployment. The engine does the deploying; this module only wires it,
serialises it with backend syncing (one lock per route), and restores the picture after a restart:
adopted instances, the route ports of `routes.json`, and the weights the store says were live.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from safeship.analysis.probes import probe
from safeship.analysis.providers.scrape import Target, scrape
from safeship.api.parts import Parts, PlatformByEnvironment, RouterByEnvironment, TrafficByEnvironment, choice_for
from safeship.api.store_setup import apply_stored_settings, open_store
from safeship.clock import Clock, RealClock
from safeship.config.loader import load_config
from safeship.config.models import CustomMetricTrigger, DeploymentRequest, Environment, SafeshipConfig
from safeship.config.paths import state_dir, store_url
from safeship.config.ports import route_host
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.lease import Leases
from safeship.engine.outbox import Outbox
from safeship.engine.phases import Phase
from safeship.engine.policies import policy_for
from safeship.engine.sinks import sinks_from_config
from safeship.engine.status import DeploymentStatus
from safeship.environments.manager import ROUTES_FILE, configured_port, read_routes
from safeship.environments.ports import describe_holder
from safeship.environments.secrets import load_secrets, register
from safeship.errors import ConflictError, InputError, LeaseLostError, NotFoundError, SafeshipError
from safeship.platforms import DEFAULT_PLATFORM, platform_class
from safeship.platforms.base import Platform, PlatformSetup
from safeship.routing.backends import sync_backends
from safeship.routing.base import RouteKey, RouterSetup, RoutesSnapshot, TrafficCounters
from safeship.store import DeploymentRecord, EventRecord, Store
from safeship.traffic import TrafficSetup, TrafficSource

log = logging.getLogger(__name__)

BIND_RETRY_S = 1.0  # a route whose port is held tries it again after this, doubling...
BIND_RETRY_MAX_S = 30.0  # ...up to this
CONTROLLER_EVENTS = "controller"  # the deployment_id of events about the controller's routes


def resolve_paths(config: SafeshipConfig, config_path: str | Path) -> tuple[Path, str]:
    """The state directory and store URL (config/paths.py: the rule the commands follow too)."""
    return state_dir(config, config_path), store_url(config, config_path)


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def counters_json(counters: TrafficCounters) -> dict[str, Any]:
    """What an operator reads: cumulative since this controller started routing."""
    has = counters.requests > 0
    return {
        "requests": counters.requests,
        "errors": counters.errors,
        "connect_failures": counters.connect_failures,
        "error_rate": round(counters.error_rate, 5) if has else None,
        "p99_ms": round(counters.quantile_ms(0.99), 2) if has else None,
        "mean_ms": round(counters.mean_ms, 2) if has else None,
    }


POLICIES_MODULE = "safeship.analysis.policies"


def controller_environments(config: SafeshipConfig) -> list[Environment]:
    """The environments a controller daemon runs: those whose platform is registered and says its
    deployments are driven by the controller (the others run in the foreground of a command, or
    cannot run on this installation at all)."""
    found = []
    for environment in config.environment_management.environments:
        try:
            cls = platform_class(environment.platform)
        except InputError:
            continue  # not registered here: commands refuse it before anything starts
        if cls.runs_in_controller:
            found.append(environment)
    return found


class Controller:
    """The controller daemon's core: it owns the platform, router and traffic source of the
    environments whose platform runs in a controller, and one engine that deploys there.

    Contract:
    - What it runs is built from the registries, per environment (`api.parts`): the platform it
      names, the router and traffic source it names or else its platform's defaults (the class
      attributes `router` and `traffic`). Nothing here depends on which platform or router it is.
    - `start()` opens the router, adopts the instances a previous controller left running,
      restores every route's backends and weights, listens, and then loops; `stop()` stops routing
      and supervising, and leaves instances running for the next controller.
    - A route's backends change only under the route's lock: either the reconcile loop
      (`sync_route`) or a deployment tick holds it, never both.
    - Commands (`submit`, `cancel`, `rollback`, `approve`) change the store through the engine and
      wake the deployment; they never touch the world themselves.
    """

    def __init__(
        self,
        config: SafeshipConfig,
        *,
        state_dir: Path,
        store: Store,
        sync_interval: float | None = None,
        secrets_root: Path | None = None,
        clock: Clock | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # what a reload reads; None: this controller never reloads
        self._config_digest = _digest(config_path)
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self.state_dir = state_dir
        self.store = store
        self.secrets_root = secrets_root or state_dir.parent
        self.clock: Clock = clock if clock is not None else RealClock()
        environments = controller_environments(config)
        self.environment_names = [e.name for e in environments]
        self.parts = Parts(
            environments,
            PlatformSetup(state_dir=state_dir, ledger=store, clock=self.clock, prober=probe,
                          secrets_for=self.secrets_for, run_as_user=self._run_as_user, config=config),
            RouterSetup(state_dir=state_dir, clock=self.clock, own_process=config.router_process, close_grace=2.0,
                        config=config),
            self._traffic_setup(config),
        )
        self.platform: Platform = PlatformByEnvironment(self.parts)
        self.router = RouterByEnvironment(self.parts)
        self.traffic: TrafficSource = TrafficByEnvironment(self.parts)
        world = World(self.platform, self.router, self.clock, gauges=self.gauges, traffic_source=self.traffic)
        self.engine = DeploymentEngine(config, store, world, policy_for=policy_for, secrets_for=self.secrets_for)
        # Notifications leave from the events table, after the transition that wrote them is saved,
        # to the sinks the config declares (the log sink alone when it declares none).
        # A sink new to the store starts at the events from now on, unless its config says `since: start`.
        self.outbox = Outbox(store, sinks_from_config(config, self.secrets_root), new_sinks_from=store.last_event_id(),
                             replay={s.name for s in config.notifications if s.since == "start"})
        self._outbox_stop = asyncio.Event()
        self._outbox_task: asyncio.Task[None] | None = None
        # One lease per deployment this controller drives: more than one controller may run on one store.
        self.leases = Leases(store, duration=config.store.lease_duration,
                             renew_interval=config.store.lease_renew_interval)
        self._renewer: asyncio.Task[None] | None = None
        self.sync_interval = sync_interval or self._default_sync_interval()
        self.routes: dict[RouteKey, int | None] = {}  # managed routes -> the port each listens on
        self.started_at = time.time()
        self._locks: dict[RouteKey, asyncio.Lock] = {}
        self._seen: dict[RouteKey, set[str]] = {}  # versions with instances at the last sync
        self._ready: dict[RouteKey, frozenset[str]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._driving: dict[str, RouteKey] = {}  # deployment id -> route, while a runner drives it
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._policies_loaded: asyncio.Task[object] | None = None
        self._stopping = False
        self._waiting: dict[RouteKey, asyncio.Task[None]] = {}  # routes retrying their own port

    def _traffic_setup(self, config: SafeshipConfig) -> Any:
        def setup(router: Any, environment: Environment | None) -> TrafficSetup:
            return TrafficSetup(router=router, clock=self.clock, state_dir=self.state_dir, config=config,
                                environment=environment)

        return setup

    @classmethod
    def from_config_file(cls, config_path: str | Path) -> Controller:
        """The controller of the config at `config_path`: its store opened as every command opens
        it (with the stored rollback settings applied and validated)."""
        config = load_config(config_path)
        store = open_store(config, config_path)
        return cls(config, state_dir=state_dir(config, config_path), store=store,
                   secrets_root=Path(config_path).resolve().parent, config_path=Path(config_path))

    def _default_sync_interval(self) -> float:
        """Half the shortest readiness interval: a backend that turns unready leaves the router
        well within one probe interval of the platform noticing."""
        services = self.config.services
        intervals = [self.config.health_checks_for(name).readiness.interval for name in services]
        return min(1.0, max(0.05, min(intervals, default=1.0) / 2))

    # ------------------------------------------------------------ lifecycle

    def managed_routes(self) -> list[RouteKey]:
        return [RouteKey(service, name) for name in self.environment_names for service in self.config.services]

    async def start(self) -> None:
        """Adopt the processes left running, restore backends and weights, then listen and loop."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self.router.open()
        adopted = await self.platform.adopt()
        if adopted:
            log.info("adopted %d running instances", len(adopted))
        previous = read_routes(self.state_dir)
        for key in self.managed_routes():
            self._locks[key] = asyncio.Lock()
            await self.sync_route(key)
            try:
                await self._restore_weights(key)  # before listening: the first request goes where it should
                restored = True
            except InputError:  # a router that knows no route before it is opened (HAProxy after a cleanup)
                restored = False
            self.routes[key] = await self._listen(key, previous.get(key))
            if not restored:
                await self._restore_weights(key)
        self._write_routes()
        # Deployments resume once the policies are imported, off the event loop the routes use.
        self._policies_loaded = asyncio.create_task(
            asyncio.to_thread(importlib.import_module, POLICIES_MODULE)
        )
        self._loop = asyncio.create_task(self._reconcile_forever(), name="controller-reconcile")
        self._renewer = asyncio.create_task(self._renew_forever(), name="controller-leases")
        self._outbox_task = asyncio.create_task(self.outbox.run(self._outbox_stop), name="controller-outbox")

    async def stop(self) -> None:
        """Stop routing and supervising; service processes keep running for the next controller."""
        self._stopping = True
        tasks = [t for t in [self._loop, self._renewer, *self._reloads, self._policies_loaded,
                             *self._runners.values(), *self._waiting.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for deployment_id in list(self.leases.held):  # another controller may take them at once
            with contextlib.suppress(SafeshipError):
                self.leases.release(deployment_id)
        self._outbox_stop.set()  # the pass in flight finishes; what is left is sent by the next controller
        if self._outbox_task is not None:
            await self._outbox_task
        await self.traffic.close()
        await self.router.close()
        await self.platform.close()
        self.store.close()

    async def _listen(self, key: RouteKey, previous: int | None) -> int | None:
        """The port the route listens on; None for a router that does not listen.

        The route's port is the user's (config/ports.py): a port that cannot be bound is never
        swapped for another. The route waits for it, retried with backoff in the background, and
        the controller says so in the log and in a `port_unavailable` event, naming the process
        that holds it where /proc shows it. Only a route whose config asks for any free port
        (`ports.<environment>: 0`) keeps the port it had while that is free, else takes another."""
        if not self.router.abilities_for(key).listens:
            await self.router.ensure_route(key)
            return None
        configured = self._configured_port(key)
        if configured is None:
            for port in dict.fromkeys(p for p in (previous, 0) if p is not None):
                try:
                    return await self.router.ensure_route(key, host=self._host(key), port=port)
                except SafeshipError as exc:
                    log.warning("route %s: %s; its config asks for any free port, so it takes another", key, exc)
            raise InputError(f"route {key}: no port to listen on")  # port 0 failing means no sockets
        try:
            return await self.router.ensure_route(key, host=self._host(key), port=configured)
        except SafeshipError as exc:
            self._port_unavailable(key, configured, exc)
        self._waiting[key] = asyncio.create_task(self._bind_later(key, configured), name=f"bind {key}")
        return configured

    def _host(self, key: RouteKey) -> str:
        return route_host(self.config, key.service, key.environment)  # services.<name>.listen, else loopback

    def _configured_port(self, key: RouteKey) -> int | None:
        return configured_port(self.config, key.service, key.environment)

    def _port_unavailable(self, key: RouteKey, port: int, exc: Exception, *, retry_in: float = BIND_RETRY_S,
                          first: bool = True) -> None:
        """Says loudly that `key` cannot listen on its own port, and who holds it."""
        held = describe_holder(port)
        message = (f"route {key}: cannot listen on its port {self._host(key)}:{port}, {held}; the route waits for that "
                   f"port (never another), retrying in {retry_in:g}s: stop what holds it, or set "
                   f"services.{key.service}.ports.{key.environment} to another port")
        log.error("%s (%s)", message, exc)
        if first:
            self.store.add_events([EventRecord(CONTROLLER_EVENTS, time.time(), "port_unavailable", message, {
                "service": key.service, "environment": key.environment, "port": port, "holder": held})])

    async def _bind_later(self, key: RouteKey, port: int) -> None:
        """Retry the route's own port with backoff until it binds or the controller stops."""
        delay = BIND_RETRY_S
        try:
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    async with self._locks[key]:
                        await self.router.ensure_route(key, host=self._host(key), port=port)
                except SafeshipError as exc:
                    delay = min(delay * 2, BIND_RETRY_MAX_S)
                    self._port_unavailable(key, port, exc, retry_in=delay, first=False)
                    continue
                message = f"route {key}: listening on its port {self._host(key)}:{port} now"
                log.warning("%s", message)
                self.store.add_events([EventRecord(CONTROLLER_EVENTS, time.time(), "port_bound", message, {
                    "service": key.service, "environment": key.environment, "port": port})])
                self._waiting.pop(key, None)
                self._write_routes()
                return
        finally:
            self._waiting.pop(key, None)

    async def router_snapshot(self) -> RoutesSnapshot:
        """Every route's counters and unrouted requests, for /metrics."""
        return await self.router.routes_snapshot()

    def _write_routes(self) -> None:
        routes = [
            {"service": k.service, "environment": k.environment, "host": self._host(k), "port": port,
             "listening": k not in self._waiting}
            for k, port in self.routes.items()
            if port is not None
        ]
        write_json_atomically(self.state_dir / ROUTES_FILE, {"routes": routes})

    async def _restore_weights(self, key: RouteKey) -> None:
        weights = self.live_weights(key)
        if weights:
            await self.router.set_weights(key, weights)
            log.info("route %s: weights %s restored", key, weights)

    def live_weights(self, key: RouteKey) -> dict[str, int]:
        """What the store says the route served: an active deployment's last weights, a failed
        deployment's last safe weights, else all traffic to the current stable version."""
        latest = self.store.list_deployments(
            service=key.service, environment=key.environment, limit=1
        )
        served = _served(latest[0] if latest else None)
        if served is not None:
            return served
        stable = self.engine.current_version(key.service, key.environment)
        return {stable: 100} if stable else {}

    # ------------------------------------------------------------ the reconcile loop

    async def _reconcile_forever(self) -> None:
        while not self._stopping:
            try:
                await self.reconcile_once()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.sync_interval)
            self._kick.clear()

    async def reconcile_once(self) -> None:
        for key in list(self.routes):  # a reload may add routes meanwhile
            if not self._locks[key].locked():  # a tick in progress owns the route's backends
                await self.sync_route(key)
        if self._policies_loaded is None or not self._policies_loaded.done():
            return
        for deployment_id in [i for i, task in self._runners.items() if task.done()]:
            del self._runners[deployment_id]
        # ids and routes only: decoding every active deployment's status on each pass cost more
        # than the ticks themselves at a thousand deployments (and a limit left some undriven)
        for deployment_id, service, environment in self.store.active_deployment_keys():
            key = RouteKey(service, environment)
            if key in self._locks and deployment_id not in self._runners and self.leases.may_try(deployment_id):
                self._runners[deployment_id] = asyncio.create_task(
                    self._drive(deployment_id, key), name=f"deployment {deployment_id}"
                )

    async def sync_route(self, key: RouteKey) -> None:
        """Backends of every version = its ready instances; wakes the route's deployment when the
        ready set changed, so a wait_ready step does not sleep through it."""
        instances = await self.platform.instances(key.service, key.environment)
        synced = await sync_backends(self.router, key, instances, seen=self._seen.get(key, ()))
        self._seen[key] = synced.live_versions
        ready = synced.ready_ids()
        if ready != self._ready.get(key):
            self._ready[key] = ready
            for deployment_id, route in self._driving.items():
                if route == key:
                    self.wake(deployment_id)

    async def _drive(self, deployment_id: str, key: RouteKey) -> None:
        """engine.run(), holding the route's lock during each tick and waking early on request,
        while this controller holds the deployment's lease (another controller on the store may
        hold it: then this one leaves the deployment alone until that lease expires)."""
        held = self.leases.take(deployment_id)
        if held is None:
            return
        wake = self._wakes.setdefault(deployment_id, asyncio.Event())
        self._driving[deployment_id] = key
        errors = 0
        last: DeploymentRecord | None = None  # the record as the previous tick left it
        try:
            if held.taken_over:  # another controller drove it before: this route serves what the store says
                async with self._locks[key]:
                    await self._restore_weights(key)
            while not self._stopping and deployment_id not in self.leases.lost:
                wake.clear()
                try:
                    async with self._locks[key]:
                        # The previous tick's record, while the store's row is still that one (one
                        # small query, no JSON decoded); else the tick reads the row again.
                        known = last if last is not None and (
                            self.store.deployment_row_version(deployment_id) == last.row_version) else None
                        last = None
                        wait, last = await self.engine.step(deployment_id, known=known)
                    errors = 0
                except LeaseLostError as exc:  # a write refused: another controller took the lease over
                    self.leases.refusals += 1
                    self.leases.lose(deployment_id, str(exc))
                    return
                except Exception as exc:
                    errors += 1
                    wait = self.engine.tick_failed(deployment_id, exc, errors)
                self.outbox.wake()
                if math.isinf(wait):
                    self.leases.release(deployment_id)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.01, wait))
        finally:
            self._wakes.pop(deployment_id, None)
            self._driving.pop(deployment_id, None)

    async def _renew_forever(self) -> None:
        """Renew the leases this controller holds, every `store.lease_renew_interval`; a deployment
        whose renewal is refused (its lease was taken over) stops being driven here."""
        while not self._stopping:
            await asyncio.sleep(max(0.05, self.leases.renew_due()))
            try:
                for deployment_id in self.leases.renew():
                    self.wake(deployment_id)
            except SafeshipError as exc:  # the store is unreachable: retried at the next interval
                log.warning("lease renewal failed: %s", exc)

    def wake(self, deployment_id: str) -> None:
        event = self._wakes.get(deployment_id)
        if event is not None:
            event.set()
        self._kick.set()
        self.outbox.wake()

    # ------------------------------------------------------------ reloading the config

    async def reload(self, *, why: str) -> str:
        """Read the config file again and run what it adds, without stopping anything: new
        environments and services get their parts and routes; routes that run keep their ports,
        backends and weights. A config that does not load, or that changes what a reload cannot
        change (the state folder, the store, an environment's platform, router or traffic source,
        or one that drops an environment or service whose routes still serve), is refused: the
        running config stays, the refusal is logged and recorded as a `config_reload_refused` event,
        and InputError carries its one sentence. Returns what the reload did, in one sentence."""
        if self.config_path is None:
            raise InputError("this controller was not started from a config file, so it cannot reload one")
        async with self._reload_lock:
            path = self.config_path
            digest = _digest(path)  # of the bytes about to be read: a later edit is read again
            try:
                new = await asyncio.to_thread(load_config, path)
                apply_stored_settings(new, self.store)
                added = self._reload_plan(new)
            except InputError as exc:
                message = (f"config reload refused ({why}): {exc}; the controller keeps running the config it "
                           f"loaded before")
                log.error("%s", message)
                self.store.add_events([EventRecord(CONTROLLER_EVENTS, time.time(), "config_reload_refused", message,
                                                   {"why": why, "error": str(exc), "config": str(path)})])
                raise InputError(str(exc)) from None
            if self._loop is None or self._stopping:  # routes are opened by start(), and not while stopping
                raise InputError("the controller is not running, so it does not reload its config")
            try:
                summary = await self._apply(new, added)
            except SafeshipError as exc:  # the config is in force; a route that could not open is said here
                message = (f"config reload from {path} ({why}) applied, but not all its routes opened: {exc}; "
                           "reload again once that is fixed")
                log.error("%s", message)
                self.store.add_events([EventRecord(CONTROLLER_EVENTS, time.time(), "config_reload_failed", message,
                                                   {"why": why, "error": str(exc), "config": str(path)})])
                raise
            self._config_digest = digest
            message = f"config reloaded from {path} ({why}): {summary}"
            log.warning("%s", message)
            self.store.add_events([EventRecord(CONTROLLER_EVENTS, time.time(), "config_reloaded", message,
                                               {"why": why, "config": str(path),
                                                "routes_added": [f"{k.environment}/{k.service}" for k in added]})])
            return message

    def reload_soon(self, why: str) -> None:
        """Reload in the background (SIGHUP): a refusal is already logged and recorded as an event."""
        async def run() -> None:
            try:
                await self.reload(why=why)
            except SafeshipError:
                pass  # refused or incomplete: logged and recorded as an event already
            except Exception:
                log.exception("config reload (%s) failed", why)

        task = asyncio.create_task(run(), name="config reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def refresh_for(self, *, service: str | None = None, environment: str | None = None) -> None:
        """Reload when a request names a service or environment the running config does not have
        and the config file changed since it was read; InputError when the new file is refused."""
        unknown = [f"{kind} {name!r}" for kind, name, known in (
            ("service", service, service is None or service in self.config.services),
            ("environment", environment, environment is None or self.config.environment(environment) is not None),
        ) if not known]
        if not unknown or self.config_path is None or _digest(self.config_path) == self._config_digest:
            return
        await self.reload(why=f"a request named {' and '.join(unknown)}, which the running config did not have")

    def _reload_plan(self, new: SafeshipConfig) -> list[RouteKey]:
        """The routes a reload to `new` adds; InputError (file, field, value) for what it cannot change."""
        source = str(self.config_path)
        old_state, old_url = resolve_paths(self.config, self.config_path or "")
        new_state, new_url = resolve_paths(new, self.config_path or "")
        if new_state != old_state:
            raise InputError(f"{source}: state_dir: changed from {old_state} to {new_state}; a reload keeps the "
                             "state folder (stop the controller and start it again to move it)")
        if new_url != old_url:
            raise InputError(f"{source}: store.url: changed from {old_url} to {new_url}; a reload keeps the store "
                             "(stop the controller and start it again to change it)")
        if new.router_process != self.config.router_process:
            raise InputError(f"{source}: router_process: changed from {self.config.router_process} to "
                             f"{new.router_process}; a reload keeps the routers where they run")
        environments = {e.name: e for e in controller_environments(new)}
        index = {e.name: i for i, e in enumerate(new.environment_management.environments)}
        for name in self.environment_names:
            if name not in environments:
                serving = sorted(k.service for k in self.routes if k.environment == name)
                if serving:
                    raise InputError(
                        f"{source}: environment_management.environments: environment {name!r} is gone, but its "
                        f"routes ({', '.join(serving)}) still serve; run `environment-manager --cleanup "
                        f"--environment {name}` before removing it")
                continue
            before, after = self.parts.choices.get(name), choice_for(environments[name])
            if before is not None and before != after:
                field = next(f for f in ("platform", "router", "traffic") if getattr(before, f) != getattr(after, f))
                label = "traffic_source" if field == "traffic" else field
                raise InputError(
                    f"{source}: environment_management.environments[{index[name]}].{label}: changed from "
                    f"{getattr(before, field)!r} to {getattr(after, field)!r}; a reload does not move running "
                    f"routes (clean the environment up first, or restart the controller)")
        for key in self.routes:
            if key.service not in new.services and key.environment in environments:
                raise InputError(
                    f"{source}: services: service {key.service!r} is gone, but its route in {key.environment} still "
                    f"serves; clean the environment up (`environment-manager --cleanup --environment "
                    f"{key.environment}`) before removing it")
        return [RouteKey(service, name) for name in environments for service in new.services
                if RouteKey(service, name) not in self.routes]

    async def _apply(self, new: SafeshipConfig, added: Sequence[RouteKey]) -> str:
        old_names = set(self.environment_names)
        self.config = new
        self.engine.config = new
        for part in self.parts.all_parts():  # parts that read per-service settings (probe paths) read the new ones
            if isinstance(getattr(part, "config", None), SafeshipConfig):
                part.config = new
        environments = controller_environments(new)
        fresh = [e for e in environments if e.name not in old_names]
        made = self.parts.add(fresh, platform_setup=replace(self.parts.platform_setup, config=new),
                              router_setup=replace(self.parts.router_setup, config=new),
                              traffic_setup=self._traffic_setup(new))
        for part in made:
            if hasattr(part, "ensure_route") and hasattr(part, "open"):
                await part.open()
            elif hasattr(part, "adopt"):
                await part.adopt()
        self.router.refresh()
        self.environment_names = [e.name for e in environments]
        previous = read_routes(self.state_dir)
        for key in added:
            self._locks.setdefault(key, asyncio.Lock())
            async with self._locks[key]:
                await self.sync_route(key)
                await self._restore_weights(key)
                self.routes[key] = await self._listen(key, previous.get(key))
        if added:
            self._write_routes()
        self._kick.set()
        moved = [f"{k.environment}/{k.service} keeps port {port} (the config now says "
                 f"{configured_port(new, k.service, k.environment)}; that applies once the route is opened again)"
                 for k, port in self.routes.items()
                 if port is not None and configured_port(new, k.service, k.environment) not in (None, port)]
        parts = [f"{len(added)} new route{'s' if len(added) != 1 else ''}"
                 + (f" ({', '.join(f'{k.environment}/{k.service} on {self.routes.get(k)}' for k in added)})"
                    if added else ""),
                 f"environments now {', '.join(self.environment_names) or 'none'}"]
        return "; ".join(parts + moved)

    # ------------------------------------------------------------ what the API calls

    async def gauges(self, route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        """Custom gauges per version, scraped from the ready instances' /metrics pages."""
        triggers = self.config.rollback_for(route.service).triggers
        names = {t.metric for t in triggers if isinstance(t, CustomMetricTrigger)}
        instances = await self.platform.instances(route.service, route.environment)
        targets = [Target(i.version, i.host, i.port) for i in instances if i.ready]
        return await scrape(targets, wanted=names or None)

    def secrets_for(self, service: str, environment: str) -> Mapping[str, str]:
        """The service's secrets from `secrets/<environment>/` beside the config; their values are
        registered with the redactor so that no log line or API answer carries them."""
        settings = self.config.services.get(service)
        names = settings.secrets if settings is not None else []
        if not names:
            return {}
        values = load_secrets(self.secrets_root, environment, names)
        register(values.values())
        return values

    def _run_as_user(self, service: str, environment: str) -> str | None:
        settings = self.config.environment(environment)
        return settings.run_as_user if settings is not None else None

    def submit(self, request: DeploymentRequest, *, policy: str | None = None) -> DeploymentRecord:
        environment = self.config.environment(request.environment)
        if environment is not None and environment.name not in self.environment_names:
            runs = sorted({e.platform for e in controller_environments(self.config)})
            raise InputError(
                f"environment {request.environment!r} uses platform {environment.platform!r}; "
                f"this controller runs only environments with platform: {', '.join(runs) or DEFAULT_PLATFORM}"
            )
        self.secrets_for(request.service_name, request.environment)  # missing or unsafe: refused now
        record = self.engine.submit(request, policy=policy)
        self._kick.set()
        return record

    def cancel(self, deployment_id: str, *, by: str = "") -> DeploymentRecord:
        record = self.engine.cancel(deployment_id, by=by)
        self.wake(deployment_id)
        return record

    def rollback(self, deployment_id: str, *, reason: str, force: bool = False) -> DeploymentRecord:
        record = self.engine.request_rollback(deployment_id, reason=reason, force=force)
        self.wake(deployment_id)
        return record

    def approve(self, deployment_id: str, *, by: str) -> DeploymentRecord:
        record = self.engine.approve(deployment_id, by=by)
        self.wake(deployment_id)
        return record

    async def cleanup_environment(self, environment: str) -> dict[str, Any]:
        """Stop the environment's instances and routes and forget their state; history stays."""
        self.require_environment(environment)  # an unknown name touches nothing
        active = self.store.list_deployments(environment=environment, active_only=True)
        if active:
            raise ConflictError(f"{environment} has active deployments ({', '.join(d.id for d in active)}); "
                                "cancel them before cleaning up")
        stopped, routes = 0, 0
        for key in [k for k in list(self.routes) if k.environment == environment]:
            waiting = self._waiting.pop(key, None)
            if waiting is not None:  # no longer wanted on its port
                waiting.cancel()
            async with self._locks[key]:
                await self.router.remove_route(key)  # no new requests first, then the processes
                instances = await self.platform.instances(key.service, environment)
                await asyncio.gather(*(self.platform.stop(i, drain=0.0) for i in instances))
                stopped += len(instances)
                del self.routes[key]
                routes += 1
        self.store.forget_environment(environment, at=self.clock.now())
        self._write_routes()
        return {"environment": environment, "instances_stopped": stopped, "routes_closed": routes}

    async def version_metrics(self, service: str, environment: str) -> dict[str, dict[str, Any]]:
        counters = await self.traffic.counters(RouteKey(service, environment))
        return {version: counters_json(c) for version, c in counters.items()}

    def environments(self) -> list[dict[str, Any]]:
        found = []
        active: dict[tuple[str, str], str] = {}
        for deployment_id, service, environment_name in self.store.active_deployment_keys():
            active[(service, environment_name)] = deployment_id  # oldest first: the newest one is kept
        for environment in self.config.environment_management.environments:
            services = []
            # a few queries per environment, however many services it has
            serving = self.store.current_versions(environment.name)
            newest = self.store.latest_deployments(environment.name)
            for name in self.config.services:
                key = RouteKey(name, environment.name)
                weights = _served(newest.get(name))
                if weights is None:
                    weights = {serving[name]: 100} if name in serving else {}
                services.append(
                    {
                        "service": name,
                        "port": self.routes.get(key),
                        "current_version": serving.get(name),
                        "active_deployment": active.get((name, environment.name)),
                        "weights": weights,
                    }
                )
            found.append(
                {
                    "name": environment.name,
                    "type": environment.type.value,
                    "platform": environment.platform,
                    "namespace": environment.namespace,
                    "approval": environment.approval,
                    "services": services,
                }
            )
        return found

    def require_service(self, service: str) -> None:
        if service not in self.config.services:
            known = ", ".join(sorted(self.config.services)) or "none configured"
            raise NotFoundError(f"service {service!r} is not in the config (known: {known})")

    def require_environment(self, environment: str) -> None:
        if self.config.environment(environment) is None:
            known = ", ".join(e.name for e in self.config.environment_management.environments) or "none configured"
            raise NotFoundError(f"environment {environment!r} is not in the config (known: {known})")


def _served(latest: DeploymentRecord | None) -> dict[str, int] | None:
    """The weights a route serves by its newest deployment: its last weights while it is active,
    its last safe weights once it failed; None when it does not say (the stable version serves)."""
    if latest is None:
        return None
    phase = Phase(latest.phase)
    served = DeploymentStatus.from_json(latest.status).live_weights(active=phase.is_active,
                                                                    failed=phase is Phase.FAILED)
    return {str(v): int(w) for v, w in served.items()} if served is not None else None


def _digest(path: Path | None) -> str | None:
    """SHA-256 of the config file's bytes (None when there is no file to read)."""
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
