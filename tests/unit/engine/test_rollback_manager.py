"""The rollback manager: stable versions, the monitoring window, attempts and timeouts, notifications."""

from __future__ import annotations

from harness import drive, run, scenario
from policies import StepPolicy

from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build


def _config(**rollback: object) -> SafeshipConfig:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 20
    config.intelligent_deployment.rollback.monitoring.duration = 60
    config.intelligent_deployment.rollback.monitoring.interval = 10
    for key, value in rollback.items():
        setattr(config.intelligent_deployment.rollback, key, value)
    return config


async def test_a_promoted_release_is_stable_only_after_stable_after() -> None:
    seen = await run(scenario(), DeploymentStrategy.CANARY, config=_config(stable_after=600))
    engine, sim = seen.sim.engine, seen.sim
    assert seen.record.phase == "succeeded"
    assert sim.store.current_version(SERVICE, ENVIRONMENT) == CANDIDATE
    assert engine.is_stable(SERVICE, ENVIRONMENT, "baseline")  # served for a day before
    assert not engine.is_stable(SERVICE, ENVIRONMENT, CANDIDATE)
    assert engine.previous_stable_version(SERVICE, ENVIRONMENT, exclude="other") == "baseline"
    sim.clock.advance(600)
    assert engine.is_stable(SERVICE, ENVIRONMENT, CANDIDATE)
    assert engine.previous_stable_version(SERVICE, ENVIRONMENT, exclude="other") == CANDIDATE


async def test_a_failure_in_the_monitoring_window_rolls_back_after_promotion() -> None:
    # Errors start 125 s after the candidate's first request: after the canary (5 steps x 20 s) promoted it.
    seen = await run(scenario(error_rate=0.3, onset_s=125), DeploymentStrategy.CANARY, config=_config())
    assert seen.phases[-3:] == ["monitoring", "rolling_back", "rolled_back"]
    assert seen.weights[-1] == {"baseline": 100}
    [row] = seen.sim.store.rollbacks(deployment_id=seen.record.id)
    assert row.success and row.to_version == "baseline"
    assert seen.sim.store.current_version(SERVICE, ENVIRONMENT) == "baseline"
    kinds = [n.kind for n in seen.sim.sink.received]
    assert kinds[-2:] == ["rollback_started", "rolled_back"] and "promoted" in kinds


async def test_rollback_obeys_max_attempts_and_timeout() -> None:
    config = _config(max_rollback_attempts=2, rollback_timeout=30)
    config.intelligent_deployment.strategies.blue_green.scale_down_delay = 0
    sim = await build(scenario(error_rate=0.3, onset_s=100), policy_for=lambda _n: StepPolicy(), config=config)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.BLUE_GREEN), policy="step")
    sim.world.never_ready.add("baseline")  # the old colour is gone and will not come back
    seen = await drive(sim, record.id)
    assert seen.record.phase == "failed"
    assert "rollback failed after 2 attempts" in (seen.record.reason or "") or any(
        "rollback failed after 2 attempts" in e.message for e in sim.store.events(record.id))
    [row] = sim.store.rollbacks(deployment_id=record.id)
    assert row.success is False and row.duration_s is not None and row.duration_s >= 2 * 30
    assert [n.kind for n in sim.sink.received][-1] == "failed"
