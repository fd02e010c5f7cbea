"""The operator: watches Releases, and the Lease holder rolls each one out with the engine.

    operator = Operator(settings, store, kube)
    await operator.run(stop)        # until `stop` is set

Three loops share one process:

- **watch** (every instance): list the Releases, then watch from the list's resourceVersion with
  bookmarks; each event updates the cache (`releases`) and wakes the reconcile loop. A watch that
  the server ends is resumed from the last resourceVersion seen (an event's or a BOOKMARK's); a
  410 Gone (that version is too old) lists again and resumes from the new list, comparing it with
  the cache so that a Release deleted meanwhile is seen as deleted. Every `resync_s` the list is
  read again anyway.
- **lease** (every instance): `LeaderElector.step` every `retry_s` (see lease.py), on API
  connections of its own, so that no reconcile traffic in flight delays a renewal.
- **reconcile** (the Lease holder only): each Release that is due gets `reconcile(release)`:
  commands from annotations, a new deployment when the image or version changed, one engine tick
  (`DeploymentEngine.step`) of its deployment, and the status written (only when it changed) with
  the status subresource. A Release is due when it changed, or when its deployment's tick asked to
  be called again (at most `max_wait_s` later).

Each Release gets its own engine over the shared store, with the config the Release describes:
the operator's `safeship.yaml` (its environment's cluster settings, `intelligent_deployment`)
with the Release's `analysis` and `strategies` laid over it and its service as `services.<name>`.
Its platform and router put an ownerReference to the Release on every object they make.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safeship.clock import Clock, RealClock
from safeship.config.models import (
    DeploymentRequest,
    Environment,
    SafeshipConfig,
    ServiceConfig,
)
from safeship.config.names import name_problem
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.engine.policies import PolicyFactory
from safeship.engine.policies import policy_for as default_policy_for
from safeship.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    SafeshipError,
    StaleStateError,
    TemporaryError,
)
from safeship.kube.client import KubeClient, WatchExpired
from safeship.operator import release as rel
from safeship.operator import status as st
from safeship.operator.lease import LeaderElector, LeaseSettings
from safeship.store import DeploymentRecord, Store
from safeship.traffic import TrafficSource

log = logging.getLogger(__name__)

TrafficFactory = Callable[[SafeshipConfig, Environment, Any], TrafficSource]
# The Release spec's fields that are `services.<name>` settings.
SERVICE_FIELDS = frozenset({"criticality", "replicas", "resources", "limits", "container_port", "volumes", "env",
                            "secrets", "health_checks", "grace_period", "rollback", "pod", "autoscaling"})


@dataclass
class OperatorSettings:
    """How the operator runs. `config` is its safeship.yaml: the environments Releases name
    (platform kubernetes; a Release's own namespace replaces the environment's), the defaults of
    `intelligent_deployment`, and `store.url`."""

    config: SafeshipConfig
    environment: str  # the environment of a Release that names none
    lease: LeaseSettings
    namespace: str | None = None  # watch one namespace; None: every namespace
    state_dir: Path = Path(".safeship")
    resync_s: float = 300.0  # list again this often, whatever the watch said
    watch_timeout_s: int = 300  # each watch request ends after this long and is resumed
    max_wait_s: float = 5.0  # the longest a Release with an active deployment waits for its next tick
    workers: int = 8  # Releases reconciled at once


@dataclass
class Unit:
    """What rolls one Release out: its config, environment and engine (built from its spec)."""

    digest: str
    config: SafeshipConfig
    environment: Environment
    engine: DeploymentEngine
    closers: list[Any] = field(default_factory=list)


@dataclass
class Tracked:
    """One Release as the operator knows it."""

    obj: dict[str, Any]
    due: float = 0.0  # monotonic time of its next reconcile; inf: only when it changes
    unit: Unit | None = None
    running: bool = False
    errors: int = 0  # ticks in a row that raised


def release_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def _overlay(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


RETRY_BY = "retry after the incident of "  # the requested_by of the engine's retry (DeploymentEngine)


def _requested_by(record: DeploymentRecord) -> str:
    return str((record.request or {}).get("requested_by") or "")


def _spec_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    value = first.get("input")
    shown = json.dumps(value, default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"spec.{where}: {first.get('msg', 'invalid')} (got {shown})"


class Operator:
    """The in-cluster operator (see the module docstring)."""

    def __init__(self, settings: OperatorSettings, store: Store, kube: KubeClient, *,
                 clock: Clock | None = None, policy_for: PolicyFactory = default_policy_for,
                 traffic_for: TrafficFactory | None = None,
                 kube_for: Callable[[Environment], KubeClient] | None = None,
                 router_options: Mapping[str, Any] | None = None,
                 lease_kube: KubeClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kube = kube
        self.clock: Clock = clock if clock is not None else RealClock()
        self.policy_for = policy_for
        self.traffic_for = traffic_for
        self._kube_for = kube_for
        self._kube_clients: dict[tuple[str | None, str], KubeClient] = {}
        self.router_options = dict(router_options or {})
        # The Lease is read and renewed on connections of its own (`lease_kube`, else a sibling of
        # `kube`, closed with the operator): status writes and lists in flight on `kube`, however
        # many and however slow the API server is with them, never make a renewal wait for one.
        own = kube.sibling() if lease_kube is None and isinstance(kube, KubeClient) else None
        self._own_lease_kube = own
        self.elector = LeaderElector(lease_kube or own or kube, settings.lease)
        self.releases: dict[tuple[str, str], Tracked] = {}
        self._forgetting: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        # What happened, for tests and the log: counts only.
        self.stats: dict[str, int] = {"lists": 0, "watch_events": 0, "bookmarks": 0, "expired": 0,
                                      "status_writes": 0, "status_refused": 0, "reconciles": 0, "ticks": 0,
                                      "submitted": 0}
        self.resource_version = ""

    # ------------------------------------------------------------ loops

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch, elect and reconcile until `stop` is set (or the task is cancelled)."""
        if stop is not None:
            self._stop = stop
        # The analysis policies import scipy (about a second): done here, off the event loop, so
        # that the first tick does not hold up the Lease's renewal.
        with contextlib.suppress(SafeshipError):
            await asyncio.to_thread(self.policy_for, "safeship")
        tasks = [asyncio.create_task(self._lease_loop(), name="safeship-operator-lease"),
                 asyncio.create_task(self._watch_loop(), name="safeship-operator-watch")]
        try:
            await self._reconcile_loop()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.elector.release()
            await self.close()

    async def close(self) -> None:
        for tracked in self.releases.values():
            await self._close_unit(tracked.unit)
            tracked.unit = None
        for client in self._kube_clients.values():
            await client.close()
        self._kube_clients.clear()
        if self._own_lease_kube is not None:
            await self._own_lease_kube.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for may swallow a cancellation that
        # comes as the wait ends, and a cancelled operator would go on looping
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stop.wait()

    async def _lease_loop(self) -> None:
        while not self._stop.is_set():
            was = self.elector.is_leader()
            now = await self.elector.step()
            if now and not was:
                log.info("%s: leading (lease transitions %d); reconciling %d Releases", self.elector.identity,
                         self.elector.epoch, len(self.releases))
                for tracked in self.releases.values():
                    tracked.due = 0.0
                self._wake.set()
            await self._sleep(self.settings.lease.retry_s)

    async def _watch_loop(self) -> None:
        ns = self.settings.namespace
        # A version already known (set before `run`) is watched from without listing first.
        listed_at = time.monotonic() if self.resource_version else -math.inf
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.resource_version or time.monotonic() - listed_at >= self.settings.resync_s:
                    items, self.resource_version = await self.kube.list_at(
                        rel.API_VERSION, rel.KIND, ns, all_namespaces=ns is None)
                    listed_at = time.monotonic()
                    self.stats["lists"] += 1
                    self._replace_all(items)
                timeout = int(min(self.settings.watch_timeout_s,
                                  max(1.0, self.settings.resync_s - (time.monotonic() - listed_at))))
                async for kind, obj in self.kube.watch(rel.API_VERSION, rel.KIND, ns,
                                                       resource_version=self.resource_version,
                                                       timeout_s=timeout, all_namespaces=ns is None):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                    if kind == "BOOKMARK":
                        self.stats["bookmarks"] += 1
                    else:
                        self.stats["watch_events"] += 1
                        self._on_event(kind, obj)
                    if version:
                        self.resource_version = version
                failures = 0
            except WatchExpired as exc:
                log.info("watch of Releases expired (%s): listing again", exc)
                self.stats["expired"] += 1
                self.resource_version = ""
            except SafeshipError as exc:
                failures += 1
                delay = min(30.0, exc.delay if isinstance(exc, TemporaryError) else 2.0 ** failures)
                log.warning("watch of Releases failed (%d in a row): %s; again in %.0fs", failures, exc, delay)
                await self._sleep(max(0.5, delay))

    def _replace_all(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            key = release_key(obj)
            seen.add(key)
            self._on_event("ADDED" if key not in self.releases else "MODIFIED", obj)
        for key in [k for k in self.releases if k not in seen]:
            self._on_event("DELETED", self.releases[key].obj)

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        key = release_key(obj)
        if kind == "DELETED":
            tracked = self.releases.pop(key, None)
            if tracked is not None:
                task = asyncio.get_running_loop().create_task(self._forget(tracked))
                self._forgetting.add(task)
                task.add_done_callback(self._forgetting.discard)
            return
        tracked = self.releases.get(key)
        if tracked is None:
            self.releases[key] = Tracked(obj=obj)
        else:
            old = tracked.obj
            tracked.obj = obj
            if (old.get("metadata") or {}).get("resourceVersion") == (obj.get("metadata") or {}).get("resourceVersion"):
                return
            # A status written by us changes nothing to do; spec and annotations do.
            if old.get("spec") == obj.get("spec") and \
                    (old.get("metadata") or {}).get("annotations") == (obj.get("metadata") or {}).get("annotations"):
                return
            tracked.due = 0.0
        self._wake.set()

    async def _forget(self, tracked: Tracked) -> None:
        """A deleted Release: Kubernetes deletes what it owned (its Deployments, Services and
        routes), so the store is told so (only the Lease holder writes): its deployment, if one
        runs, ends cancelled at once with "Release <ns>/<name> deleted" (a rollback could only
        bring back objects being deleted), and no version of its service stays deployed in its
        environment, so that a Release re-created later starts with a first deployment."""
        try:
            if self.elector.is_leader():
                release = rel.Release.model_validate({k: v for k, v in tracked.obj.items() if k != "status"})
                for attempt in range(1, 4):  # bounded: a tick of its own may move the row meanwhile
                    for _ in range(200):  # the reconcile under way, if any, ends first (at most 10 s)
                        if not tracked.running:
                            break
                        await asyncio.sleep(0.05)
                    try:
                        await self._forget_release(tracked, release)
                        break
                    except StaleStateError:
                        if attempt == 3:
                            raise
        except (SafeshipError, ValidationError) as exc:
            log.warning("deleted Release %s/%s: %s", *release_key(tracked.obj), exc)
        finally:
            await self._close_unit(tracked.unit)
            tracked.unit = None

    async def _forget_release(self, tracked: Tracked, release: rel.Release) -> None:
        """What `_forget` tells the store, for what this Release started only: a deployment (or a
        serving version) that another Release of the same service, or a command, started is not
        touched (Kubernetes deletes only what this Release owned)."""
        unit = await self._unit(tracked, release)
        service, environment = release.spec.service, unit.environment.name
        mine = f"Release {release.namespace}/{release.name}"
        by = f"{mine} deleted"
        record = self.store.active_deployment(service, environment)
        own = str((tracked.obj.get("status") or {}).get("deploymentId") or "")
        again = self.releases.get(release_key(tracked.obj))
        if record is not None and (self._started_by(record) != mine or (again is not None and record.id != own)):
            # Another's (or, re-created under the same name before this deletion was handled, the
            # new Release's own): not touched, and the service stays deployed.
            log.info("%s: deployment %s of %s is not its own; left as it is", by, record.id, record.version)
            return
        if record is not None:
            unit.engine.abandon(record.id, reason=f"{by}: Kubernetes deletes what it owned, so {record.version} "
                                "is neither rolled out nor rolled back")
        serving = next((row for row in self.store.stable_versions(service, environment)
                        if row.retired_at is None and row.healthy), None)
        if serving is None:
            return
        started = self._stored(serving.deployment_id)
        if started is None or self._started_by(started) != mine:
            log.info("%s: %s of %s was not rolled out by it; left deployed", by, serving.version, service)
            return
        self.store.forget_environment(environment, at=self.clock.now(), service=service)
        log.info("%s: %s no longer deployed in %s (was %s)", by, service, environment, serving.version)

    def _started_by(self, record: DeploymentRecord) -> str:
        """Who asked for `record`: its `requested_by`, or for the engine's retry after an incident,
        who asked for the deployment it retries (a few retries deep at most)."""
        by = _requested_by(record)
        for _ in range(5):
            if not by.startswith(RETRY_BY):
                break
            earlier = self._stored(by.removeprefix(RETRY_BY))
            if earlier is None:
                break
            by = _requested_by(earlier)
        return by

    def _stored(self, deployment_id: str | None) -> DeploymentRecord | None:
        if not deployment_id:
            return None
        try:
            return self.store.get_deployment(deployment_id)
        except NotFoundError:
            return None

    async def _reconcile_loop(self) -> None:
        workers = asyncio.Semaphore(self.settings.workers)
        running: set[asyncio.Task[None]] = set()

        async def one(tracked: Tracked) -> None:
            async with workers:
                self.stats["reconciles"] += 1
                try:
                    wait = await self.reconcile(tracked)
                except Exception as exc:  # a bug must not stop the other Releases
                    log.exception("Release %s/%s: reconcile failed: %s", *release_key(tracked.obj), exc)
                    wait = 10.0
                finally:
                    tracked.running = False
                tracked.due = time.monotonic() + min(wait, self.settings.max_wait_s) if math.isfinite(wait) \
                    else math.inf
                self._wake.set()

        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = time.monotonic()
                if self.elector.is_leader():
                    for tracked in list(self.releases.values()):
                        if not tracked.running and tracked.due <= now:
                            tracked.running = True
                            task = asyncio.create_task(one(tracked))
                            running.add(task)
                            task.add_done_callback(running.discard)
                pending = [t.due for t in self.releases.values() if not t.running]
                nap = min([*(d - now for d in pending), 1.0])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, nap)):  # not wait_for: see _sleep
                        await self._wake.wait()
        finally:
            for task in list(running):
                task.cancel()
            for task in list(running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # ------------------------------------------------------------ one Release

    async def reconcile(self, tracked: Tracked) -> float:
        """Act on one Release once; the seconds until it wants to be reconciled again (inf: when it changes)."""
        obj = tracked.obj
        metadata = obj.get("metadata") or {}
        generation = int(metadata.get("generation") or 0)
        try:
            before = rel.ReleaseStatus.model_validate(obj.get("status") or {})
        except ValidationError:
            before = rel.ReleaseStatus()
        try:
            release = rel.Release.model_validate({k: v for k, v in obj.items() if k != "status"})
            unit = await self._unit(tracked, release)
        except ValidationError as exc:
            return await self._refuse(tracked, before, _spec_problem(exc), generation)
        except InputError as exc:
            return await self._refuse(tracked, before, str(exc), generation)
        status = before.model_copy(deep=True)
        engine = unit.engine
        service, environment = release.spec.service, unit.environment.name
        record = self._deployment(status, service, environment)
        notes: list[str] = []
        was = (record.id, record.phase) if record is not None else None

        # Commands, once per annotation value.
        for command in rel.COMMANDS:
            value = release.annotations.get(command)
            if value is None or status.handled.get(command) == value:
                continue
            status.handled[command] = value
            notes.append(self._command(engine, command, record, release))
            record = self._deployment(status, service, environment, fresh=record)

        # A new image or version starts a deployment (once the one running ended).
        wanted = release.spec.rollout_key()
        # Why a new image at the same version cannot be rolled out (kept until the spec changes).
        refused = next((c for c in status.conditions if c.type == "Progressing" and c.reason == "SameVersion"), None)
        same_version = refused.message if refused is not None and (status.image, status.version) == wanted else None
        if (status.image, status.version) != wanted:
            ours = (release.spec.version, release.spec.revision())
            if record is not None and Phase(record.phase).is_active and record.version in ours:
                status.image, status.version = wanted  # submitted before a status write was lost: adopt it
                status.deploymentId = record.id
            elif record is not None and Phase(record.phase).is_active:
                if record.phase != Phase.ROLLING_BACK.value:
                    with contextlib.suppress(ConflictError):
                        record = engine.cancel(record.id, by=f"Release spec changed to {release.spec.version}")
            else:
                status.image, status.version = wanted
                try:
                    version = await self._engine_version(unit, release)
                    problem = name_problem("version", version)
                    if problem is not None:
                        same_version = (f"spec.image {release.spec.image!r} is a new image at spec.version "
                                        f"{release.spec.version!r}, whose objects run another image; it would "
                                        f"be rolled out as {version!r}, but a {problem}: change spec.version")
                        raise InputError(same_version)
                    record = engine.submit(DeploymentRequest(
                        service_name=service, version=version, environment=environment,
                        deployment_strategy=release.spec.strategy,
                        requested_by=f"Release {release.namespace}/{release.name}"))
                    self.stats["submitted"] += 1
                    status.deploymentId = record.id
                except SafeshipError as exc:
                    notes.append(f"{release.spec.version} not started: {exc}" if same_version is None else same_version)
                    status.message = notes[-1]

        wait = math.inf
        if record is not None and Phase(record.phase).is_active:
            try:
                wait, record = await engine.step(record.id)
                tracked.errors = 0
            except Exception as exc:
                tracked.errors += 1
                wait = engine.tick_failed(record.id, exc, tracked.errors)
                record = self.store.get_deployment(record.id)
            self.stats["ticks"] += 1
        if record is not None:
            # A command's note, unless the deployment ended in this reconcile: then why it ended.
            ended_now = not Phase(record.phase).is_active and (record.id, record.phase) != was
            message = notes[-1] if notes and not ended_now else st.ended_message(record, self._last_decision(record))
            status = st.from_deployment(status, record, stable=self.store.current_version(service, environment),
                                        message=message, generation=generation)
            if Phase(record.phase).is_active:
                wait = min(wait, self.settings.max_wait_s)
        else:
            status.observedGeneration = generation
            status.stableVersion = self.store.current_version(service, environment) or ""
            if notes:
                status.message = notes[-1]
        if (status.image, status.version) != wanted and (record is None or not Phase(record.phase).is_active):
            wait = 0.0  # the deployment the new spec waited for has ended: start the new one now
        if same_version is not None:
            status.message = same_version
            status.conditions = st.set_condition(list(status.conditions), "Progressing", "False", "SameVersion",
                                                 same_version, generation)
        await self._write_status(tracked, before, status)
        return wait

    async def _engine_version(self, unit: Unit, release: rel.Release) -> str:
        """The version the engine rolls `release` out as: spec.version, unless that version's
        Deployment already runs another image (the image changed, the version did not; or an
        earlier image of this version was rolled out before another version): then its revision,
        `<version>+img.<hex>`, so that the two builds have their own objects and can be compared."""
        from safeship.kube import objects

        spec = release.spec
        kube = self._client_for(unit.environment)
        found = await kube.get("apps/v1", "Deployment", objects.deployment_name(spec.service, spec.version),
                               unit.environment.kube_namespace)
        if found is None:
            return spec.version
        containers = ((((found.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
        images = {str(c.get("image")) for c in containers if c.get("name") == objects.CONTAINER}
        return spec.version if images == {spec.resolved_image()} else spec.revision()

    def _deployment(self, status: rel.ReleaseStatus, service: str, environment: str, *,
                    fresh: DeploymentRecord | None = None) -> DeploymentRecord | None:
        """The Release's deployment: the one its status names, else one running for its service."""
        wanted = fresh.id if fresh is not None else status.deploymentId
        if wanted:
            with contextlib.suppress(NotFoundError):
                found = self.store.get_deployment(wanted)
                if found.service == service and found.environment == environment:
                    return found
        return self.store.active_deployment(service, environment)

    def _command(self, engine: DeploymentEngine, command: str, record: DeploymentRecord | None,
                 release: rel.Release) -> str:
        by = f"annotation {command} on Release {release.namespace}/{release.name}"
        verb = command.rsplit("/", 1)[-1]
        if record is None:
            return f"{verb}: no deployment to {verb}"
        try:
            if command == rel.APPROVE:
                engine.approve(record.id, by=by)
            elif command == rel.PROMOTE:
                engine.promote(record.id, by=by)
            elif command == rel.ABORT:
                engine.cancel(record.id, by=by)
            elif command == rel.ROLLBACK:
                # Forced: a person asked for it, so a first deployment (nothing earlier to return
                # to) is stopped, as Argo Rollouts' abort scales a canary with no stable down.
                engine.request_rollback(record.id, reason=f"rollback requested by {by}", force=True)
        except SafeshipError as exc:
            return f"{verb} refused: {exc}"
        log.info("Release %s/%s: %s %s (%s)", release.namespace, release.name, verb, record.id, by)
        return f"{verb} of {record.version} by {by}"

    def _last_decision(self, record: DeploymentRecord) -> str:
        if record.reason:
            return record.reason
        events = self.store.events(record.id)
        return events[-1].message if events else ""

    async def _refuse(self, tracked: Tracked, before: rel.ReleaseStatus, problem: str, generation: int) -> float:
        """A spec the operator cannot act on: one sentence, `Progressing=False` `InvalidSpec`, and
        nothing new runs. A deployment the last valid spec started goes on under that spec (its
        analysis and rollback are what keep a half-done canary safe), and the status follows it."""
        status = before.model_copy(deep=True)
        wait = math.inf
        unit = tracked.unit
        record = None
        if unit is not None:
            service = next(iter(unit.config.services))
            record = self._deployment(status, service, unit.environment.name)
            if record is not None and Phase(record.phase).is_active:
                try:
                    wait, record = await unit.engine.step(record.id)
                    tracked.errors = 0
                except Exception as exc:
                    tracked.errors += 1
                    wait = unit.engine.tick_failed(record.id, exc, tracked.errors)
                    record = self.store.get_deployment(record.id)
                self.stats["ticks"] += 1
                status = st.from_deployment(status, record, stable=self.store.current_version(
                    service, unit.environment.name), message=problem, generation=generation)
                if Phase(record.phase).is_active:
                    wait = min(wait, self.settings.max_wait_s)
        status.message = problem
        status.observedGeneration = generation
        status.conditions = st.set_condition(list(status.conditions), "Progressing", "False", "InvalidSpec",
                                             problem, generation)
        await self._write_status(tracked, before, status)
        return wait

    async def _write_status(self, tracked: Tracked, before: rel.ReleaseStatus, status: rel.ReleaseStatus) -> None:
        """Write `status` through /status when it differs from what is stored, as the Lease holder
        only, and never over a status a holder with a newer fencing token wrote."""
        if st.comparable(status) == st.comparable(before):
            return
        namespace, name = release_key(tracked.obj)
        if not self.elector.is_leader():
            self.stats["status_refused"] += 1
            log.info("Release %s/%s: not the lease holder; status not written", namespace, name)
            return
        if before.leaderEpoch > self.elector.epoch:
            self.stats["status_refused"] += 1
            log.warning("Release %s/%s: its status was written by a newer lease holder (epoch %d > %d); "
                        "stepping down", namespace, name, before.leaderEpoch, self.elector.epoch)
            self.elector.lose()
            return
        status.leaderEpoch = self.elector.epoch
        status.leader = self.elector.identity
        old = (tracked.obj.get("status") or {})
        patch = st.merge_patch(old, status.model_dump(mode="json")) or {}
        body = {"metadata": {"resourceVersion": (tracked.obj.get("metadata") or {}).get("resourceVersion")},
                "status": patch}
        try:
            written = await self.kube.patch_status(rel.API_VERSION, rel.KIND, name, body, namespace)
        except SafeshipError as exc:  # 409: it changed meanwhile; the watch brings the new one
            log.info("Release %s/%s: status not written: %s", namespace, name, exc)
            tracked.due = 0.0
            return
        self.stats["status_writes"] += 1
        if release_key(written) == (namespace, name):
            tracked.obj = written

    # ------------------------------------------------------------ engines

    def environment_for(self, release: rel.Release) -> Environment:
        """The environment `release` rolls out in (InputError when the config has none for it)."""
        return self._environment(release)

    def _environment(self, release: rel.Release) -> Environment:
        config = self.settings.config
        wanted = release.spec.environment or self.settings.environment
        base = config.environment(wanted)
        if base is None:
            known = ", ".join(e.name for e in config.environment_management.environments) or "none"
            raise InputError(f"spec.environment: {wanted!r} is not an environment of the operator's config "
                             f"(known: {known})")
        if base.platform != "kubernetes":
            raise InputError(f"spec.environment: {wanted!r} runs on platform {base.platform!r}; "
                             "the operator rolls out on platform kubernetes only")
        name = base.name if release.namespace == base.kube_namespace else f"{base.name}-{release.namespace}"
        problem = name_problem("environment", name)
        if problem is not None:
            raise InputError(f"metadata.namespace: {release.namespace!r} with environment {base.name!r} makes "
                             f"{name!r}, which {problem}")
        return base.model_copy(update={"name": name, "namespace": release.namespace})

    def _config(self, release: rel.Release, environment: Environment) -> SafeshipConfig:
        spec = release.spec
        base = self.settings.config
        intelligent = base.intelligent_deployment.model_dump(mode="json")
        if spec.analysis is not None:
            intelligent["analysis"] = _overlay(intelligent["analysis"],
                                               spec.analysis.model_dump(mode="json", exclude_unset=True))
        if spec.strategies is not None:
            intelligent["strategies"] = _overlay(intelligent["strategies"],
                                                 spec.strategies.model_dump(mode="json", exclude_unset=True))
        given = spec.model_dump(mode="json", include=set(SERVICE_FIELDS & spec.model_fields_set))
        # The image as the pods run it: a revision (see `_engine_version`) is named otherwise than
        # spec.version, and `{version}` stands for spec.version.
        service = ServiceConfig.model_validate({**given, "image": spec.resolved_image()})
        return base.model_copy(update={
            "intelligent_deployment": type(base.intelligent_deployment).model_validate(intelligent),
            "environment_management": base.environment_management.model_copy(update={"environments": [environment]}),
            "services": {spec.service: service},
        })

    async def _unit(self, tracked: Tracked, release: rel.Release) -> Unit:
        spec_json = json.dumps({"spec": release.spec.model_dump(mode="json", exclude={"version"}),
                                "image": release.spec.resolved_image(),
                                "uid": release.uid, "namespace": release.namespace}, sort_keys=True)
        digest = hashlib.sha256(spec_json.encode()).hexdigest()
        if tracked.unit is not None and tracked.unit.digest == digest:
            return tracked.unit
        environment = self._environment(release)
        config = self._config(release, environment)
        owner = rel.owner_reference(release)
        kube = self._client_for(environment)
        from safeship.platforms.kubernetes import KubernetesPlatform
        from safeship.routing import router_class

        platform = KubernetesPlatform(config, environment, client=kube, owner=owner)
        router_name = environment.router or KubernetesPlatform.router
        router_cls = router_class(router_name)
        try:
            router = router_cls(config, environment, client=kube, owner=owner, **self.router_options)
        except TypeError:
            raise InputError(f"router: {router_name!r} is not a cluster router; the operator uses gateway-api, "
                             "istio or replicas") from None
        if self.traffic_for is not None:
            traffic = self.traffic_for(config, environment, router)
        else:
            from safeship.traffic import TrafficSetup, traffic_source_class

            source = environment.traffic_source or KubernetesPlatform.traffic
            traffic = traffic_source_class(source).create(TrafficSetup(
                router=router, clock=self.clock, state_dir=self.settings.state_dir, config=config,
                environment=environment))
        engine = DeploymentEngine(config, self.store, World(platform, router, self.clock, traffic_source=traffic),
                                  policy_for=self.policy_for)
        await self._close_unit(tracked.unit)
        tracked.unit = Unit(digest, config, environment, engine, [traffic, router, platform])
        return tracked.unit

    def _client_for(self, environment: Environment) -> KubeClient:
        if self._kube_for is not None:
            return self._kube_for(environment)
        key = (environment.kubeconfig, environment.cluster)
        client = self._kube_clients.get(key)
        if client is None:
            client = KubeClient.from_kubeconfig(environment.kubeconfig, context=environment.cluster,
                                                namespace=environment.kube_namespace)
            self._kube_clients[key] = client
        return client

    @staticmethod
    async def _close_unit(unit: Unit | None) -> None:
        if unit is None:
            return
        for part in unit.closers:
            with contextlib.suppress(Exception):
                result = part.close()
                if asyncio.iscoroutine(result):
                    await result

