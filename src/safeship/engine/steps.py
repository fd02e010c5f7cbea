"""One executor per plan step kind, found through one registry (kind -> executor). Each converges
the world towards its step and says whether the step is done, how long to wait before looking
again, or what failed (with the evidence)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safeship.analysis.base import (
    Decision,
    Policy,
    SplitEvidence,
    SplitKind,
    SplitOutcome,
    StepContext,
    TickSample,
    Verdict,
    split_settler,
    split_starter,
    uses_safeship_mechanisms,
)
from safeship.config.models import (
    DeploymentRequest,
    HealthCheckFailureTrigger,
    RollbackConfiguration,
    SafeshipConfig,
)
from safeship.config.webhooks import CONFIRM_TYPES, WebhookGateConfig
from safeship.engine import webhooks
from safeship.engine.context import Failure, Tick, World
from safeship.engine.phases import Phase
from safeship.engine.policies import PolicyFactory
from safeship.engine.status import CountSummary, GateProgress, SampleSummary
from safeship.errors import PermanentError, TemporaryError
from safeship.platforms.base import Instance, InstanceSpec, InstanceState, ProbeSpec
from safeship.routing.backends import sync_backends
from safeship.routing.base import Backend, TrafficCounters
from safeship.store import Retirement, StableVersion
from safeship.strategies.base import (
    AnalyzeStep,
    ConfirmSplit,
    GateStep,
    HoldStep,
    IncidentCheckStep,
    MonitorStep,
    PauseStep,
    PromoteStep,
    ProveStep,
    ScaleStep,
    Step,
    TestTrafficStep,
    WaitReadyStep,
    WeightsStep,
)

POLL_S = 1.0  # how often waiting steps look again
# A split that showed an incident is settled again this often, on what its recent seconds show.
SETTLE_EVERY_S = 30.0
# From this long into a split, the policy is asked at every look whether an incident shows already.
EARLY_SETTLE_S = 5.0
# After an incident rollback, how long the restored version may take to come back within its
# record before the release is retried (`analysis.retry_after_incident`); longer: no retry.
RETRY_WAIT_S = 1800.0
# The trigger of a failure a rollback gate asked for: the engine rolls back as a person's
# rollback would, whatever `auto_rollback` says.
ROLLBACK_GATE_TRIGGER = "webhook_rollback"



@dataclass(frozen=True)
class StepResult:
    done: bool
    wait: float = 0.0
    failure: Failure | None = None


DONE = StepResult(done=True)

# An executor takes the step of its own kind (one of the TypedDicts of strategies.base); the
# registry cannot say which, so its steps are typed Any here.
StepExecutor = Callable[[Tick, Any], Awaitable[StepResult]]
SecretsSource = Callable[[str, str], Mapping[str, str]]


def _probe(config: Any) -> ProbeSpec:
    return ProbeSpec(
        kind=config.type,
        path=config.path,
        command=tuple(config.command),
        timeout=config.timeout,
        interval=config.interval,
        failure_threshold=config.failure_threshold,
        success_threshold=config.success_threshold,
        initial_delay=config.initial_delay,
    )


class StepRunner:
    """Runs plan steps against the world: `run(tick, step)` finds the step's executor by its kind
    and runs it.

    Contract: an executor is idempotent (running a step again after a lost tick does no harm),
    changes only the world and the tick (status, columns, events, side records), and returns a
    StepResult. Errors from plug-ins are acted on here: a TemporaryError means look again after its
    `delay`, counted as an error in a row (at `analysis.error_limit` in a row the step fails); a
    PermanentError fails the step with its reason. `register` adds or replaces an executor."""

    def __init__(
        self,
        config: SafeshipConfig,
        world: World,
        policy_for: PolicyFactory,
        secrets_for: SecretsSource | None = None,
    ) -> None:
        self.config = config
        self.world = world
        self.policy_for = policy_for  # name -> Policy
        self.secrets_for = secrets_for  # (service, environment) -> {name: value}
        self.executors: dict[str, StepExecutor] = {
            "scale": self.scale,
            "wait_ready": self.wait_ready,
            "weights": self.set_weights,
            "hold": self.hold,
            "analyze": self.analyze,
            "monitor": self.monitor,
            "pause": self.pause,
            "promote": self.promote,
            "gate": self.gate,
            "test_traffic": self.test_traffic,
            "incident_check": self.incident_check,
            "prove": self.prove,
        }

    def register(self, kind: str, executor: StepExecutor) -> None:
        self.executors[kind] = executor

    async def run(self, tick: Tick, step: Step) -> StepResult:
        """Run one step; a kind no executor knows is a ValueError (a plan this safeship cannot run)."""
        kind = str(step["kind"])
        executor = self.executors.get(kind)
        if executor is None:
            raise ValueError(f"unknown plan step {kind!r}")
        analysis = tick.status.analysis
        try:
            result = await executor(tick, step)
        except TemporaryError as exc:
            analysis.errors_in_a_row += 1
            errors = analysis.errors_in_a_row
            tick.event("temporary_error", f"{kind}: {exc}", count=errors, delay=exc.delay)
            if errors >= self.config.intelligent_deployment.analysis.error_limit:
                return StepResult(done=False, failure=Failure(
                    "temporary_error", f"{errors} temporary errors in a row: {exc}", {"step": kind}))
            return StepResult(done=False, wait=max(0.0, exc.delay))
        except PermanentError as exc:
            return StepResult(done=False, failure=Failure("permanent_error", str(exc), {"step": kind}))
        if result.done and analysis.errors_in_a_row:
            analysis.errors_in_a_row = 0
        return result

    # ------------------------------------------------------------ instances and backends

    async def live_instances(self, tick: Tick, version: str) -> list[Instance]:
        every = await self.world.platform.instances(tick.before.service, tick.before.environment)
        return [i for i in every if i.version == version and i.state is not InstanceState.STOPPED]

    async def sync_backends(self, tick: Tick) -> dict[str, int]:
        """Tell the router which instances of each version are ready; returns ready counts."""
        every = await self.world.platform.instances(tick.before.service, tick.before.environment)
        synced = await sync_backends(self.world.router, tick.route, every, seen=tick.status.versions_seen)
        tick.status.versions_seen = sorted(set(tick.status.versions_seen) | set(synced.backends))
        return synced.ready_counts()

    def instance_spec(self, tick: Tick, version: str, index: int) -> InstanceSpec:
        """How one instance starts: services.<name>, with the deployment request's `configuration`
        (resources, health checks, environment variables) laid over it."""
        service = self.config.service_for(tick.before.service, DeploymentRequest.from_stored(tick.before.request))
        environment = self.config.environment(tick.before.environment)
        health = service.health_checks or self.config.health_checks_for(tick.before.service)
        env = dict(environment.variables) if environment else {}
        env.update(service.env)
        env.update({"SAFESHIP_SERVICE": tick.before.service, "SAFESHIP_ENVIRONMENT": tick.before.environment})
        secrets = dict(self.secrets_for(tick.before.service, tick.before.environment)) if self.secrets_for else {}
        return InstanceSpec(
            service=tick.before.service,
            environment=tick.before.environment,
            version=version,
            index=index,
            command=tuple(service.command),
            env=env,
            secret_env=secrets,
            cpu=service.resources.cpu,
            memory_mb=int(service.resources.memory),
            liveness=_probe(health.liveness),
            readiness=_probe(health.readiness),
            grace_period=service.grace_period,
        )

    # ------------------------------------------------------------ steps

    async def scale(self, tick: Tick, step: ScaleStep) -> StepResult:
        version, replicas = step["version"], int(step["replicas"])

        async def drain(staying: Sequence[Instance]) -> None:
            # Drain first: the router stops sending new requests before the process is told to stop.
            keep = [Backend(i.id, i.host, i.port) for i in staying]
            await self.world.router.set_backends(tick.route, version, keep)

        def started(instance: Instance) -> None:
            tick.event("instance_started", f"started {version} instance {instance.index}", version=version)

        def stopped(instance: Instance) -> None:
            tick.event("instance_stopped", f"stopped {version} instance {instance.index}", version=version)

        if replicas == 0:
            await self.stop_test_traffic(tick, version)  # a load tester has nothing left to test
        await self.world.platform.scale(
            tick.before.service, tick.before.environment, version, replicas,
            lambda index: self.instance_spec(tick, version, index),
            drain=self.drain_seconds(), on_leaving=drain, on_started=started, on_stopped=stopped,
        )
        return DONE

    def drain_seconds(self) -> float:
        return 0.5

    async def wait_ready(self, tick: Tick, step: WaitReadyStep) -> StepResult:
        version, replicas = step["version"], int(step["replicas"])
        instances = await self.live_instances(tick, version)
        # The candidate's crashes fail it at once; a rollback waits out the version it returns to.
        rolling_back = tick.get("phase") == Phase.ROLLING_BACK.value
        failure = self.crash_failure(instances) if version == tick.before.version and not rolling_back else None
        if failure is not None:
            return StepResult(done=False, failure=failure)
        ready = sum(1 for i in instances if i.ready)
        if ready >= replicas:
            await self.sync_backends(tick)
            return DONE
        waited = tick.now - tick.get("step_started_at")
        if waited >= float(step["timeout"]):
            states = ", ".join(f"{i.version}-{i.index}: {i.state.value}" for i in instances) or "none running"
            return StepResult(
                done=False,
                failure=Failure(
                    "health_check_failure",
                    f"{version}: {ready} of {replicas} instances ready after {waited:.0f}s "
                    f"(readiness timeout {float(step['timeout']):.0f}s){_unready_because(instances)}",
                    {"ready": ready, "wanted": replicas, "instances": states},
                ),
            )
        return StepResult(done=False, wait=POLL_S)

    @staticmethod
    def crash_failure(instances: Sequence[Instance]) -> Failure | None:
        """A new version whose process dies is a HealthCheckFailure at once: waiting for its
        restart budget would only expose more users to it."""
        for instance in instances:
            if instance.restarts > 0 or instance.state in (InstanceState.RESTARTING, InstanceState.FAILED):
                return Failure(
                    "health_check_failure",
                    f"{instance.version} instance {instance.index} died: {instance.last_failure or 'exited'}",
                    {"instance": instance.id, "restarts": instance.restarts, "last_failure": instance.last_failure},
                )
        return None

    def unready_failure(self, tick: Tick, instances: Sequence[Instance]) -> Failure | None:
        timeout = next(
            (t.timeout for t in self.triggers(tick) if isinstance(t, HealthCheckFailureTrigger)), None
        )
        if timeout is None:
            return None
        since = tick.status.analysis.unready_since
        for instance in instances:
            if instance.ready:
                since.pop(instance.id, None)
                continue
            first = since.setdefault(instance.id, tick.now)
            if tick.now - first >= timeout:
                return Failure(
                    "health_check_failure",
                    f"{instance.version} instance {instance.index} not ready for {tick.now - first:.0f}s "
                    f"(health_check_failure timeout {timeout:.0f}s){_unready_because([instance])}",
                    {"instance": instance.id, "state": instance.state.value},
                )
        return None

    async def set_weights(self, tick: Tick, step: WeightsStep) -> StepResult:
        await self.sync_backends(tick)
        asked = {v: int(w) for v, w in step["weights"].items()}
        if not asked:
            # No version takes traffic: the rollback of a first deployment, with nothing earlier to
            # return to. A router takes splits that sum to 100 (a cluster's refuses any other), so
            # it is not asked; the step after this one stops the candidate's pods, draining them.
            if tick.status.weights:
                tick.status.weights = {}
                tick.event("weights", "traffic: no version takes it any more (nothing earlier to return to)",
                           weights={})
            return DONE
        await self.world.router.set_weights(tick.route, asked)
        # A router that can only come near the weights (replicas: pod ratios) says what it reached;
        # the analysis judges, and the steps pace, by that.
        reached = getattr(self.world.router, "weights_reached", None)
        shown = dict(reached(tick.route)) if reached is not None else {}
        split = shown if set(shown) == set(asked) and sum(shown.values()) == 100 else asked
        if tick.status.weights != split:
            tick.status.weights = split
            tick.event("weights", "traffic " + ", ".join(f"{v}={w}%" for v, w in split.items())
                       + (f" (asked {', '.join(f'{v}={w}%' for v, w in asked.items())})" if split != asked else ""),
                       weights=split)
        return DONE

    async def hold(self, tick: Tick, step: HoldStep) -> StepResult:
        # the route's own router's abilities where the world's router dispatches per environment
        abilities_for = getattr(self.world.router, "abilities_for", None)
        abilities = abilities_for(tick.route) if abilities_for is not None else self.world.router.abilities
        if not abilities.hold:
            # Degrade and say so: recreate accepts a gap; without a hold, requests in it fail.
            tick.event("hold_unsupported", "the router cannot hold new requests; requests in the recreate gap fail")
            return DONE
        await self.world.router.hold(tick.route, float(step["max_wait"]))
        tick.event("hold", f"router holds new requests for up to {float(step['max_wait']):.0f}s")
        return DONE

    async def pause(self, tick: Tick, step: PauseStep) -> StepResult:
        left = float(step["duration"]) - (tick.now - tick.get("step_started_at"))
        return StepResult(done=left <= 0, wait=max(0.0, left))

    async def promote(self, tick: Tick, step: PromoteStep) -> StepResult:
        """The decision: the candidate becomes the stable version and the others retire."""
        record = tick.before
        tick.set(decision="promote", decided_at=tick.now)
        tick.stable = StableVersion(record.service, record.environment, record.version, record.id,
                                    tick.now, None, True)
        tick.retire = Retirement(record.service, record.environment, record.version, tick.now, True)
        tick.event("promoted", f"{record.version} takes all traffic")
        # the load tester's work ends with the promotion, also when a promote-now skipped its stop
        await self.stop_test_traffic(tick, record.version)
        return DONE

    # ------------------------------------------------------------ load-tester traffic

    async def test_traffic(self, tick: Tick, step: TestTrafficStep) -> StepResult:
        """A load tester sends `rps` requests/s to `version` beside the users' weighted traffic (0
        stops it), through the router's `set_test_traffic` when it has one. A router without one
        cannot send it: the step only records that, and the analysis then sees no such requests."""
        version, rps = str(step["version"]), max(0.0, float(step["rps"]))
        setter = getattr(self.world.router, "set_test_traffic", None)
        if setter is None:
            if rps > 0:
                tick.event("test_traffic_unsupported", f"test traffic is only simulated: the router cannot send "
                           f"{rps:g} requests/s to {version}, so that version gets no load-tester requests",
                           version=version, rps=rps)
            return DONE
        await setter(tick.route, version, rps)
        message = (f"load tester sends {rps:g} requests/s to {version}" if rps > 0
                   else f"load tester stops sending requests to {version}")
        tick.event("test_traffic", message, version=version, rps=rps)
        return DONE

    async def incident_check(self, tick: Tick, step: IncidentCheckStep) -> StepResult:
        """Measure the restored version for `duration` seconds and ask the policy whether it is
        raised over its own record; if so, the rollback is labelled an incident (its reason,
        evidence, history and event say so)."""
        version, duration = step["version"], float(step["duration"])
        progress = tick.status.analysis
        counters = await self.world.traffic.counters(tick.route)
        if progress.marker == f"incident_wait:{version}":
            return await self._wait_incident_passed(tick, version, counters)
        marker = f"incident_check:{version}"
        if progress.marker != marker:
            progress.marker = marker
            progress.counters = _copies(counters)
            progress.last_look = tick.now
            return StepResult(done=False, wait=duration)
        waited = tick.now - _known(progress.last_look)
        if waited < duration:
            return StepResult(done=False, wait=duration - waited)
        counts = counters.get(version, TrafficCounters()).minus(progress.counters.get(version, TrafficCounters()))
        record = progress.history
        check = getattr(self.policy_for(tick.before.policy), "incident_over_record", None)
        raised = (check(counts, record, dispersion=progress.history_dispersion)
                  if callable(check) and record is not None else None)
        if raised is None:
            tick.event("incident_check", f"{version} is within its record after the rollback "
                       f"({counts.failed}/{counts.requests} failed): the release was at fault", version=version)
            return DONE
        sentence = (f"incident: {version} raised the same {raised} after the rollback "
                    f"({counts.failed}/{counts.requests} failed vs {record.failed}/{record.requests} in its record)"
                    if record is not None else f"incident: {version} raised the same {raised}")
        tick.event("incident", sentence, version=version, rollback_kind="incident")
        evidence = dict(tick.get("evidence") or {})
        tick.set(reason=f"{sentence}; rolled back on: {tick.get('reason')}",
                 evidence={**evidence, "rollback_kind": "incident", "incident": sentence})
        if not self.config.intelligent_deployment.analysis.retry_after_incident:
            return DONE
        progress.marker = f"incident_wait:{version}"
        progress.counters = _copies(counters)
        progress.last_look = tick.now
        return StepResult(done=False, wait=SETTLE_EVERY_S)

    async def _wait_incident_passed(self, tick: Tick, version: str, counters: Mapping[str, TrafficCounters]
                                    ) -> StepResult:
        """After an incident rollback with `analysis.retry_after_incident`: every SETTLE_EVERY_S,
        ask the policy whether the restored version's last seconds are back within its record;
        then the rollback ends and asks for the same release again (`retry_after_incident` in its
        evidence). Not back within RETRY_WAIT_S: it ends without a retry, and says so."""
        progress = tick.status.analysis
        waited = tick.now - _known(progress.last_look)
        if waited < SETTLE_EVERY_S:
            return StepResult(done=False, wait=SETTLE_EVERY_S - waited)
        recent = counters.get(version, TrafficCounters()).minus(progress.counters.get(version, TrafficCounters()))
        progress.counters = _copies(counters)
        progress.last_look = tick.now
        passed = getattr(self.policy_for(tick.before.policy), "incident_passed", None)
        record = progress.history
        since = tick.now - _known(tick.get("step_started_at"))  # this step began as traffic went back
        if callable(passed) and record is not None and passed(recent, record, dispersion=progress.history_dispersion):
            at = time.strftime("%H:%M:%S", time.gmtime(tick.now))
            sentence = (f"incident: {version} is back within its record ({recent.failed}/{recent.requests} failed "
                        f"in the last {SETTLE_EVERY_S:.0f}s), {since:.0f}s after the rollback: retrying "
                        f"{tick.before.version} at {at} UTC")
            tick.event("incident", sentence, version=version, retry=True)
            evidence = dict(tick.get("evidence") or {})
            tick.set(reason=f"{tick.get('reason')}; {sentence}", evidence={**evidence, "retry_after_incident": True})
            return DONE
        if since >= RETRY_WAIT_S:
            tick.event("incident", f"incident: {version} is still raised {since:.0f}s after the rollback: "
                       f"not retrying {tick.before.version}", version=version, retry=False)
            return DONE
        return StepResult(done=False, wait=SETTLE_EVERY_S)

    async def stop_test_traffic(self, tick: Tick, version: str) -> None:
        """Stop the load tester's requests to `version`, when this deployment's plan sends any."""
        setter = getattr(self.world.router, "set_test_traffic", None)
        if setter is None or not any(s.get("kind") == "test_traffic" for s in tick.before.plan):
            return
        await setter(tick.route, version, 0.0)

    # ------------------------------------------------------------ webhook gates

    def gates_of(self, tick: Tick) -> list[WebhookGateConfig]:
        service = self.config.services.get(tick.before.service)
        return list(service.webhooks) if service is not None else []

    def gate_body(self, tick: Tick, gate: WebhookGateConfig) -> dict[str, Any]:
        return webhooks.gate_body(tick.before, gate, phase=str(tick.get("phase")), step=int(tick.get("step_index")),
                                  weights=tick.status.weights)

    async def gate(self, tick: Tick, step: GateStep) -> StepResult:
        """Ask a webhook gate; a 2xx passes the step. A confirm gate that answers otherwise holds
        the deployment here and is asked again every `interval` (rollback gates are asked
        meanwhile); a pre-rollout gate is asked `1 + retries` times, `backoff` apart and doubling,
        and then fails the deployment with its last answer. One attempt per tick: a tick never
        waits out a backoff or an interval."""
        name, kind = str(step["gate"]), str(step["type"])
        marker = f"{tick.get('step_index')}:{name}"
        progress = tick.status.gate
        if progress is None or progress.marker != marker:
            progress = GateProgress(marker=marker, name=name, type=kind, started_at=tick.now)
            tick.status.gate = progress
        config = webhooks.find_gate(self.gates_of(tick), name)
        if config is None or config.type != kind:
            tick.status.gate = None
            tick.event("gate_passed", f"{kind} gate {name!r} is no longer in the config; passed without asking",
                       gate=name, type=kind, answer=None)
            return DONE
        if progress.held_since is not None:
            asked_back = await self.ask_rollback_gates(tick)
            if asked_back is not None:
                tick.status.gate = None
                return StepResult(done=False, failure=asked_back)
        if progress.next_at is not None and tick.now < progress.next_at:
            return StepResult(done=False, wait=self._gate_wait(tick, progress.next_at))
        answer = await webhooks.ask(config, self.gate_body(tick, config))
        progress.attempts += 1
        progress.last_asked_at = tick.now
        previous, progress.last_answer = progress.last_answer, answer.text
        evidence: dict[str, Any] = {"gate": name, "type": kind, "answer": answer.text, "status": answer.status,
                                    "attempts": progress.attempts}
        if answer.ok:
            held = (f" after holding the deployment for {tick.now - progress.held_since:.0f}s"
                    if progress.held_since is not None else "")
            tick.status.gate = None
            tick.event("gate_passed", f"{kind} gate {name!r} answered {answer.text}{held}", **evidence)
            return DONE
        if kind not in CONFIRM_TYPES:  # pre-rollout: retried, then it fails the deployment
            if progress.attempts > config.retries:
                tick.status.gate = None
                reason = (f"{kind} gate {name!r} failed: {answer.text} "
                          f"({progress.attempts} attempt{'s' if progress.attempts != 1 else ''})")
                tick.event("gate_failed", reason, **evidence)
                return StepResult(done=False, failure=Failure("webhook", reason, evidence))
            progress.next_at = tick.now + webhooks.backoff(config, progress.attempts)
            return StepResult(done=False, wait=self._gate_wait(tick, progress.next_at))
        if progress.held_since is None or answer.text != previous:
            if progress.held_since is None:
                progress.held_since = tick.now
            tick.event("gate_held", f"{kind} gate {name!r} answered {answer.text}: the deployment waits here; "
                       f"asking again every {config.interval:g}s", **evidence)
        progress.next_at = tick.now + config.interval
        return StepResult(done=False, wait=self._gate_wait(tick, progress.next_at))

    def _gate_wait(self, tick: Tick, next_at: float) -> float:
        """Seconds until the gate is asked again, or a rollback gate is due first."""
        due = [next_at]
        asked = tick.status.rollback_gates_asked
        for gate in self.gates_of(tick):
            if gate.type == "rollback":
                due.append(asked.get(gate.name, tick.now) + gate.interval)
        return max(0.0, min(due) - tick.now)

    async def ask_rollback_gates(self, tick: Tick) -> Failure | None:
        """Ask each rollback gate that is due (every `interval`, the first time at once); a 2xx
        from one is a failure that rolls the deployment back, naming the gate. Any other answer,
        or none, changes nothing."""
        asked = tick.status.rollback_gates_asked
        for gate in self.gates_of(tick):
            if gate.type != "rollback":
                continue
            last = asked.get(gate.name)
            if last is not None and tick.now - last < gate.interval:
                continue
            asked[gate.name] = tick.now
            answer = await webhooks.ask(gate, self.gate_body(tick, gate))
            if answer.ok:
                reason = f"rollback gate {gate.name!r} answered {answer.text}: roll back"
                evidence = {"gate": gate.name, "type": gate.type, "answer": answer.text, "status": answer.status}
                tick.event("gate_rollback", reason, **evidence)
                return Failure(ROLLBACK_GATE_TRIGGER, reason, evidence)
        return None

    # ------------------------------------------------------------ analysis

    def rollback_settings(self, tick: Tick) -> RollbackConfiguration:
        """The deployment's rollback settings: its request's rollback_config, else the service's."""
        return self.config.rollback_for(tick.before.service, DeploymentRequest.from_stored(tick.before.request))

    def triggers(self, tick: Tick) -> list[Any]:
        return list(self.rollback_settings(tick).triggers)

    async def analyze(self, tick: Tick, step: AnalyzeStep) -> StepResult:
        """Canary analysis: the policy judges the candidate, against the baseline with `compare`.
        With `confirm`, a failure of the candidate alone is checked side by side first."""
        asked_back = await self.ask_rollback_gates(tick)
        if asked_back is not None:
            return StepResult(done=False, failure=asked_back)
        policy: Policy = self.policy_for(tick.before.policy)
        own = step.get("interval")  # a model of another tool may look at its own pace in this step
        interval = float(own) if own is not None and float(own) > 0 else self._look_interval(policy)
        confirm = self._confirm_of(policy, step.get("confirm"))
        if confirm is not None and tick.status.analysis.confirming is not None:
            return await self._confirm(tick, policy, confirm, interval, step_passes=True)
        shortest = step.get("min_duration")  # set by a canary with adaptive: false
        result = await self._look(tick, policy, interval=interval,
                                  duration=float(step["duration"]), compare=bool(step.get("compare")),
                                  policy_step=int(step.get("policy_step", 0)), promoted=False,
                                  min_duration=None if shortest is None else float(shortest))
        return await self._maybe_confirm(tick, confirm, result)

    async def prove(self, tick: Tick, step: ProveStep) -> StepResult:
        """Before a switch, when the replaced version left no record to judge the candidate alone
        against (safeship's policy only): split the traffic and let the policy judge the two side
        by side for up to the step's `duration`. The step passes when the policy lets it; the counts of
        the split are then the control of the analysis after the switch. With a record, or under
        a model of another tool, nothing happens here."""
        policy: Policy = self.policy_for(tick.before.policy)
        if not uses_safeship_mechanisms(policy) or tick.status.analysis.history is not None:
            return DONE
        asked_back = await self.ask_rollback_gates(tick)
        if asked_back is not None:
            return StepResult(done=False, failure=asked_back)
        candidate, baseline, percent = tick.before.version, step["baseline"], int(step["percent"])
        split = {baseline: 100 - percent, candidate: percent}
        if not (tick.status.weights or {}).get(candidate):  # once: a router may reach a nearby split
            tick.event("proving", f"no record of {baseline} from before the deployment to judge {candidate} "
                       f"alone against: judging them side by side, {candidate}={percent}%, "
                       f"{baseline}={100 - percent}%, for {float(step['duration']):.0f}s before the switch",
                       version=baseline)
            await self.set_weights(tick, {"kind": "weights", "weights": split})
        duration = float(step["duration"])
        # the split lasts its duration, or less when the policy shows the candidate within the
        # declared tolerance sooner (early promotion)
        return await self._look(tick, policy, interval=self._look_interval(policy), duration=duration,
                                compare=True, policy_step=0, promoted=False)

    @staticmethod
    def _confirm_of(policy: Policy, confirm: ConfirmSplit | None) -> ConfirmSplit | None:
        """A step's confirmation split, for safeship's own policy only: a model of another tool
        never has its failure second-guessed by safeship's split, whatever a stored plan says."""
        return confirm if uses_safeship_mechanisms(policy) else None

    async def _maybe_confirm(self, tick: Tick, confirm: ConfirmSplit | None, result: StepResult) -> StepResult:
        """`result` of an analysis of the candidate alone, or the start of a side-by-side split
        when it failed and the step has `confirm`. The alarm's ledger (the policy state) is kept
        with the split: the split can confirm the alarm sooner, or show that its cause is shared,
        never clear it for lack of proof."""
        failure = result.failure
        progress = tick.status.analysis
        # Only the policy's verdict is looked at again: not what an instance itself shows (a
        # crash, a readiness timeout) nor a spent measurement-error budget.
        if (confirm is None or failure is None or failure.trigger == "health_check_failure"
                or progress.errors_in_a_row > 0):
            return result
        start = await self.world.traffic.counters(tick.route)
        progress.confirming = {"since": tick.now, "reason": failure.reason, "trigger": failure.trigger,
                               "start": {v: c.to_json() for v, c in start.items()},
                               "ledger": progress.policy_state, "alarm": dict(failure.evidence),
                               "incident_since": None, "settled_at": None,
                               "recent": {v: c.to_json() for v, c in start.items()}}
        # The split's looks begin with what the policy carries on from the ledger (its side-by-side
        # failure test), or afresh; the ledger itself waits for the split to be settled.
        starter = split_starter(self.policy_for(tick.before.policy))
        ledger = progress.policy_state
        progress.policy_state = starter(dict(ledger)) if starter is not None and ledger is not None else None
        candidate, percent = tick.before.version, int(confirm["percent"])
        tick.event("confirming", f"{failure.reason}; checking {confirm['baseline']} beside it: traffic "
                   f"{candidate}={percent}%, {confirm['baseline']}={100 - percent}% for "
                   f"{float(confirm['duration']):.0f}s", trigger=failure.trigger)
        await self.set_weights(tick, {"kind": "weights",
                                      "weights": {confirm["baseline"]: 100 - percent, candidate: percent}})
        return StepResult(done=False, wait=0.0)

    async def _confirm(self, tick: Tick, policy: Policy, confirm: ConfirmSplit, interval: float, *,
                       step_passes: bool) -> StepResult:
        """One look of a side-by-side split. The comparison with the replaced version serving
        beside the candidate may confirm the alarm at any look; once `duration` has run, the
        policy settles the alarm (`settle_split`): it stands (roll back), or the replaced version
        is raised too (an incident: hold the split, settling again every SETTLE_EVERY_S), or the
        incident has passed (the candidate takes its traffic again and the analysis resumes with
        the ledger the policy hands back)."""
        progress = tick.status.analysis
        confirming = progress.confirming
        assert confirming is not None
        duration = float(confirm["duration"])
        result = await self._look(tick, policy, interval=interval, duration=duration, compare=True, policy_step=0,
                                  promoted=False, min_duration=math.inf, since=confirming["since"],
                                  marker="confirm")
        if result.failure is not None:
            failure = result.failure
            evidence = {**failure.evidence, "confirmed_by_split": True, "first_failure": confirming["reason"]}
            return StepResult(done=False, failure=Failure(failure.trigger, f"{failure.reason} (side by side with "
                                                          f"{confirm['baseline']}, after: {confirming['reason']})",
                                                          evidence))
        settled = confirming.get("settled_at")
        due = confirming["since"] + duration if settled is None else float(settled) + SETTLE_EVERY_S
        if tick.now < due:
            # Before the split's time is up, the policy is asked at every look whether the
            # replaced version already shows an incident (one that may end before the split
            # does); only that answer is acted on early.
            if settled is not None or tick.now - confirming["since"] < EARLY_SETTLE_S:
                return StepResult(done=False, wait=min(interval, due - tick.now))
            outcome = await self._settle(tick, policy, confirm, early=True)
            if outcome.kind is not SplitKind.INCIDENT:
                return StepResult(done=False, wait=min(interval, due - tick.now))
        else:
            outcome = await self._settle(tick, policy, confirm)
        if outcome.kind is SplitKind.ROLLBACK:
            return StepResult(done=False, failure=Failure(
                confirming["trigger"], outcome.sentence,
                {**confirming.get("alarm", {}), "confirmed_by_split": True}))
        if outcome.kind is SplitKind.INCIDENT:
            if confirming.get("incident_since") is None:
                confirming["incident_since"] = tick.now - confirming["since"]
                tick.event("incident", outcome.sentence, version=confirm["baseline"])
            confirming["incident"] = outcome.sentence  # what the status shows while the split holds
            return StepResult(done=False, wait=min(interval, SETTLE_EVERY_S))
        candidate = tick.before.version
        tick.event("confirm_cleared", outcome.sentence)
        progress.confirming = None
        progress.policy_state = outcome.ledger
        progress.marker = None  # the next look starts its counts afresh, after the split
        await self.set_weights(tick, {"kind": "weights", "weights": {candidate: 100}})
        return StepResult(done=False, wait=0.0)

    async def _settle(self, tick: Tick, policy: Policy, confirm: ConfirmSplit, *, early: bool = False) -> SplitOutcome:
        """Ask the policy to settle the split's alarm on what the split showed so far (`early`:
        before the split's time is up, when only an incident is acted on)."""
        progress = tick.status.analysis
        confirming = progress.confirming
        assert confirming is not None
        now = await self.world.traffic.counters(tick.route)

        def since(marks: Mapping[str, Any], version: str) -> TrafficCounters:
            mark = marks.get(version)
            current = now.get(version, TrafficCounters())
            return current.minus(TrafficCounters.from_json(mark)) if mark else current

        old = confirm["baseline"]
        evidence = SplitEvidence(
            alarm=confirming.get("alarm") or {}, reason=confirming["reason"], baseline_version=old,
            candidate=since(confirming["start"], tick.before.version), baseline=since(confirming["start"], old),
            recent_baseline=since(confirming.get("recent") or confirming["start"], old),
            history=progress.history, history_dispersion=progress.history_dispersion,
            seconds=tick.now - confirming["since"],
            incident_since=confirming.get("incident_since"), early=early, split_state=progress.policy_state,
        )
        settle = split_settler(policy)
        if settle is None:
            return SplitOutcome(SplitKind.ROLLBACK, f"{confirming['reason']}: the alarm stands")
        outcome = settle(dict(confirming.get("ledger") or policy.start()), evidence)
        if not early or outcome.kind is SplitKind.INCIDENT:
            confirming["settled_at"] = tick.now
            confirming["recent"] = {v: c.to_json() for v, c in now.items()}
        return outcome

    async def monitor(self, tick: Tick, step: MonitorStep) -> StepResult:
        """The window after promotion: the policy still judges the candidate, alone, every `interval`
        (with `confirm`, a failure is checked side by side first)."""
        asked_back = await self.ask_rollback_gates(tick)
        if asked_back is not None:
            return StepResult(done=False, failure=asked_back)
        policy: Policy = self.policy_for(tick.before.policy)
        interval = self.monitor_interval(policy, step)
        confirm = self._confirm_of(policy, step.get("confirm"))
        if confirm is not None and tick.status.analysis.confirming is not None:
            return await self._confirm(tick, policy, confirm, min(interval, self._look_interval(policy)),
                                       step_passes=False)
        result = await self._look(tick, policy, interval=interval, duration=float(step["duration"]),
                                  compare=False, policy_step=0, promoted=True)
        if not result.done and result.failure is None:
            result = StepResult(done=False, wait=min(result.wait, POLL_S))  # instances are watched between looks
        return await self._maybe_confirm(tick, confirm, result)

    def monitor_interval(self, policy: Policy, step: Mapping[str, Any]) -> float:
        """Seconds between the looks of a monitoring window. safeship's policy looks as often
        there as in any other phase (every look is valid): an alarm then fires while an incident
        lasts, not up to a window's interval after it, so the split that follows still sees the
        incident on the old version. Other tools keep the window's documented interval."""
        interval = float(step["interval"])
        return min(interval, self._look_interval(policy)) if uses_safeship_mechanisms(policy) else interval

    def _look_interval(self, policy: Policy) -> float:
        return policy.interval(self.config.intelligent_deployment.analysis)

    async def _look(self, tick: Tick, policy: Policy, *, interval: float, duration: float, compare: bool,
                    policy_step: int, promoted: bool, min_duration: float | None = None,
                    since: float | None = None, marker: str = "") -> StepResult:
        """One look when one is due: the first look of a step only takes the counters; later ones
        sample what happened since the last look and let the policy decide. A measurement that
        fails with a TemporaryError is a Verdict.ERROR, within the analysis error budget.
        `since`: when the part of the step being judged began (default: the step's start);
        `marker` tells apart judgements within one step (a confirmation split)."""
        progress = tick.status.analysis
        marker = f"{tick.get('step_index')}:{tick.get('phase')}{':' + marker if marker else ''}"
        try:
            counters = await self.world.traffic.counters(tick.route)
        except TemporaryError as exc:
            return self.judge(tick, Decision(Verdict.ERROR, f"measurement failed: {exc}"), interval)
        if progress.marker != marker:
            progress.marker = marker
            progress.last_look = tick.now
            # a version the source has lost the series of keeps its last counts (see `sample`)
            progress.counters = _copies({**progress.counters, **counters})
            if progress.started_at is None:
                progress.started_at = tick.now
            if progress.policy_state is None:
                progress.policy_state = policy.start()
            return StepResult(done=False, wait=interval)
        last_look = _known(progress.last_look)
        candidate = tick.before.version
        if tick.now - last_look < interval - 1e-9:
            # Between looks at the traffic (every 30 s in a monitoring window), the candidate's
            # instances are still watched every POLL_S: a crash does not wait for the next look.
            failure = self.crash_failure(await self.live_instances(tick, candidate))
            if failure is not None:
                return StepResult(done=False, failure=failure)
            return StepResult(done=False, wait=min(POLL_S, interval - (tick.now - last_look)))
        await self.sync_backends(tick)
        instances = await self.live_instances(tick, candidate)
        failure = self.crash_failure(instances) or self.unready_failure(tick, instances)
        if failure is not None:
            return StepResult(done=False, failure=failure)
        try:
            sample = await self.sample(tick, counters, compare=compare)
        except TemporaryError as exc:
            return self.judge(tick, Decision(Verdict.ERROR, f"measurement failed: {exc}"), interval)
        ctx = StepContext(
            step_index=policy_step,
            time_in_step=tick.now - (tick.get("step_started_at") if since is None else since),
            time_in_analysis=tick.now - _known(progress.started_at),
            compare=compare,
            triggers=[t for t in self.triggers(tick) if not isinstance(t, HealthCheckFailureTrigger)],
            analysis=self.config.intelligent_deployment.analysis,
            step_duration=duration,
            min_step_duration=(self.config.intelligent_deployment.strategies.canary.min_step_duration
                               if min_duration is None else min_duration),
            promoted=promoted,
            # the record before the deployment is safeship's own control; other tools have none
            history=progress.history if uses_safeship_mechanisms(policy) else None,
            history_span_s=progress.history_span_s if uses_safeship_mechanisms(policy) else None,
            history_dispersion=progress.history_dispersion if uses_safeship_mechanisms(policy) else None,
            strategy=tick.before.strategy,
            planned_analysis_s=sum(float(step.get("duration", 0.0))
                                   for step in tick.before.plan if step.get("kind") == "analyze"),
            candidate_version=candidate,
            baseline_version=tick.before.from_version or "",
        )
        state = progress.policy_state if progress.policy_state is not None else policy.start()
        state, decision = policy.observe(state, sample, ctx)
        progress.policy_state = state
        progress.last_look = tick.now
        progress.counters = _copies(counters)
        progress.last_sample = _summary(sample)
        tick.event("look", _look_line(progress.last_sample, sample.candidate_weight, decision),
                   candidate_weight=sample.candidate_weight, **progress.last_sample,
                   verdict=decision.verdict.value, reason=decision.reason, evidence=dict(decision.evidence))
        return self.judge(tick, decision, interval)

    def judge(self, tick: Tick, decision: Decision, interval: float) -> StepResult:
        limit = self.config.intelligent_deployment.analysis.error_limit
        progress = tick.status.analysis
        if decision.verdict is Verdict.ERROR:
            progress.errors_in_a_row += 1
            errors = progress.errors_in_a_row
            tick.event("analysis_error", decision.reason or "measurement failed", count=errors)
            if errors >= limit:
                return StepResult(
                    done=False,
                    failure=Failure("analysis", f"{errors} measurement errors in a row: {decision.reason}", {}),
                )
            return StepResult(done=False, wait=interval)
        progress.errors_in_a_row = 0
        if decision.verdict is Verdict.FAILED:
            trigger = str(decision.evidence.get("trigger", "analysis"))
            return StepResult(done=False, failure=Failure(trigger, decision.reason, dict(decision.evidence)))
        if decision.verdict in (Verdict.ADVANCE, Verdict.SUCCESSFUL):
            tick.status.last_safe_weights = dict(tick.status.weights or {})
            tick.event("analysis_passed", decision.reason or "analysis passed", **dict(decision.evidence))
            return DONE
        return StepResult(done=False, wait=interval)

    async def sample(self, tick: Tick, counters: Mapping[str, TrafficCounters], *, compare: bool) -> TickSample:
        progress = tick.status.analysis
        before = progress.counters
        # The candidate (it serves while it is judged) counted at the last look and reported no
        # more: the source lost its series (a Prometheus started again without its data, a scrape
        # that fails), not a version that served nothing. Such a look measured nothing: a
        # measurement error, and the last counts stay the ones the next look is differenced from.
        candidate = tick.before.version
        if before.get(candidate, TrafficCounters()).requests > 0 and candidate not in counters:
            raise TemporaryError(f"the traffic source no longer reports {candidate}, counted at the last look: "
                                 "this look measured nothing")

        def delta(version: str | None) -> TrafficCounters:
            if version is None or version not in counters:
                return TrafficCounters()
            return counters[version].minus(before.get(version, TrafficCounters()))

        gauges: Mapping[str, Mapping[str, float]] = {}
        if self.world.gauges is not None:
            gauges = await self.world.gauges(tick.route)
        baseline = tick.before.from_version
        weights = tick.status.weights or {}
        return TickSample(
            t=tick.now - _known(progress.started_at),
            dt=tick.now - _known(progress.last_look),
            baseline=delta(baseline) if compare else TrafficCounters(),
            candidate=delta(tick.before.version),
            candidate_weight=int(weights.get(tick.before.version, 0)),
            baseline_gauges=dict(gauges.get(baseline or "", {})) if compare else {},
            candidate_gauges=dict(gauges.get(tick.before.version, {})),
        )


def _copies(counters: Mapping[str, TrafficCounters]) -> dict[str, TrafficCounters]:
    """The counters as they are now, whatever the router does with its own objects later."""
    return {version: c.plus(TrafficCounters()) for version, c in counters.items()}


def _known(at: float | None) -> float:
    """A time the analysis set at its first look, which always comes before any reader."""
    if at is None:
        raise ValueError("the analysis has not looked yet")
    return at


def _look_line(summary: SampleSummary, weight: int, decision: Decision) -> str:
    """One look as a line of the event list: each version's failures and p99, and the verdict."""
    def one(name: str, c: CountSummary) -> str:
        p99 = "-" if c["p99_ms"] is None else f"{c['p99_ms']:g} ms"
        return f"{name} {c['failed']}/{c['requests']} failed, p99 {p99}"

    return (f"look at {weight}%: {one('candidate', summary['candidate'])}; {one('baseline', summary['baseline'])}"
            f" -> {decision.verdict.value}{': ' + decision.reason if decision.reason else ''}")


def _summary(sample: TickSample) -> SampleSummary:
    def one(c: TrafficCounters) -> CountSummary:
        return {
            "requests": c.requests,
            "failed": c.failed,
            "error_rate": round(c.error_rate, 5) if c.requests else None,
            "p99_ms": round(c.quantile_ms(0.99), 1) if c.requests else None,
        }

    return {"baseline": one(sample.baseline), "candidate": one(sample.candidate), "dt": sample.dt}


def _unready_because(instances: Sequence[Instance]) -> str:
    """'; v1.5.0-0: readiness probe GET /health/ready (timeout 1s): timed out after 1s': why the
    first instance that is not ready is not, where its platform says."""
    for instance in instances:
        if not instance.ready and instance.unready_because:
            return f"; {instance.version}-{instance.index}: {instance.unready_because}"
    return ""
