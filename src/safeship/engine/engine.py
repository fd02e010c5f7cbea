"""The deployment engine: one idempotent `advance()` tick drives a persisted state machine.

    pending -> preparing -> progressing(step i) -> monitoring -> succeeded
                                 |                     |
                                 +---> rolling_back ---+---> rolled_back | failed
                                 +---> failed (auto rollback off)        cancelled

Each tick reads the deployment, converges the world on its current step, and writes the new state
in one transaction guarded by the row version. A second engine on the same store resumes where the
first one stopped; if both tick at once, one of them gets StaleStateError and drops its work.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from safeship.clock import VirtualClock
from safeship.config.models import (
    DeploymentRequest,
    DeploymentStrategy,
    Environment,
    HealthCheckFailureTrigger,
    RollbackConfiguration,
    SafeshipConfig,
    ServiceConfig,
)
from safeship.config.names import check_name
from safeship.config.webhooks import check_gates
from safeship.engine import faultpoint, gates, webhooks
from safeship.engine.context import Failure, Tick, World
from safeship.engine.phases import Phase
from safeship.engine.policies import PolicyFactory
from safeship.engine.process_mark import DriverMark, driver_mark
from safeship.engine.selection import Capacity, Selection, select_strategy
from safeship.engine.status import Approval, DeploymentStatus, FreezeOverride, RollbackProgress
from safeship.engine.steps import POLL_S, ROLLBACK_GATE_TRIGGER, StepRunner
from safeship.errors import (
    ConflictError,
    InputError,
    LeaseLostError,
    NotFoundError,
    SafeshipError,
    StaleStateError,
    TemporaryError,
)
from safeship.platforms import runs_in_controller
from safeship.platforms.base import InstanceState
from safeship.routing.base import RouteKey
from safeship.store import (
    DeploymentRecord,
    EventRecord,
    Retirement,
    RollbackRecord,
    StableVersion,
    Store,
    new_id,
)
from safeship.strategies import STRATEGIES, PlanInput
from safeship.strategies.base import (
    AnalyzeStep,
    Step,
    incident_check,
    scale,
    steps_from_json,
    steps_to_json,
    wait_ready,
    weights,
    with_gates,
)

log = logging.getLogger(__name__)

INCIDENT_CHECK_S = 60.0  # how long a restored version is measured against its record after a rollback
ERRORS_BEFORE_ROLLBACK = 5  # ticks in a row that raised before the engine rolls the deployment back
MAX_RETRY_DELAY_S = 30.0  # the longest wait between ticks that raised
PROMOTE_ATTEMPTS = 3  # reads of a deployment a promote-now request makes while ticks move it


class DeploymentEngine:
    """Deploys services: turns requests into persisted deployments and drives each one through its
    phases and plan, one idempotent tick at a time.

    Contract: `submit` refuses (changing nothing) or records a pending deployment; `advance` (and
    `step`) moves one deployment as far as it can go now and returns the seconds until it wants
    another tick (inf once it ended); `run` ticks until the end on the engine's clock. Every tick
    is one guarded transaction, so any number of engines on one store can tick the same
    deployment and at most one of them moves it. A driver whose `advance` raises asks
    `tick_failed` how long to wait, and the engine rolls the deployment back after
    ERRORS_BEFORE_ROLLBACK such ticks in a row. `cancel`, `approve` and `request_rollback` only
    record the change; the next tick acts on it.
    """

    # False: every tick is built whole, also the ones that only watch a monitoring window's
    # instances between its looks (see `_watching_wait`); tests compare the two.
    shortcut_watching: bool = True

    def __init__(
        self,
        config: SafeshipConfig,
        store: Store,
        world: World,
        *,
        policy_for: PolicyFactory,
        secrets_for: Callable[[str, str], Mapping[str, str]] | None = None,
        default_policy: str = "safeship",
    ) -> None:
        self.config = config
        self.store = store
        self.world = world
        self.policy_for = policy_for
        self.default_policy = default_policy
        self.steps = StepRunner(config, world, policy_for, secrets_for)
        # The process that ticks deployments with this engine, recorded in their status so that a
        # sim deployment whose driver is gone can be told from one still moving (sim_driver).
        self.driver: DriverMark | None = driver_mark()

    @property
    def clock(self) -> Any:
        return self.world.clock

    # ------------------------------------------------------------ requests

    def submit(self, request: DeploymentRequest, *, policy: str | None = None) -> DeploymentRecord:
        """Validate, pass the gates, select a strategy, plan, and persist the deployment as pending.

        Every refusal happens here, before anything starts, and changes nothing."""
        from safeship.analysis.base import plan_shaper, uses_safeship_mechanisms

        service, environment = validate_request(self.config, self.store, request, policy_for=self.policy_for)
        baseline = self.current_version(request.service_name, request.environment)
        if baseline == request.version:
            raise ConflictError(f"{request.service_name} {request.version} already serves {request.environment}")
        frozen = gates.check_freeze(environment, self.wall_now(), request.override_freeze)
        gates.check_artifact(self.store, request.service_name, request.version)
        if environment.max_concurrent_deployments is not None:
            self._unstrand(None, environment.name)
        gates.check_concurrency(self.store, environment)
        policy_name = policy or self.default_policy
        chosen = self.policy_for(policy_name)
        recent = [d.phase for d in self.store.list_deployments(
            service=request.service_name, environment=request.environment, limit=5)]
        capacity = gates.free_capacity(self.config, self.store, request.service_name, environment)
        try:
            selection = select_strategy(
                service_name=request.service_name,
                service=service,
                environment=environment,
                strategies=self.config.intelligent_deployment.strategies,
                explicit=request.deployment_strategy,
                recent_outcomes=recent,
                capacity=capacity,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        replicas = request.configuration.replicas if request.configuration else service.replicas
        plan_input = PlanInput(
            service=request.service_name,
            candidate=request.version,
            baseline=baseline,
            replicas=replicas,
            # the monitoring window after promotion is this deployment's own
            settings=self.config.intelligent_deployment.model_copy(
                update={"rollback": self.config.rollback_for(request.service_name, request)}),
            policy_weights=chosen.weights(self.config.intelligent_deployment.strategies.canary.traffic_percentages),
            readiness_timeout=self.readiness_timeout(request.service_name, request),
            # a model of another tool gets no confirmation split and plans that tool's own rollout
            confirm=uses_safeship_mechanisms(chosen),
            shape=plan_shaper(chosen),
        )
        selection, plan = self._fit_quota(selection, plan_input, service, capacity, environment.name,
                                          explicit=request.deployment_strategy is not None)
        if selection.slow:
            plan = [_slower(step) for step in plan]
        try:
            check_gates(service.webhooks)
        except ValueError as exc:
            raise InputError(f"services.{request.service_name}.webhooks: {exc}") from None
        plan = with_gates(plan, service.webhooks, request.version)
        now = self.clock.now()
        status = DeploymentStatus(replicas=replicas, driver=self.driver)
        if frozen is not None:
            status.freeze_override = FreezeOverride(frozen, request.override_freeze, request.requested_by)
        record = DeploymentRecord(
            id=new_id("deploy"),
            service=request.service_name,
            environment=request.environment,
            version=request.version,
            from_version=baseline,
            strategy=selection.strategy.value,
            strategy_reason=selection.reason,
            policy=policy_name,
            phase=Phase.PENDING.value,
            step_index=0,
            plan=steps_to_json(plan),
            status=status.to_json(),
            request=request.stored(),
            created_at=now,
            updated_at=now,
            phase_started_at=now,
            step_started_at=now,
        )
        events = [
            EventRecord(record.id, now, "created", f"deploy {request.service_name} {request.version} to "
                        f"{request.environment} ({'from ' + baseline if baseline else 'first deployment'})"
                        f"{' by ' + request.requested_by if request.requested_by else ''}"),
            EventRecord(record.id, now, "strategy", selection.reason, {"strategy": selection.strategy.value}),
        ]
        if frozen is not None:
            events.append(EventRecord(record.id, now, "freeze_override",
                                      f"{frozen} overridden: {request.override_freeze}",
                                      {"reason": request.override_freeze, "by": request.requested_by}))
        self.store.create_deployment(record, events)
        return record

    def wall_now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), tz=UTC)

    def _fit_quota(self, selection: Selection, given: PlanInput, service: ServiceConfig, capacity: Capacity,
                   environment: str, *, explicit: bool) -> tuple[Selection, list[Step]]:
        """The selected plan if it fits the quota at its peak; else a lighter strategy that does (and
        says why); else QuotaExceeded naming the resource, requested vs available."""
        strategies = self.config.intelligent_deployment.strategies
        order = [selection.strategy] + ([] if explicit else [
            s for s in (DeploymentStrategy.ROLLING, DeploymentStrategy.RECREATE)
            if s is not selection.strategy and getattr(strategies, s.value).enabled])
        first_short: gates.Shortfall | None = None
        for strategy in order:
            plan = STRATEGIES[strategy].plan(given)
            peak = gates.peak_instances(plan, given.baseline, given.replicas)
            short = gates.shortfall(peak, service.resources.cpu, service.resources.memory, capacity)
            if short is None:
                if strategy is selection.strategy:
                    return selection, plan
                reason = (f"{strategy.value}: {selection.strategy.value} would exceed {environment}'s quota "
                          f"({first_short}); {strategy.value} needs {peak} instances at most. "
                          f"Otherwise {selection.reason}")
                return Selection(strategy, reason), plan
            first_short = first_short or short
        raise gates.QuotaExceeded(
            f"{given.service} {given.candidate} does not fit {environment}'s quota with "
            f"{selection.strategy.value}: {first_short}; nothing was started"
        )

    def approve(self, deployment_id: str, *, by: str) -> DeploymentRecord:
        """Record who approved an awaiting deployment, and when; it then proceeds."""
        record = self.store.get_deployment(deployment_id)
        self._unstrand(record.service, record.environment, skip=record.id)
        if record.phase != Phase.AWAITING_APPROVAL.value:
            raise ConflictError(f"deployment {deployment_id} is {record.phase}, not awaiting approval")
        tick = Tick(record, self.clock.now())
        tick.status.approval = Approval(by or "unknown", tick.now)
        self._enter(tick, Phase.PREPARING, f"approved by {by or 'unknown'}")
        return self.store.save_transition(record, tick.result(), tick.events)

    def promote(self, deployment_id: str, *, by: str) -> DeploymentRecord:
        """Promote now (as Argo's `promote --full`): the remaining steps of an active deployment up
        to its promotion are skipped, analyses and webhook gates among them. The candidate is
        still started to its full count and must be ready before it takes all traffic and is
        promoted; the steps after the promotion (the monitoring window, the old version's scale
        down) still run, and an old version a skipped step would have stopped is stopped at the
        end. Refused (ConflictError) once the deployment ended, while it rolls back, while it
        awaits approval, or once it was promoted. An event records who. A tick that moved the
        deployment meanwhile is read again (a few times) before the request gives up."""
        record = self.store.get_deployment(deployment_id)
        self._unstrand(record.service, record.environment, skip=record.id)
        for _ in range(PROMOTE_ATTEMPTS - 1):
            try:
                return self._promote_once(self.store.get_deployment(deployment_id), by)
            except StaleStateError:
                continue
        return self._promote_once(self.store.get_deployment(deployment_id), by)

    def _promote_once(self, record: DeploymentRecord, by: str) -> DeploymentRecord:
        deployment_id = record.id
        phase = Phase(record.phase)
        if phase.is_final:
            raise ConflictError(f"deployment {deployment_id} already ended ({record.phase}); nothing to promote")
        if phase is Phase.ROLLING_BACK:
            raise ConflictError(f"deployment {deployment_id} is rolling back; it cannot be promoted")
        if phase is Phase.AWAITING_APPROVAL:
            raise ConflictError(f"deployment {deployment_id} awaits approval; approve it first "
                                f"(`deployment-engine --approve --deployment-id {deployment_id}`)")
        if record.decision == "promote":
            raise ConflictError(f"deployment {deployment_id} was already promoted")
        plan = steps_from_json(record.plan)
        index = record.step_index if phase in (Phase.PROGRESSING, Phase.MONITORING) else 0
        promote_at = next((i for i, s in enumerate(plan) if s["kind"] == "promote"), None)
        if promote_at is None or promote_at < index:
            raise ConflictError(f"deployment {deployment_id} has no promotion left to skip to")
        tick = Tick(record, self.clock.now())
        replicas = tick.status.replicas
        if replicas is None:
            replicas = self.config.services[record.service].replicas
        candidate, baseline = record.version, record.from_version
        after = plan[promote_at:]
        timeout = self.readiness_timeout(record.service, DeploymentRequest.from_stored(record.request))
        tail: list[Step] = [scale(candidate, replicas), wait_ready(candidate, replicas, timeout),
                            weights({candidate: 100}), *after]
        stops_baseline = any(s["kind"] == "scale" and s["version"] == baseline and int(s["replicas"]) == 0
                             for s in after)
        if baseline is not None and not stops_baseline:
            tail.append(scale(baseline, 0))
        skipped = len(plan) - index - len(after)
        tick.set(plan=steps_to_json(plan[:index] + tail), step_started_at=tick.now)
        tick.status.gate = None
        tick.status.analysis.confirming = None
        who = by or "unknown"
        tick.event("promote_now", f"promote now by {who}: {skipped} remaining steps before the promotion skipped; "
                   f"{candidate} starts {replicas} instances and takes all traffic once they are ready",
                   by=who, skipped=skipped)
        return self.store.save_transition(record, tick.result(), tick.events)

    def readiness_timeout(self, service: str, request: DeploymentRequest | None = None) -> float:
        triggers = self.config.rollback_for(service, request).triggers
        found = [t.timeout for t in triggers if isinstance(t, HealthCheckFailureTrigger)]
        return found[0] if found else self.config.intelligent_deployment.strategies.blue_green.health_check_timeout

    def current_version(self, service: str, environment: str) -> str | None:
        return self.store.current_version(service, environment)

    def _served_long_enough(self, row: StableVersion) -> bool:
        """Healthy, and served for at least `stable_after` (until now, or until it was replaced)."""
        end = row.retired_at if row.retired_at is not None else self.clock.now()
        return row.healthy and end - row.promoted_at >= self.config.rollback_for(row.service).stable_after

    def previous_stable_version(self, service: str, environment: str, *, exclude: str) -> str | None:
        """The newest other version that passed its health checks and served for `stable_after`."""
        for row in self.store.stable_versions(service, environment):
            if row.version != exclude and self._served_long_enough(row):
                return row.version
        return None

    def is_stable(self, service: str, environment: str, version: str) -> bool:
        return any(r.version == version and self._served_long_enough(r)
                   for r in self.store.stable_versions(service, environment))

    def cancel(self, deployment_id: str, *, by: str = "") -> DeploymentRecord:
        record = self.store.get_deployment(deployment_id)
        self._unstrand(record.service, record.environment, skip=record.id)
        if record.phase == Phase.ROLLING_BACK.value and self._stranded(record):
            return self._drive_stranded(record)  # finishing its rollback is all a cancel can do now
        if Phase(record.phase).is_final:
            raise ConflictError(f"deployment {deployment_id} already ended ({record.phase}); nothing to cancel")
        if record.phase == Phase.ROLLING_BACK.value:
            raise ConflictError(f"deployment {deployment_id} is already rolling back")
        tick = Tick(record, self.clock.now())
        self._begin_rollback(tick, Failure("cancelled", f"cancelled{' by ' + by if by else ''}"),
                             automatic=False, cancel=True)
        return self.store.save_transition(record, tick.result(), tick.events)

    def abandon(self, deployment_id: str, *, reason: str) -> DeploymentRecord:
        """End a deployment at once as cancelled, running no rollback: for one whose objects are
        gone with their owner (a deleted Release: Kubernetes deletes its Deployments, Services and
        routes). No version of its service runs in its environment any more, so none stays its
        stable version there (the next deployment is a first one); a rollback under way is
        recorded as ended unfinished. Raises StaleStateError when the row moved meanwhile."""
        record = self.store.get_deployment(deployment_id)
        if Phase(record.phase).is_final:
            raise ConflictError(f"deployment {deployment_id} already ended ({record.phase}); nothing to end")
        tick = Tick(record, self.clock.now())
        state = tick.status.rollback
        if state is not None and not state.cancel:
            tick.rollback = RollbackRecord(
                id=state.id, deployment_id=record.id, service=record.service, environment=record.environment,
                from_version=record.version, to_version=state.to_version,
                reason=f"{state.trigger}: {state.reason}; ended unfinished: {reason}", evidence=record.evidence,
                automatic=state.automatic, started_at=state.started_at, duration_s=tick.now - state.started_at,
                success=False, timestamp=tick.now)
        tick.status.gate = None
        tick.retire = Retirement(record.service, record.environment, "", tick.now, True)
        tick.set(reason=reason, evidence={**dict(record.evidence or {}), "trigger": "abandoned"})
        self._finish(tick, Phase.CANCELLED, reason)
        return self.store.save_transition(record, tick.result(), tick.events, rollback=tick.rollback,
                                          retire=tick.retire)

    def request_rollback(self, deployment_id: str, *, reason: str = "manual rollback",
                         force: bool = False) -> DeploymentRecord:
        """Manual rollback by deployment id, during or after the deployment.

        After it, only the release that serves can be rolled back: a newer deployment that ended
        rolled_back, failed or cancelled does not block it. With no earlier stable version to
        return to, a rollback would stop the service, so it is refused unless `force`."""
        record = self.store.get_deployment(deployment_id)
        self._unstrand(record.service, record.environment, skip=record.id)
        if self._stranded(record) and record.phase == Phase.ROLLING_BACK.value:
            record = self._drive_stranded(record)
        if record.phase in (Phase.ROLLING_BACK.value, Phase.ROLLED_BACK.value, Phase.CANCELLED.value):
            live = self._live_deployment(record.service, record.environment)
            where = (f"; {live.version} serves {record.environment}: roll back its deployment {live.id} instead"
                     if live is not None and live.id != record.id else "")
            raise ConflictError(f"deployment {deployment_id} is {record.phase}; nothing to roll back{where}")
        if record.phase == Phase.SUCCEEDED.value:
            self._check_live(record)
        target = self._rollback_target(record)
        if target is None and not force:
            raise InputError(
                f"{record.service} {record.version} in {record.environment} has no earlier stable version "
                "to return to; rolling back would stop the service; pass --force to do it anyway"
            )
        tick = Tick(record, self.clock.now())
        if target is None:
            reason = f"{reason} (forced: nothing earlier to return to, the service stops)"
        self._begin_rollback(tick, Failure("manual", reason), automatic=False)
        return self.store.save_transition(record, tick.result(), tick.events, rollback=tick.rollback)

    def _check_live(self, record: DeploymentRecord) -> None:
        """A succeeded deployment may be rolled back while its version serves and nothing newer
        is running or serving; newer deployments that ended without going live do not count."""
        newer = [d for d in self.store.list_deployments(service=record.service, environment=record.environment)
                 if d.created_at > record.created_at]
        running = [d for d in newer if Phase(d.phase).is_active]
        if running:
            raise ConflictError(
                f"{record.service} has deployment {running[0].id} ({running[0].version}, {running[0].phase}) "
                f"running in {record.environment}; wait for it or cancel it with "
                f"`deployment-engine --cancel --deployment-id {running[0].id}`"
            )
        went_live = [d for d in newer if d.phase == Phase.SUCCEEDED.value]
        if went_live:
            raise ConflictError(
                f"{record.service} has a newer deployment ({went_live[0].id}, {went_live[0].version}); "
                "roll that one back instead"
            )
        current = self.current_version(record.service, record.environment)
        if current != record.version:
            raise ConflictError(
                f"{record.version} no longer serves {record.environment} ({current or 'nothing'} does); "
                "nothing to roll back"
            )

    def _live_deployment(self, service: str, environment: str) -> DeploymentRecord | None:
        """The newest deployment that went live with the version serving now."""
        current = self.current_version(service, environment)
        for d in self.store.list_deployments(service=service, environment=environment):
            if d.version == current and d.phase == Phase.SUCCEEDED.value:
                return d
        return None

    def _rollback_target(self, record: DeploymentRecord) -> str | None:
        """The version a rollback returns to: the one the deployment replaced or, once it went
        live, the previous stable version; None when there is nothing earlier."""
        if record.phase == Phase.SUCCEEDED.value:
            found = self.previous_stable_version(record.service, record.environment, exclude=record.version)
            return found or record.from_version
        return record.from_version

    # ------------------------------------------------------------ sim deployments nobody drives

    def _stranded(self, record: DeploymentRecord) -> bool:
        from safeship.engine.sim_driver import is_stranded

        return is_stranded(self.config, record)

    def _drive_stranded(self, record: DeploymentRecord) -> DeploymentRecord:
        from safeship.engine.sim_driver import take_over

        return take_over(self.config, self.store, record, policy_for=self.policy_for)

    def _unstrand(self, service: str | None, environment: str, *, skip: str | None = None) -> None:
        """Finish the sim deployments of `service` (or of every service) in `environment` that no
        process drives any more, so that they do not block this request."""
        from safeship.engine.sim_driver import finish_stranded

        finish_stranded(self.config, self.store, service, environment, policy_for=self.policy_for, skip=skip)

    # ------------------------------------------------------------ the tick

    async def advance(self, deployment_id: str) -> float:
        """Move one deployment as far as it can go now; returns seconds until it wants another tick."""
        wait, _ = await self.step(deployment_id)
        return wait

    async def step(self, deployment_id: str, *,
                   known: DeploymentRecord | None = None) -> tuple[float, DeploymentRecord]:
        """`advance`, also returning the deployment as it stands after the tick. `known`: the record
        the previous `step` returned, for a driver that is the deployment's only writer (a
        simulation); it saves reading the row again, and a stale one is still refused on saving."""
        record = known if known is not None and known.id == deployment_id else self.store.get_deployment(deployment_id)
        phase = Phase(record.phase)
        if phase.is_final or phase is Phase.AWAITING_APPROVAL:
            return (math.inf if phase.is_final else POLL_S), record
        now = self.clock.now()
        watching = self._watching_wait(record, now) if self.shortcut_watching else None
        if watching is not None and await self._nothing_crashed(record):
            return watching, record  # what the whole tick would have returned, having changed nothing
        tick = Tick(record, now)
        if self.driver is not None and tick.status.driver != self.driver:
            tick.status.driver = self.driver
        wait = 0.0
        if phase is Phase.PENDING:
            environment = self.config.environment(record.environment)
            if environment is not None and environment.approval == "required":
                self._enter(tick, Phase.AWAITING_APPROVAL, f"{record.environment} requires approval: "
                            f"`deployment-engine --approve --deployment-id {record.id}`")
            else:
                self._enter(tick, Phase.PREPARING)
        elif phase is Phase.PREPARING:
            wait = await self._prepare(tick)
        elif phase in (Phase.PROGRESSING, Phase.MONITORING):
            wait = await self._progress(tick)
        elif phase is Phase.ROLLING_BACK:
            wait = await self._roll_back(tick)
        after = tick.outcome()
        if after is None:
            return wait, record
        moved = (after.phase, after.step_index) != (record.phase, record.step_index)
        if moved:
            faultpoint.boundary("before", after.phase, after.step_index, after.strategy,
                                was=(record.phase, record.step_index))
        try:
            saved = self.store.save_transition(
                record, after, tick.events, rollback=tick.rollback, stable=tick.stable,
                retire=tick.retire,
            )
        except LeaseLostError:
            raise  # another controller owns it now: its driver stops (a row_version loss reads again)
        except StaleStateError:
            return 0.0, self.store.get_deployment(deployment_id)  # someone else moved it; read again
        if moved:
            faultpoint.boundary("after", saved.phase, saved.step_index, saved.strategy,
                                was=(record.phase, record.step_index))
        if Phase(saved.phase).is_final:
            await self._post_rollout(saved)
            self._retry_after_incident(saved)
        return wait, saved

    def _retry_after_incident(self, record: DeploymentRecord) -> DeploymentRecord | None:
        """The same release deployed again after a rollback that ended asking for it (an incident
        that passed, `analysis.retry_after_incident`); the new deployment is named in an event of
        the old one (`retry_deployment` in its data) and by its `requested_by`. A retry that cannot start (the
        version was meanwhile deployed, a freeze, another deployment under way) is an event too."""
        evidence = record.evidence or {}
        if record.phase != Phase.ROLLED_BACK.value or not evidence.get("retry_after_incident"):
            return None
        request = DeploymentRequest.from_stored(record.request)
        if request is None:
            return None
        retry_request = request.model_copy(update={"requested_by": f"retry after the incident of {record.id}"})
        try:
            retry = self.submit(retry_request, policy=record.policy)
        except SafeshipError as exc:
            self.store.add_events([EventRecord(record.id, self.clock.now(), "retry",
                                               f"the retry of {record.version} could not start: {exc}")])
            return None
        self.store.add_events([EventRecord(record.id, self.clock.now(), "retry",
                                           f"retrying {record.version}: deployment {retry.id}",
                                           {"retry_deployment": retry.id})])
        return retry

    def _watching_wait(self, record: DeploymentRecord, now: float) -> float | None:
        """The wait a tick of `record` at `now` returns when all it does is watch, else None.

        Between two looks at the traffic of a monitoring window, a tick (StepRunner.monitor, then
        StepRunner._look) reads the traffic counters, checks the candidate's instances for a crash
        and, finding none, changes nothing and asks to be ticked again in POLL_S, or at the next
        look if that comes first. That holds while the plan's current step is a monitor step run
        by the runner's own executor, its look marker is set, no confirmation split is under way,
        no rollback gate is to be asked and this engine's mark is already recorded; building and
        comparing the whole tick for it costs more than the watching itself, once a second for
        every monitoring window (`step` watches without the tick: `_nothing_crashed`)."""
        if record.phase != Phase.MONITORING.value:
            return None
        plan, index, status = record.plan, record.step_index, record.status
        if not 0 <= index < len(plan) or plan[index].get("kind") != "monitor":
            return None
        if self.steps.executors.get("monitor") != self.steps.monitor:
            return None
        last_look = status.get("last_look")
        if (status.get("look_marker") != f"{index}:{record.phase}" or status.get("confirming")
                or not isinstance(last_look, int | float)):
            return None
        if self.driver is not None and DriverMark.from_json(status.get("driver")) != self.driver:
            return None
        service = self.config.services.get(record.service)
        if service is not None and any(gate.type == "rollback" for gate in service.webhooks):
            return None
        interval = self.steps.monitor_interval(self.policy_for(record.policy), plan[index])
        since = now - float(last_look)
        if not since < interval - 1e-9:
            return None  # a look is due
        return min(POLL_S, interval - since)

    async def _nothing_crashed(self, record: DeploymentRecord) -> bool:
        """A watching tick's reads (see `_watching_wait`) without the tick: the traffic counters,
        read as the tick reads them first (a source that counts lazily, such as the simulated
        router, generates its traffic up to now when read, so it must be read at the same
        times), and the candidate's instances. True when none of them crashed; False when one
        did or a read failed, and a whole tick then acts on it."""
        try:
            await self.world.traffic.counters(RouteKey(record.service, record.environment))
            every = await self.world.platform.instances(record.service, record.environment)
        except Exception:  # the whole tick reads again and deals with it
            return False
        live = [i for i in every if i.version == record.version and i.state is not InstanceState.STOPPED]
        return StepRunner.crash_failure(live) is None

    async def _post_rollout(self, record: DeploymentRecord) -> None:
        """Tell the service's post-rollout gates that the deployment ended (asked once per end,
        with their retries); what they answer is recorded as an event and changes nothing."""
        service = self.config.services.get(record.service)
        found = [g for g in (service.webhooks if service is not None else []) if g.type == "post-rollout"]
        if not found:
            return
        weights_now = DeploymentStatus.from_json(record.status).weights
        events = []
        for gate in found:
            body = webhooks.gate_body(record, gate, phase=record.phase, step=record.step_index, weights=weights_now,
                                      reason=record.reason)
            answer, attempts = await webhooks.ask_with_retries(gate, body)
            events.append(EventRecord(
                record.id, self.clock.now(), "gate_passed" if answer.ok else "gate_failed",
                f"post-rollout gate {gate.name!r} answered {answer.text}"
                f"{'' if answer.ok else f' after {attempts} attempts; nothing changes'}",
                {"gate": gate.name, "type": gate.type, "answer": answer.text, "status": answer.status,
                 "attempts": attempts}))
        try:
            self.store.add_events(events)
        except SafeshipError as exc:
            log.warning("deployment %s: post-rollout answers could not be recorded: %s", record.id, exc)

    def retry_delay(self, error: BaseException, errors_in_a_row: int) -> float:
        """Seconds to wait before ticking again after `advance` raised `error`, the
        `errors_in_a_row`-th tick in a row that raised: a TemporaryError's own `delay`, else
        2 ** errors_in_a_row, at most MAX_RETRY_DELAY_S."""
        if isinstance(error, TemporaryError):
            return max(0.0, error.delay)
        return min(MAX_RETRY_DELAY_S, 2.0**errors_in_a_row)

    def tick_failed(self, deployment_id: str, error: Exception, errors_in_a_row: int) -> float:
        """What a driver does when `advance` raised: the error is logged (with its traceback when
        it is not a SafeshipError, i.e. a bug), recorded as an event on the first failure in a
        row, and at ERRORS_BEFORE_ROLLBACK in a row the deployment is rolled back. Returns the
        seconds to wait before the next tick (`retry_delay`). Never raises a SafeshipError."""
        log.error("deployment %s: tick failed (%d in a row): %s", deployment_id, errors_in_a_row, error,
                  exc_info=not isinstance(error, SafeshipError))
        message = f"controller could not advance the deployment: {error}"
        try:
            if errors_in_a_row == 1:
                self.store.add_events([EventRecord(deployment_id, time.time(), "controller_error", message)])
            if errors_in_a_row == ERRORS_BEFORE_ROLLBACK:
                self.request_rollback(deployment_id, reason=message, force=True)
        except SafeshipError as exc:
            log.warning("deployment %s: could not record the failed tick: %s", deployment_id, exc)
        return self.retry_delay(error, errors_in_a_row)

    async def run(
        self,
        deployment_id: str,
        *,
        on_tick: Callable[[DeploymentRecord], Awaitable[None] | None] | None = None,
        return_when_awaiting: bool = False,
    ) -> DeploymentRecord:
        """Advance until the deployment ends, sleeping on the engine's clock between ticks.

        `return_when_awaiting` returns as soon as it waits for a person's approval (a foreground
        command on a virtual clock must not wait for one). On a virtual clock it also returns
        when a webhook gate holds the deployment: its interval would pass at once, and the gate
        would be asked again without pause; the next driver asks it again."""
        virtual = isinstance(self.clock, VirtualClock)
        while True:
            wait, record = await self.step(deployment_id)
            if on_tick is not None:
                maybe = on_tick(record)
                if maybe is not None:
                    await maybe
            if math.isinf(wait) or (return_when_awaiting and record.phase == Phase.AWAITING_APPROVAL.value):
                return record
            if virtual and held_by_gate(record):
                return record
            if wait > 0:
                await self.clock.sleep(wait)

    def _enter(self, tick: Tick, phase: Phase, message: str = "") -> None:
        tick.set(phase=phase.value, phase_started_at=tick.now)
        tick.event("phase", message or f"phase {phase.value}", phase=phase.value)

    async def _prepare(self, tick: Tick) -> float:
        port = await self.world.router.ensure_route(tick.route)
        abilities_for = getattr(self.world.router, "abilities_for", None)
        abilities = abilities_for(tick.route) if abilities_for is not None else self.world.router.abilities
        if port is None and abilities.listens:
            # No one could reach the new version (the route's port is held by another process):
            # nothing has started yet, so wait here, and fail once the readiness timeout is spent.
            waited = tick.now - float(tick.get("phase_started_at"))
            limit = self.readiness_timeout(tick.before.service, DeploymentRequest.from_stored(tick.before.request))
            message = (f"route {tick.route.environment}/{tick.route.service} does not listen (its port is "
                       "taken? the controller's log names the process that holds it)")
            if waited >= limit:
                self._finish(tick, Phase.FAILED, f"{message} after {waited:.0f}s; nothing was started")
                return math.inf
            if not any(e.kind == "route_unavailable" for e in self.store.events(tick.before.id)):
                tick.event("route_unavailable", f"{message}; waiting up to {limit:.0f}s before starting anything")
            return POLL_S
        baseline = tick.before.from_version
        if baseline is not None:
            await self.steps.sync_backends(tick)
            # Read once so that a router that counts lazily (the simulated one) brings its traffic
            # up to the start of the rollout here; the counters themselves are not kept.
            await self.world.traffic.counters(tick.route)
            await self._record_history(tick, baseline)
        self._enter(tick, Phase.PROGRESSING)
        tick.set(step_index=0, step_started_at=tick.now)
        return 0.0

    async def _record_history(self, tick: Tick, baseline: str) -> None:
        """Fix the replaced version's own record before the candidate's first request: the control
        for steps where the two versions do not serve side by side. A source that cannot say is
        no error: those steps then fall back to the absolute triggers, and the event says so.
        Only safeship's own policy uses this record: for a model of another tool nothing is read
        or recorded."""
        from safeship.analysis.base import uses_safeship_mechanisms

        if not uses_safeship_mechanisms(self.policy_for(tick.before.policy)):
            return
        span = self.config.intelligent_deployment.analysis.history
        try:
            window = await self.world.traffic.before(tick.route, tick.now, span)
        except TemporaryError as exc:
            log.warning("deployment %s: the record before it could not be read: %s", tick.before.id, exc)
            window = None
        record = window.counters.get(baseline) if window is not None else None
        if window is None or record is None or record.requests == 0:
            tick.event("history_unavailable", f"no record of {baseline} before the deployment; steps where "
                       "it does not serve beside the candidate are judged by the absolute triggers only")
            return
        tick.status.analysis.history = record
        tick.status.analysis.history_span_s = window.end - window.start
        tick.status.analysis.history_dispersion = window.dispersion.get(baseline)
        spread = window.dispersion.get(baseline)
        tick.event("history", f"{baseline} before the deployment: {record.requests} requests, "
                   f"{record.failed} failed over {window.end - window.start:.0f}s"
                   + (f", failures {spread:.1f}x as dispersed as independent ones" if spread is not None else ""),
                   version=baseline, requests=record.requests, failed=record.failed, dispersion=spread)

    async def _progress(self, tick: Tick) -> float:
        plan = steps_from_json(tick.before.plan)
        for _ in range(len(plan) + 1):  # run consecutive instant steps within one tick
            index = int(tick.get("step_index"))
            if index >= len(plan):
                self._finish(tick, Phase.SUCCEEDED, f"{tick.before.version} is live")
                return math.inf
            step = plan[index]
            if step["kind"] == "monitor" and tick.get("phase") != Phase.MONITORING.value:
                self._enter(tick, Phase.MONITORING, f"monitoring {tick.before.version} for "
                            f"{float(step['duration']):.0f}s after promotion")
            result = await self.steps.run(tick, step)
            if result.failure is not None and result.failure.trigger == ROLLBACK_GATE_TRIGGER:
                # a person's rollback through a webhook: rolls back whatever auto_rollback says
                failure = result.failure
                tick.event("trigger", f"{failure.trigger}: {failure.reason}", **dict(failure.evidence))
                self._begin_rollback(tick, failure, automatic=False)
                return 0.0
            if result.failure is not None:
                self._fail(tick, result.failure)
                restore = tick.status.restore_weights
                if tick.get("phase") == Phase.FAILED.value and restore is not None:
                    # Auto rollback is off: traffic goes back to the last weights that passed analysis.
                    await self.world.router.set_weights(tick.route, restore)
                    tick.status.weights = dict(restore)
                    return math.inf
                return 0.0
            if not result.done:
                return result.wait
            tick.set(step_index=index + 1, step_started_at=tick.now)
        return 0.0

    # ------------------------------------------------------------ failure and rollback

    def _fail(self, tick: Tick, failure: Failure) -> None:
        tick.event("trigger", f"{failure.trigger}: {failure.reason}", **dict(failure.evidence))
        rollback = self._rollback_settings(tick.before)
        if rollback.auto_rollback:
            self._begin_rollback(tick, failure, automatic=True)
            return
        safe = tick.status.last_safe_weights or (
            {tick.before.from_version: 100} if tick.before.from_version else dict(tick.status.weights or {}))
        tick.status.restore_weights = safe
        message = (f"{failure.reason}. Auto rollback is off: traffic is back on the last safe weights "
                   f"{safe}; roll back with `rollback-manager --rollback --deployment-id {tick.before.id}`")
        tick.set(decision="failed", decided_at=tick.now, reason=message, evidence=dict(failure.evidence))
        self._finish(tick, Phase.FAILED, message)

    def _rollback_settings(self, record: DeploymentRecord) -> RollbackConfiguration:
        """The deployment's rollback settings: its request's rollback_config, else the service's."""
        return self.config.rollback_for(record.service, DeploymentRequest.from_stored(record.request))

    def _begin_rollback(self, tick: Tick, failure: Failure, *, automatic: bool, cancel: bool = False) -> None:
        record = tick.before
        promoted = record.decision == "promote" or tick.changes.get("decision") == "promote"
        target = self._rollback_target(record)
        replicas = tick.status.replicas
        if replicas is None:
            replicas = self.config.services[record.service].replicas
        tick.status.gate = None  # a gate that held the deployment holds it no more
        plan: list[Step] = []
        if target is not None:
            timeout = self._rollback_settings(record).rollback_timeout
            plan += [scale(target, replicas), wait_ready(target, replicas, timeout), weights({target: 100})]
        else:
            plan.append(weights({}))  # nothing to return to: no version takes traffic any more
        plan.append(scale(record.version, 0))
        if target is not None and automatic and not cancel and self._uncontrolled_alarm(tick, failure):
            plan.append(incident_check(target, INCIDENT_CHECK_S))
        rollback_id = new_id("rollback")
        tick.status.rollback = RollbackProgress(
            id=rollback_id, plan=plan, step=0, attempt=1, started_at=tick.now, to_version=target,
            automatic=automatic, cancel=cancel, promoted=promoted, reason=failure.reason, trigger=failure.trigger,
        )
        tick.set(reason=failure.reason, evidence={"trigger": failure.trigger, **dict(failure.evidence)})
        if not cancel:
            tick.set(decision="rollback", decided_at=tick.now)
            tick.rollback = RollbackRecord(
                id=rollback_id, deployment_id=record.id, service=record.service,
                environment=record.environment, from_version=record.version, to_version=target,
                reason=f"{failure.trigger}: {failure.reason}", evidence=dict(failure.evidence),
                automatic=automatic, started_at=tick.now, duration_s=None, success=None, timestamp=tick.now,
            )
        undo = "cancel" if cancel else "rollback"
        self._enter(tick, Phase.ROLLING_BACK, f"{undo} to {target}: {failure.reason}" if target else
                    f"{undo}, with no earlier version to serve (first deployment): {failure.reason}")
        tick.set(step_started_at=tick.now)

    def _uncontrolled_alarm(self, tick: Tick, failure: Failure) -> bool:
        """An alarm of safeship's own policy that compared the candidate with a record or a fixed
        threshold, not with a version serving beside it, and that no split checked: its cause may
        have been shared by every version, which the restored version will tell."""
        from safeship.analysis.base import uses_safeship_mechanisms

        if tick.status.analysis.history is None or failure.evidence.get("confirmed_by_split"):
            return False
        if not uses_safeship_mechanisms(self.policy_for(tick.before.policy)):
            return False
        return str(failure.evidence.get("test", "")).startswith(("single_", "trigger:"))

    async def _roll_back(self, tick: Tick) -> float:
        state = tick.status.rollback
        if state is None:
            raise ValueError(f"deployment {tick.before.id} is rolling back without a rollback plan")
        settings = self._rollback_settings(tick.before)
        while state.step < len(state.plan):
            result = await self.steps.run(tick, state.plan[state.step])
            if result.failure is not None:
                if state.attempt >= settings.max_rollback_attempts:
                    return self._rollback_done(tick, state, success=False, why=result.failure.reason)
                state.attempt += 1
                state.step = 0
                tick.set(step_started_at=tick.now)
                tick.event("rollback_retry", f"rollback attempt {state.attempt}: {result.failure.reason}")
                return POLL_S
            if not result.done:
                return result.wait
            state.step += 1
            tick.set(step_started_at=tick.now)
        return self._rollback_done(tick, state, success=True)

    def _rollback_done(self, tick: Tick, state: RollbackProgress, *, success: bool, why: str = "") -> float:
        record = tick.before
        duration = tick.now - state.started_at
        if not state.cancel:
            tick.rollback = RollbackRecord(
                id=state.id, deployment_id=record.id, service=record.service,
                environment=record.environment, from_version=record.version, to_version=state.to_version,
                reason=f"{state.trigger}: {state.reason}", evidence=record.evidence,
                automatic=state.automatic, started_at=state.started_at,
                duration_s=duration, success=success, timestamp=tick.now,
            )
        if success:
            target = state.to_version
            if target is not None and state.promoted:
                tick.stable = StableVersion(record.service, record.environment, target, record.id,
                                            tick.now, None, True)
            tick.retire = Retirement(record.service, record.environment, target or "", tick.now, False)
            phase = Phase.CANCELLED if state.cancel else Phase.ROLLED_BACK
            undone = "cancelled" if state.cancel else "rolled back"
            self._finish(tick, phase, f"{undone} to {target} in {duration:.1f}s" if target else
                         f"{undone} in {duration:.1f}s; no earlier version to serve (first deployment)")
        else:
            self._finish(tick, Phase.FAILED, f"rollback failed after {state.attempt} attempts: {why}; "
                         "the service needs a person now")
        return math.inf

    def _finish(self, tick: Tick, phase: Phase, message: str) -> None:
        self._enter(tick, phase, message)
        tick.set(finished_at=tick.now)
        if tick.get("reason") is None:
            tick.set(reason=message)


def held_by_gate(record: DeploymentRecord) -> bool:
    """A confirm webhook gate holds the deployment (it did not answer 2xx when last asked)."""
    gate = DeploymentStatus.from_json(record.status).gate
    return gate is not None and gate.held_since is not None


def validate_request(
    config: SafeshipConfig, store: Store, request: DeploymentRequest, *, policy_for: PolicyFactory | None = None
) -> tuple[ServiceConfig, Environment]:
    """The names are well formed, the service, version and environment exist, and nothing else is
    deploying there. Refuses before anything is recorded. A sim deployment of the same service
    and environment that no process drives any more is first driven to its end (`policy_for`
    names its analysis policies; the built-in ones by default)."""
    check_name("service", request.service_name, field="--service")
    check_name("environment", request.environment, field="--environment")
    check_name("version", request.version, field="--version")
    service = config.services.get(request.service_name)
    if service is None:
        known = ", ".join(sorted(config.services)) or "none configured"
        raise NotFoundError(f"service {request.service_name!r} is not in the config (known: {known})")
    environment = config.environment(request.environment)
    if environment is None:
        known = ", ".join(e.name for e in config.environment_management.environments) or "none"
        raise NotFoundError(f"environment {request.environment!r} is not in the config (known: {known})")
    if service.versions and request.version not in service.versions:
        raise NotFoundError(
            f"version {request.version!r} of {request.service_name} is not known "
            f"(known: {', '.join(service.versions)})"
        )
    if not runs_in_controller(environment.platform):
        from safeship.engine.sim_driver import finish_stranded

        finish_stranded(config, store, request.service_name, request.environment, policy_for=policy_for)
    active = store.active_deployment(request.service_name, request.environment)
    if active is not None:
        raise ConflictError(
            f"{request.service_name} already has deployment {active.id} ({active.version}, {active.phase}) "
            f"in {request.environment}; wait for it or cancel it with "
            f"`deployment-engine --cancel --deployment-id {active.id}`"
        )
    _check_configuration(request)
    return config.service_for(request.service_name, request), environment


_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_configuration(request: DeploymentRequest) -> None:
    """The request's per-deployment settings can act: refuses what cannot, in one sentence."""
    given = request.configuration
    if given is None:
        return
    if given.secrets:
        raise InputError(
            f"configuration.secrets: per-deployment secrets are not supported; set them under "
            f"services.{request.service_name}.secrets in safeship.yaml")
    for key in given.environment_variables:
        if not _ENV_VAR.fullmatch(key):
            raise InputError("configuration.environment_variables: a variable name must be letters, digits and "
                             f"'_', not starting with a digit, got {key!r}")


def _slower(step: Step) -> Step:
    """Twice the evidence per step after recent rollbacks."""
    if step["kind"] == "analyze":
        slower: AnalyzeStep = {**step, "duration": float(step["duration"]) * 2}
        if "min_duration" in step:
            slower["min_duration"] = float(step["min_duration"]) * 2
        return slower
    return step

