"""Every accepted config and request field acts, or is refused: one test per field, asserting on
plans, weights, instance specs, phases and errors."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from harness import drive, scenario

from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.config.models import AnalysisConfig, DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.context import Tick
from safeship.engine.policies import policy_for
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.errors import InputError
from safeship.strategies import STRATEGIES, PlanInput


def _request(strategy: DeploymentStrategy, **fields: Any) -> DeploymentRequest:
    return DeploymentRequest.model_validate({"service_name": SERVICE, "version": CANDIDATE,
                                             "environment": ENVIRONMENT, "deployment_strategy": strategy,
                                             **fields})


def _plan(strategy: DeploymentStrategy, config: SafeshipConfig) -> list[Any]:
    given = PlanInput(service=SERVICE, candidate=CANDIDATE, baseline="baseline", replicas=2,
                      settings=config.intelligent_deployment, policy_weights=[5, 25, 100], readiness_timeout=120.0)
    return list(STRATEGIES[strategy].plan(given))


# ---------------------------------------------------------------- canary.adaptive


def test_canary_adaptive_false_holds_every_step_for_its_full_duration_in_the_plan() -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 90
    adaptive = [s for s in _plan(DeploymentStrategy.CANARY, config) if s["kind"] == "analyze"]
    assert adaptive and all("min_duration" not in s for s in adaptive)  # the default plan is unchanged
    config.intelligent_deployment.strategies.canary.adaptive = False
    fixed = [s for s in _plan(DeploymentStrategy.CANARY, config) if s["kind"] == "analyze"]
    assert [s["min_duration"] for s in fixed] == [90.0, 90.0]


def _busy(**candidate: Any) -> Scenario:
    return Scenario.model_validate({
        "name": "busy", "seed": 1, "duration_s": 3600, "traffic": {"rps": 2000},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 180}},
        "candidate": candidate, "expect": "promote",
    })


async def _canary_step_lengths(adaptive: bool) -> list[float]:
    config = SafeshipConfig()
    canary = config.intelligent_deployment.strategies.canary
    canary.traffic_percentages, canary.step_duration, canary.min_step_duration = [50, 100], 120, 10
    canary.adaptive = adaptive
    config.intelligent_deployment.analysis.ramp_time = 1
    config.intelligent_deployment.rollback.monitoring.duration = 10
    sim = await build(_busy(), policy_for=policy_for, config=config)
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY), policy="safeship")
    seen = await drive(sim, record.id)
    assert seen.record.phase == "succeeded"
    changes = [t for t, _, w in sim.router.weight_log if w.get(CANDIDATE)]
    return [later - earlier for earlier, later in itertools.pairwise(changes)]


async def test_canary_adaptive_advances_on_evidence_and_non_adaptive_waits_the_step_duration() -> None:
    early = await _canary_step_lengths(adaptive=True)
    assert early[0] < 120  # the 50% step ended as soon as the evidence sufficed
    full = await _canary_step_lengths(adaptive=False)
    assert full[0] >= 120  # the 50% step lasted its whole step_duration


# ---------------------------------------------------------------- blue_green.traffic_switch_timeout


def test_blue_green_confirms_the_switch_within_traffic_switch_timeout() -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.blue_green.traffic_switch_timeout = 45
    plan = _plan(DeploymentStrategy.BLUE_GREEN, config)
    switch = next(i for i, s in enumerate(plan) if s["kind"] == "weights")
    assert plan[switch]["weights"] == {CANDIDATE: 100}
    confirm = plan[switch + 1]
    assert confirm == {"kind": "wait_ready", "version": CANDIDATE, "replicas": 2, "timeout": 45.0}
    # readiness before the switch (and before the side-by-side proof that precedes it when there
    # is no record) stays bounded by health_check_timeout
    ready = [s for s in plan[:switch] if s["kind"] == "wait_ready"][-1]
    assert ready["timeout"] == config.intelligent_deployment.strategies.blue_green.health_check_timeout
    assert plan[switch - 1]["kind"] == "prove"


# ---------------------------------------------------------------- DeploymentRequest.rollback_config


async def test_request_rollback_config_replaces_the_services_rollback_settings() -> None:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 30
    sim = await build(scenario(error_rate=0.5), policy_for=policy_for, config=config)
    own = {"auto_rollback": False, "monitoring": {"duration": "7m", "interval": "20s"}}
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY, rollback_config=own), policy="safeship")
    monitor = next(s for s in record.plan if s["kind"] == "monitor")
    assert (monitor["duration"], monitor["interval"]) == (420.0, 20.0)
    seen = await drive(sim, record.id)
    # the config says auto_rollback: true; this request said false, so the release stops, not rolls back
    assert seen.record.phase == "failed"
    assert "Auto rollback is off" in (seen.record.reason or "")


async def test_without_rollback_config_the_config_applies() -> None:
    sim = await build(scenario(error_rate=0.5), policy_for=policy_for, config=SafeshipConfig())
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY), policy="safeship")
    assert (await drive(sim, record.id)).record.phase == "rolled_back"


# ---------------------------------------------------------------- DeploymentRequest.configuration


async def _sim() -> Simulation:
    return await build(scenario(), policy_for=policy_for, config=SafeshipConfig())


async def test_request_configuration_shapes_this_deployments_instances() -> None:
    sim = await _sim()
    service = sim.engine.config.services[SERVICE]
    service.env = {"SHARED": "service", "KEEP": "yes"}
    configuration = {
        "resources": {"cpu": "500m"},
        "health_checks": {"readiness": {"path": "/ready-now", "interval": "2s"}},
        "environment_variables": {"SHARED": "request", "FEATURE": "on"},
    }
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY, configuration=configuration), policy="safeship")
    spec = sim.engine.steps.instance_spec(Tick(sim.store.get_deployment(record.id), sim.clock.now()), CANDIDATE, 0)
    assert spec.cpu == 0.5 and spec.memory_mb == int(service.resources.memory)  # memory stays the service's
    assert spec.readiness.path == "/ready-now" and spec.readiness.interval == 2.0
    assert spec.readiness.timeout == 30.0 and spec.liveness.path == "/health/live"  # the rest stays
    assert spec.env["SHARED"] == "request" and spec.env["FEATURE"] == "on" and spec.env["KEEP"] == "yes"


async def test_request_memory_survives_the_stored_request() -> None:
    sim = await _sim()
    configuration = {"resources": {"memory": "300Mi"}}
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY, configuration=configuration), policy="safeship")
    spec = sim.engine.steps.instance_spec(Tick(sim.store.get_deployment(record.id), sim.clock.now()), CANDIDATE, 0)
    assert spec.memory_mb == 300 and spec.cpu == sim.engine.config.services[SERVICE].resources.cpu


async def test_without_configuration_instances_follow_the_service() -> None:
    sim = await _sim()
    record = sim.engine.submit(_request(DeploymentStrategy.CANARY, configuration={"replicas": 2}), policy="safeship")
    spec = sim.engine.steps.instance_spec(Tick(sim.store.get_deployment(record.id), sim.clock.now()), CANDIDATE, 0)
    service = sim.engine.config.services[SERVICE]
    assert (spec.cpu, spec.memory_mb) == (service.resources.cpu, int(service.resources.memory))
    assert spec.readiness.path == "/health/ready"


async def test_request_secrets_are_refused_naming_the_field() -> None:
    sim = await _sim()
    with pytest.raises(InputError) as refused:
        sim.engine.submit(_request(DeploymentStrategy.CANARY, configuration={"secrets": ["DB_PASSWORD"]}))
    assert refused.value.exit_code == 2
    assert str(refused.value) == (f"configuration.secrets: per-deployment secrets are not supported; "
                                  f"set them under services.{SERVICE}.secrets in safeship.yaml")
    assert sim.store.list_deployments(service=SERVICE) == []  # nothing recorded


async def test_request_environment_variable_names_are_checked() -> None:
    sim = await _sim()
    with pytest.raises(InputError, match=r"^configuration\.environment_variables: "):
        sim.engine.submit(_request(DeploymentStrategy.CANARY, configuration={"environment_variables": {"1X": "y"}}))


# ---------------------------------------------------------------- analysis.interval


def test_analysis_interval_is_the_longest_time_between_safeships_looks() -> None:
    policy = SafeshipPolicy()
    assert policy.interval(AnalysisConfig()) == 1.0  # default 5 s: still every second (gross failure < 15 s)
    assert policy.interval(AnalysisConfig(interval=0.25)) == 0.25
    assert policy.interval(AnalysisConfig(interval=30)) == 1.0
