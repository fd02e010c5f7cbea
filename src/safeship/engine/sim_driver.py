"""Who drives a `platform: sim` deployment, so that none is left in a phase without a way out.

A sim deployment has no controller: the command that starts or changes it drives it on a fresh
sim world with a virtual clock, which takes no real time. The rules:

- whoever changes a sim deployment (cancel, approve, rollback) drives it to a final phase before
  returning; the only phase it may then stay in is `awaiting_approval`, which waits for a person
  who can approve or cancel it;
- the process driving a sim deployment marks it (`status.driver`: host, pid, process start);
- a non-final sim deployment whose driver is gone (a crash, an interrupt, an older safeship that
  recorded none) is driven to a final phase by the next command that touches its service and
  environment, instead of blocking deploy, cancel and rollback forever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from safeship.config.models import SafeshipConfig
from safeship.engine.engine import DeploymentEngine
from safeship.engine.phases import Phase
from safeship.engine.policies import PolicyFactory
from safeship.engine.policies import policy_for as default_policy_for
from safeship.engine.process_mark import driver_mark, is_alive
from safeship.engine.status import DeploymentStatus
from safeship.errors import StaleStateError
from safeship.platforms import runs_in_controller
from safeship.store import DeploymentRecord, EventRecord, Store

T = TypeVar("T")


def is_sim(config: SafeshipConfig, environment: str) -> bool:
    settings = config.environment(environment)
    return settings is not None and not runs_in_controller(settings.platform)


def has_live_driver(record: DeploymentRecord) -> bool:
    """A process on this host that is still running drives the deployment."""
    return is_alive(DeploymentStatus.from_json(record.status).driver)


def is_stranded(config: SafeshipConfig, record: DeploymentRecord) -> bool:
    """A sim deployment that is still moving but that no process drives."""
    phase = Phase(record.phase)
    return (is_sim(config, record.environment) and not phase.is_final
            and phase is not Phase.AWAITING_APPROVAL and not has_live_driver(record))


def run_now(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, inside a running event loop or not
    (inside one, on a thread of its own while the caller waits)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(work())
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="safeship-sim-driver")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


async def drive(config: SafeshipConfig, store: Store, deployment_id: str, *,
                policy_for: PolicyFactory) -> DeploymentRecord:
    """Drive a sim deployment until it ends (or waits for approval) on a fresh sim world whose
    virtual clock starts after the deployment's last change."""
    from safeship.engine.simulate import sim_engine

    record = store.get_deployment(deployment_id)
    if Phase(record.phase).is_final:
        return record
    engine, _ = await sim_engine(config, store, service=record.service, environment=record.environment,
                                 candidate=record.version, policy_for=policy_for,
                                 start=max(time.time(), record.updated_at + 1))
    return await engine.run(deployment_id, return_when_awaiting=True)


def drive_now(config: SafeshipConfig, store: Store, deployment_id: str, *,
              policy_for: PolicyFactory) -> DeploymentRecord:
    """`drive`, from synchronous code."""
    return run_now(lambda: drive(config, store, deployment_id, policy_for=policy_for))


def take_over(config: SafeshipConfig, store: Store, record: DeploymentRecord, *,
              policy_for: PolicyFactory) -> DeploymentRecord:
    """Claim a stranded sim deployment for this process (one guarded write, so that of two
    processes that find it at once only one drives it), say so in its events, and drive it to
    its end. Returns it as it ended, or as the process that claimed it first left it."""
    now = max(time.time(), record.updated_at)
    event = EventRecord(record.id, now, "taken_over",
                        f"no process was driving this {record.phase} deployment any more; "
                        "a later command drives it to its end")
    status = DeploymentStatus.from_json(record.status)
    status.driver = driver_mark()
    claimed = record.replace(status=status.to_json(), updated_at=now)
    try:
        store.save_transition(record, claimed, [event])
    except StaleStateError:
        return store.get_deployment(record.id)
    return drive_now(config, store, record.id, policy_for=policy_for)


def finish_stranded(config: SafeshipConfig, store: Store, service: str | None, environment: str, *,
                    policy_for: PolicyFactory | None = None, skip: str | None = None) -> list[DeploymentRecord]:
    """Drive every stranded sim deployment of `service` (None: of any service) in `environment`,
    but `skip`, to its end; returns them as they ended. Deployments of other platforms, and ones
    a live process drives, are left alone."""
    if not is_sim(config, environment):
        return []
    chosen = policy_for or default_policy_for
    return [take_over(config, store, record, policy_for=chosen)
            for record in store.list_deployments(service=service, environment=environment, active_only=True)
            if record.id != skip and is_stranded(config, record)]


class SimDrivingEngine(DeploymentEngine):
    """The engine the commands use for cancel, approve and rollback requests outside a controller.

    A sim deployment it changes is driven to a final phase (or to `awaiting_approval`) before the
    call returns. For other platforms it only records the change; their controller drives it."""

    def cancel(self, deployment_id: str, *, by: str = "") -> DeploymentRecord:
        return self._then_drive(super().cancel(deployment_id, by=by))

    def approve(self, deployment_id: str, *, by: str) -> DeploymentRecord:
        return self._then_drive(super().approve(deployment_id, by=by))

    def request_rollback(self, deployment_id: str, *, reason: str = "manual rollback",
                         force: bool = False) -> DeploymentRecord:
        return self._then_drive(super().request_rollback(deployment_id, reason=reason, force=force))

    def _then_drive(self, record: DeploymentRecord) -> DeploymentRecord:
        if not is_sim(self.config, record.environment) or Phase(record.phase).is_final:
            return record
        return drive_now(self.config, self.store, record.id, policy_for=self.policy_for)
