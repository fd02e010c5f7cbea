"""A new engine on the same store resumes a deployment another engine left mid-step."""

from __future__ import annotations

from harness import drive, scenario
from policies import StepPolicy

from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.engine.context import World
from safeship.engine.engine import DeploymentEngine
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, build
from safeship.errors import ConflictError, StaleStateError
from safeship.store import Store


async def _sim(tmp_path, scen):
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 20
    config.intelligent_deployment.rollback.monitoring.duration = 30
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    return await build(scen, policy_for=lambda _n: StepPolicy(), config=config, store=store)


async def test_second_engine_finishes_what_the_first_started(tmp_path) -> None:
    sim = await _sim(tmp_path, scenario())
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="step")
    first = await drive(sim, record.id, stop_after_ticks=25)
    assert first.record.phase == "progressing" and first.record.step_index > 3
    # The first engine is dropped; a new one opens the same SQLite file and drives the same world.
    sim.engine = DeploymentEngine(sim.engine.config, Store(sim.store.url),
                                  World(sim.platform, sim.router, sim.clock, None),
                                  policy_for=lambda _n: StepPolicy())
    sim.store = sim.engine.store
    second = await drive(sim, record.id)
    assert second.record.phase == "succeeded"
    assert [w.get(CANDIDATE, 0) for w in second.weights[1:]] == [5, 10, 25, 50, 75, 100]
    starts = [iid for _, iid in sim.platform.started if "candidate" in iid]
    assert len(starts) == len(set(starts))  # resuming started no duplicate instance


async def test_resume_mid_rollback_ends_rolled_back(tmp_path) -> None:
    sim = await _sim(tmp_path, scenario(error_rate=0.5))
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="step")
    seen = await drive(sim, record.id, stop_after_ticks=400)
    assert seen.record.phase == "rolled_back"
    rows = sim.store.rollbacks(deployment_id=record.id)
    assert len(rows) == 1 and rows[0].success and rows[0].to_version == "baseline"


async def test_stale_engine_cannot_overwrite(tmp_path) -> None:
    sim = await _sim(tmp_path, scenario())
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT),
                               policy="step")
    moved = record.replace(phase="preparing")
    sim.store.save_transition(record, moved)
    try:
        sim.store.save_transition(record, record.replace(phase="cancelled"))
    except StaleStateError:
        pass
    else:
        raise AssertionError("a stale row version was accepted")
    assert sim.store.get_deployment(record.id).phase == "preparing"


async def test_second_active_deployment_is_refused(tmp_path) -> None:
    sim = await _sim(tmp_path, scenario())
    request = DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT)
    first = sim.engine.submit(request, policy="step")
    try:
        sim.engine.submit(request.model_copy(update={"version": "other"}), policy="step")
    except ConflictError as exc:
        assert first.id in str(exc) and "--cancel" in str(exc)
    else:
        raise AssertionError("a second active deployment was accepted")
