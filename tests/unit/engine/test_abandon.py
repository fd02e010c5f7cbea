"""`DeploymentEngine.abandon`: a deployment whose objects went with their owner (a deleted
Release) ends at once, cancelled, with no rollback run, and no version of its service stays
deployed; `Store.forget_environment(..., service=...)` forgets one service only."""

from __future__ import annotations

import pytest
from harness import drive, scenario
from policies import StepPolicy

from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.errors import ConflictError
from safeship.store import StableVersion


def _config() -> SafeshipConfig:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 20
    return config


@pytest.mark.parametrize("rolling_back", [False, True])
async def test_an_abandoned_deployment_ends_cancelled_and_nothing_stays_deployed(rolling_back: bool) -> None:
    sim = await build(scenario(), policy_for=lambda _n: StepPolicy(), config=_config())
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="step")
    await drive(sim, record.id, stop_after_ticks=6)
    if rolling_back:
        sim.engine.request_rollback(record.id, reason="manual rollback")
        assert sim.store.get_deployment(record.id).phase == "rolling_back"
    events_before = len(sim.store.events(record.id))
    assert sim.store.current_version(SERVICE, ENVIRONMENT) == "baseline"

    ended = sim.engine.abandon(record.id, reason="Release test/sim-service deleted")
    assert ended.phase == "cancelled" and ended.reason == "Release test/sim-service deleted"
    assert ended.finished_at is not None
    assert sim.store.current_version(SERVICE, ENVIRONMENT) is None
    assert sim.store.active_deployment(SERVICE, ENVIRONMENT) is None
    rows = sim.store.rollbacks(deployment_id=record.id)
    if rolling_back:
        [row] = rows
        assert row.success is False and "ended unfinished: Release test/sim-service deleted" in row.reason
    else:
        assert rows == []
    # No step ran: only the phase event was added.
    added = sim.store.events(record.id)[events_before:]
    assert [e.kind for e in added] == ["phase"], added
    with pytest.raises(ConflictError, match="already ended"):
        sim.engine.abandon(record.id, reason="again")


async def test_forgetting_one_service_leaves_the_others_and_the_environment() -> None:
    sim = await build(scenario(), policy_for=lambda _n: StepPolicy(), config=_config())
    now = sim.clock.now()
    sim.store.record_stable(StableVersion("other-service", ENVIRONMENT, "o1", None, now - 10, None, True))
    sim.store.save_environment_state(ENVIRONMENT, {"prepared": True}, now)
    sim.store.forget_environment(ENVIRONMENT, at=now, service=SERVICE)
    assert sim.store.current_version(SERVICE, ENVIRONMENT) is None
    assert sim.store.current_version("other-service", ENVIRONMENT) == "o1"
    assert sim.store.environment_state(ENVIRONMENT) == {"prepared": True}
