"""The step registry and the errors that drive behaviour: a plug-in's TemporaryError is looked at
again after its delay and counted, a PermanentError fails the step and rolls back, a failed
measurement is an analysis error within the budget, and a driver asks the engine how long to wait
after a tick that raised."""

from __future__ import annotations

from typing import Any

import pytest
from harness import drive, scenario
from policies import StepPolicy

from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.engine.context import Tick
from safeship.engine.engine import ERRORS_BEFORE_ROLLBACK, MAX_RETRY_DELAY_S
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.engine.steps import DONE, StepResult
from safeship.errors import PermanentError, TemporaryError
from safeship.platforms.base import InstanceSpec

GOOD: dict[str, Any] = {"error_rate": 0.005}


async def _sim() -> Simulation:
    return await build(scenario(**GOOD), policy_for=lambda _n: StepPolicy())


def _submit(sim: Simulation, strategy: DeploymentStrategy = DeploymentStrategy.CANARY) -> str:
    request = DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                deployment_strategy=strategy)
    return sim.engine.submit(request, policy="step").id


def _kinds(sim: Simulation, deployment_id: str) -> list[str]:
    return [e.kind for e in sim.store.events(deployment_id)]


def _failing_start(sim: Simulation, error: Exception, times: int) -> None:
    """The candidate's instances fail to start `times` times with `error` (the baseline's start)."""
    real = sim.platform.start
    left = [times]

    async def start(spec: InstanceSpec) -> Any:
        if spec.version == CANDIDATE and left[0] > 0:
            left[0] -= 1
            raise error
        return await real(spec)

    sim.platform.start = start  # type: ignore[method-assign]


async def test_a_temporary_error_is_looked_at_again_after_its_delay() -> None:
    sim = await _sim()
    _failing_start(sim, TemporaryError("the platform is busy", delay=7.0), times=2)
    deployment_id = _submit(sim)
    waits = []
    for _ in range(4):  # pending, preparing, then the scale step twice
        waits.append(await sim.engine.advance(deployment_id))
    assert waits[2:] == [7.0, 7.0]
    record = sim.store.get_deployment(deployment_id)
    assert record.phase == "progressing" and record.step_index == 0
    assert record.status["errors_in_a_row"] == 2
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded", seen.record.reason
    assert _kinds(sim, deployment_id).count("temporary_error") == 2


async def test_temporary_errors_up_to_the_error_limit_roll_back() -> None:
    sim = await _sim()
    limit = sim.engine.config.intelligent_deployment.analysis.error_limit
    _failing_start(sim, TemporaryError("the platform is busy", delay=1.0), times=1000)
    seen = await drive(sim, _submit(sim))
    assert seen.record.phase == "rolled_back"
    assert _kinds(sim, seen.record.id).count("temporary_error") == limit
    rows = sim.store.rollbacks(deployment_id=seen.record.id)
    assert rows[0].reason.startswith(f"temporary_error: {limit} temporary errors in a row")


async def test_a_permanent_error_fails_the_step_and_rolls_back() -> None:
    sim = await _sim()
    _failing_start(sim, PermanentError("no free loopback port"), times=1000)
    seen = await drive(sim, _submit(sim))
    assert seen.record.phase == "rolled_back"
    assert "temporary_error" not in _kinds(sim, seen.record.id)
    assert sim.store.rollbacks(deployment_id=seen.record.id)[0].reason == "permanent_error: no free loopback port"
    assert seen.weights[-1] == {"baseline": 100}


async def test_a_failed_measurement_is_an_analysis_error_within_the_budget() -> None:
    sim = await _sim()
    limit = sim.engine.config.intelligent_deployment.analysis.error_limit

    async def gauges(_route: Any) -> Any:
        raise TemporaryError("metrics endpoint timed out")

    sim.engine.world.gauges = gauges
    seen = await drive(sim, _submit(sim))
    assert seen.record.phase == "rolled_back"
    assert _kinds(sim, seen.record.id).count("analysis_error") == limit
    reason = sim.store.rollbacks(deployment_id=seen.record.id)[0].reason
    assert reason.startswith(f"analysis: {limit} measurement errors in a row") and "timed out" in reason


async def test_a_stored_plan_of_an_earlier_shape_still_runs() -> None:
    sim = await _sim()
    deployment_id = _submit(sim)
    record = sim.store.get_deployment(deployment_id)
    older = [{k: v for k, v in step.items() if k not in ("compare", "policy_step")} for step in record.plan]
    assert any(step["kind"] == "analyze" for step in older)
    sim.store.save_transition(record, record.replace(plan=older))
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded", seen.record.reason


async def test_an_unknown_step_kind_is_refused_and_a_registered_one_runs() -> None:
    sim = await _sim()
    deployment_id = _submit(sim)
    record = sim.store.get_deployment(deployment_id)
    sim.store.save_transition(record, record.replace(plan=[{"kind": "teleport"}, *record.plan]))
    await sim.engine.advance(deployment_id)  # pending -> preparing
    await sim.engine.advance(deployment_id)  # preparing -> progressing
    with pytest.raises(ValueError, match="unknown plan step 'teleport'"):
        await sim.engine.advance(deployment_id)
    ran: list[int] = []

    async def teleport(tick: Tick, step: Any) -> StepResult:
        ran.append(int(tick.get("step_index")))
        return DONE

    sim.engine.steps.register("teleport", teleport)
    seen = await drive(sim, deployment_id)
    assert ran == [0] and seen.record.phase == "succeeded"


async def test_retry_delay_uses_a_temporary_errors_delay_else_backs_off() -> None:
    engine = (await _sim()).engine
    assert engine.retry_delay(TemporaryError("busy", delay=3.0), 4) == 3.0
    assert engine.retry_delay(RuntimeError("bug"), 1) == 2.0
    assert engine.retry_delay(RuntimeError("bug"), 3) == 8.0
    assert engine.retry_delay(RuntimeError("bug"), 50) == MAX_RETRY_DELAY_S


async def test_ticks_that_raise_are_recorded_once_and_roll_back_at_the_limit() -> None:
    sim = await _sim()
    deployment_id = _submit(sim)
    for _ in range(3):
        await sim.engine.advance(deployment_id)
    error = RuntimeError("router socket closed")
    for errors in range(1, ERRORS_BEFORE_ROLLBACK):
        assert sim.engine.tick_failed(deployment_id, error, errors) == min(MAX_RETRY_DELAY_S, 2.0**errors)
    assert _kinds(sim, deployment_id).count("controller_error") == 1
    assert sim.store.get_deployment(deployment_id).phase == "progressing"
    sim.engine.tick_failed(deployment_id, error, ERRORS_BEFORE_ROLLBACK)
    record = sim.store.get_deployment(deployment_id)
    assert record.phase == "rolling_back" and "router socket closed" in (record.reason or "")
    sim.engine.tick_failed(deployment_id, error, ERRORS_BEFORE_ROLLBACK + 1)  # never raises
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "rolled_back"
