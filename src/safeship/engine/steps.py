"""One executor per plan step kind. Each converges the world towards its step and says whether the
step is done, how long to wait before looking again, or what failed (with the evidence)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safeship.analysis.base import Decision, Policy, StepContext, TickSample, Verdict
from safeship.config.models import (
    HealthCheckFailureTrigger,
    SafeshipConfig,
)
from safeship.engine.context import Failure, Tick, World
from safeship.platforms.base import Instance, InstanceSpec, InstanceState, ProbeSpec
from safeship.routing.base import Backend, TrafficCounters

POLL_S = 1.0  # how often waiting steps look again


@dataclass(frozen=True)
class StepResult:
    done: bool
    wait: float = 0.0
    failure: Failure | None = None


DONE = StepResult(done=True)


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
    def __init__(
        self,
        config: SafeshipConfig,
        world: World,
        policy_for: Any,
        secrets_for: Any = None,
    ) -> None:
        self.config = config
        self.world = world
        self.policy_for = policy_for  # name -> Policy
        self.secrets_for = secrets_for  # (service, environment) -> {name: value}

    # ------------------------------------------------------------ instances and backends

    async def live_instances(self, tick: Tick, version: str) -> list[Instance]:
        every = await self.world.platform.instances(tick.before.service, tick.before.environment)
        return [i for i in every if i.version == version and i.state is not InstanceState.STOPPED]

    async def sync_backends(self, tick: Tick) -> dict[str, int]:
        """Tell the router which instances of each version are ready; returns ready counts."""
        every = await self.world.platform.instances(tick.before.service, tick.before.environment)
        by_version: dict[str, list[Backend]] = {}
        for instance in every:
            listed = by_version.setdefault(instance.version, [])
            if instance.ready:
                listed.append(Backend(instance.id, instance.host, instance.port))
        for version in tick.status.get("versions_seen", []):
            by_version.setdefault(version, [])
        for version, backends in by_version.items():
            await self.world.router.set_backends(tick.route, version, backends)
        tick.status["versions_seen"] = sorted(set(tick.status.get("versions_seen", [])) | set(by_version))
        return {v: len(b) for v, b in by_version.items()}

    def instance_spec(self, tick: Tick, version: str, index: int) -> InstanceSpec:
        service = self.config.services[tick.before.service]
        environment = self.config.environment(tick.before.environment)
        health = self.config.health_checks_for(tick.before.service)
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

    async def scale(self, tick: Tick, step: Mapping[str, Any]) -> StepResult:
        version, replicas = step["version"], int(step["replicas"])
        running = await self.live_instances(tick, version)
        used = {i.index for i in running}
        for index in range(replicas):
            if index not in used:
                await self.world.platform.start(self.instance_spec(tick, version, index))
                tick.event("instance_started", f"started {version} instance {index}", version=version)
        leaving = [i for i in running if i.index >= replicas]
        if leaving:
            # Drain first: the router stops sending new requests before the process is told to stop.
            keep = [Backend(i.id, i.host, i.port) for i in running if i.index < replicas and i.ready]
            await self.world.router.set_backends(tick.route, version, keep)
            for instance in leaving:
                await self.world.platform.stop(instance, drain=self.drain_seconds())
                tick.event("instance_stopped", f"stopped {version} instance {instance.index}", version=version)
        return DONE

    def drain_seconds(self) -> float:
        return 0.5

    async def wait_ready(self, tick: Tick, step: Mapping[str, Any], *, candidate: str | None) -> StepResult:
        version, replicas = step["version"], int(step["replicas"])
        instances = await self.live_instances(tick, version)
        failure = self.crash_failure(instances) if version == candidate else None
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
                    f"(readiness timeout {float(step['timeout']):.0f}s)",
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
        since = tick.status["unready_since"] = dict(tick.status.get("unready_since", {}))
        for instance in instances:
            if instance.ready:
                since.pop(instance.id, None)
                continue
            first = since.setdefault(instance.id, tick.now)
            if tick.now - first >= timeout:
                return Failure(
                    "health_check_failure",
                    f"{instance.version} instance {instance.index} not ready for {tick.now - first:.0f}s "
                    f"(health_check_failure timeout {timeout:.0f}s)",
                    {"instance": instance.id, "state": instance.state.value},
                )
        return None

    async def set_weights(self, tick: Tick, step: Mapping[str, Any]) -> StepResult:
        await self.sync_backends(tick)
        split = {v: int(w) for v, w in step["weights"].items()}
        await self.world.router.set_weights(tick.route, split)
        if tick.status.get("weights") != split:
            tick.status["weights"] = split
            tick.event("weights", "traffic " + ", ".join(f"{v}={w}%" for v, w in split.items()), weights=split)
        return DONE

    async def hold(self, tick: Tick, step: Mapping[str, Any]) -> StepResult:
        await self.world.router.hold(tick.route, float(step["max_wait"]))
        tick.event("hold", f"router holds new requests for up to {float(step['max_wait']):.0f}s")
        return DONE

    # ------------------------------------------------------------ analysis

    def triggers(self, tick: Tick) -> list[Any]:
        return list(self.config.rollback_for(tick.before.service).triggers)

    async def analyze(self, tick: Tick, step: Mapping[str, Any], *, monitor: bool = False) -> StepResult:
        policy: Policy = self.policy_for(tick.before.policy)
        analysis = self.config.intelligent_deployment.analysis
        interval = float(step["interval"]) if monitor else policy.interval(analysis)
        marker = f"{tick.get('step_index')}:{tick.get('phase')}"
        counters = await self.world.router.counters(tick.route)
        if tick.status.get("look_marker") != marker:
            tick.status["look_marker"] = marker
            tick.status["last_look"] = tick.now
            tick.status["snap"] = {v: c.to_json() for v, c in counters.items()}
            tick.status.setdefault("analysis_started_at", tick.now)
            if "policy_state" not in tick.status:
                tick.status["policy_state"] = policy.start()
            return StepResult(done=False, wait=interval)
        if tick.now - float(tick.status["last_look"]) < interval - 1e-9:
            return StepResult(done=False, wait=interval - (tick.now - float(tick.status["last_look"])))
        candidate = tick.before.version
        await self.sync_backends(tick)
        instances = await self.live_instances(tick, candidate)
        failure = self.crash_failure(instances) or self.unready_failure(tick, instances)
        if failure is not None:
            return StepResult(done=False, failure=failure)
        sample = await self.sample(tick, counters, compare=bool(step.get("compare")) and not monitor)
        ctx = StepContext(
            step_index=int(step.get("policy_step", 0)),
            time_in_step=tick.now - tick.get("step_started_at"),
            time_in_analysis=tick.now - float(tick.status["analysis_started_at"]),
            compare=bool(step.get("compare")) and not monitor,
            triggers=[t for t in self.triggers(tick) if not isinstance(t, HealthCheckFailureTrigger)],
            analysis=analysis,
            step_duration=float(step["duration"]),
            min_step_duration=self.config.intelligent_deployment.strategies.canary.min_step_duration,
        )
        state, decision = policy.observe(tick.status["policy_state"], sample, ctx)
        tick.status["policy_state"] = state
        tick.status["last_look"] = tick.now
        tick.status["snap"] = {v: c.to_json() for v, c in counters.items()}
        tick.status["last_sample"] = _summary(sample)
        return self.judge(tick, decision, interval)

    def judge(self, tick: Tick, decision: Decision, interval: float) -> StepResult:
        limit = self.config.intelligent_deployment.analysis.error_limit
        if decision.verdict is Verdict.ERROR:
            errors = int(tick.status.get("errors_in_a_row", 0)) + 1
            tick.status["errors_in_a_row"] = errors
            tick.event("analysis_error", decision.reason or "measurement failed", count=errors)
            if errors >= limit:
                return StepResult(
                    done=False,
                    failure=Failure("analysis", f"{errors} measurement errors in a row: {decision.reason}", {}),
                )
            return StepResult(done=False, wait=interval)
        tick.status["errors_in_a_row"] = 0
        if decision.verdict is Verdict.FAILED:
            trigger = str(decision.evidence.get("trigger", "analysis"))
            return StepResult(done=False, failure=Failure(trigger, decision.reason, dict(decision.evidence)))
        if decision.verdict in (Verdict.ADVANCE, Verdict.SUCCESSFUL):
            tick.status["last_safe_weights"] = tick.status.get("weights", {})
            tick.event("analysis_passed", decision.reason or "analysis passed", **dict(decision.evidence))
            return DONE
        return StepResult(done=False, wait=interval)

    async def sample(self, tick: Tick, counters: Mapping[str, TrafficCounters], *, compare: bool) -> TickSample:
        before = {v: TrafficCounters.from_json(c) for v, c in tick.status.get("snap", {}).items()}

        def delta(version: str | None) -> TrafficCounters:
            if version is None or version not in counters:
                return TrafficCounters()
            return counters[version].minus(before.get(version, TrafficCounters()))

        gauges: Mapping[str, Mapping[str, float]] = {}
        if self.world.gauges is not None:
            gauges = await self.world.gauges(tick.route)
        baseline = tick.before.from_version
        weights = tick.status.get("weights", {})
        return TickSample(
            t=tick.now - float(tick.status["analysis_started_at"]),
            dt=tick.now - float(tick.status["last_look"]),
            baseline=delta(baseline) if compare else TrafficCounters(),
            candidate=delta(tick.before.version),
            candidate_weight=int(weights.get(tick.before.version, 0)),
            baseline_gauges=dict(gauges.get(baseline or "", {})) if compare else {},
            candidate_gauges=dict(gauges.get(tick.before.version, {})),
        )


def _summary(sample: TickSample) -> dict[str, Any]:
    def one(c: TrafficCounters) -> dict[str, Any]:
        return {
            "requests": c.requests,
            "failed": c.failed,
            "error_rate": round(c.error_rate, 5) if c.requests else None,
            "p99_ms": round(c.quantile_ms(0.99), 1) if c.requests else None,
        }

    return {"baseline": one(sample.baseline), "candidate": one(sample.candidate), "dt": sample.dt}
