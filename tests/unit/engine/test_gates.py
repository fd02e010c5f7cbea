"""Gates before anything starts: quota at admission, approval, freeze windows, concurrency."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from harness import drive, scenario
from policies import StepPolicy

from safeship.config.models import (
    DeploymentRequest,
    DeploymentStrategy,
    FreezeWindowConfig,
    ResourceQuotas,
    SafeshipConfig,
)
from safeship.engine.gates import FrozenError, QuotaExceeded
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.errors import ConflictError


async def _sim(**env: object):
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 20
    config.intelligent_deployment.rollback.monitoring.duration = 20
    sim = await build(scenario(), policy_for=lambda _n: StepPolicy(), config=config, replicas=4)
    environment = sim.engine.config.environment(ENVIRONMENT)
    assert environment is not None
    for key, value in env.items():
        setattr(environment, key, value)
    sim.engine.config.services[SERVICE].resources.cpu = 0.5
    sim.engine.config.services[SERVICE].resources.memory = 256
    return sim


def request(strategy: DeploymentStrategy | None = None, **extra: object) -> DeploymentRequest:
    return DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                             deployment_strategy=strategy, **extra)  # type: ignore[arg-type]


async def test_explicit_blue_green_over_quota_is_refused_with_nothing_started() -> None:
    sim = await _sim(resource_quotas=ResourceQuotas(cpu=3.0, memory="8Gi"))  # 4 x 0.5 = 2 running
    started_before = list(sim.platform.started)
    with pytest.raises(QuotaExceeded) as refused:
        sim.engine.submit(request(DeploymentStrategy.BLUE_GREEN))
    message = str(refused.value)
    assert "cpu: needs 4 cores at peak, 3 cores available" in message and "nothing was started" in message
    assert sim.store.list_deployments() == [] and sim.platform.started == started_before
    assert refused.value.exit_code == 2


async def test_selection_picks_a_lighter_strategy_that_fits_and_says_why() -> None:
    sim = await _sim(resource_quotas=ResourceQuotas(cpu=2.5, memory="8Gi"))  # room for one surge instance
    record = sim.engine.submit(request())
    assert record.strategy == "rolling"
    assert "would exceed sim's quota" in record.strategy_reason and "cpu" in record.strategy_reason
    seen = await drive(sim, record.id)
    assert seen.record.phase == "succeeded"
    assert max(c[1] + c[3] for c in seen.counts) <= 5  # never more than the quota allows


async def test_approval_waits_and_records_who() -> None:
    sim = await _sim(approval="required")
    record = sim.engine.submit(request(DeploymentStrategy.CANARY))
    waiting = await drive(sim, record.id, stop_after_ticks=10)
    assert waiting.record.phase == "awaiting_approval"
    assert sim.router.weight_log[-1][2] == {"baseline": 100} and len(sim.platform.started) == 0
    approved = sim.engine.approve(record.id, by="alice")
    assert approved.status["approval"]["by"] == "alice"
    with pytest.raises(ConflictError):
        sim.engine.approve(record.id, by="bob")  # approving twice is refused
    seen = await drive(sim, record.id)
    assert seen.record.phase == "succeeded"
    assert any(e.kind == "phase" and "approved by alice" in e.message for e in sim.store.events(record.id))


async def test_freeze_window_refuses_and_override_is_recorded() -> None:
    window = FreezeWindowConfig(name="always", days=["daily"], start="00:00", end="23:59")
    sim = await _sim(freeze_windows=[window])
    with pytest.raises(FrozenError) as refused:
        sim.engine.submit(request())
    assert "always" in str(refused.value) and "--override-freeze" in str(refused.value)
    assert sim.store.list_deployments() == []
    record = sim.engine.submit(request(override_freeze="hotfix for INC-42", requested_by="carol"))
    assert record.status["freeze_override"]["reason"] == "hotfix for INC-42"
    events = sim.store.events(record.id)
    assert any(e.kind == "freeze_override" and "INC-42" in e.message for e in events)


async def test_freeze_outside_the_window_lets_deploys_through() -> None:
    now = datetime.fromtimestamp(1_000_000.0, tz=UTC)  # the sim clock's start: a Monday, 13:46 UTC
    other_day = ["sun"] if now.weekday() != 6 else ["sat"]
    sim = await _sim(freeze_windows=[FreezeWindowConfig(days=other_day)])
    assert sim.engine.submit(request()).phase == "pending"


async def test_concurrency_limit_per_environment() -> None:
    sim = await _sim(max_concurrent_deployments=1)
    sim.engine.config.services["other"] = sim.engine.config.services[SERVICE].model_copy()
    sim.engine.submit(request())
    with pytest.raises(ConflictError) as refused:
        sim.engine.submit(DeploymentRequest(service_name="other", version="v2", environment=ENVIRONMENT))
    assert "allows 1 deployment(s) at a time" in str(refused.value)
