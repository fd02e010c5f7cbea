"""A rollback or a cancel of a first deployment (nothing earlier to return to) on a router that,
as a cluster's routers do, takes only splits that sum to 100: the candidate's instances stop, no
split is refused, and the deployment ends with a sentence that says nothing earlier serves."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from harness import drive, scenario
from policies import StepPolicy

from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.engine.phases import Phase
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.engine.views import deployment_view
from safeship.errors import InputError
from safeship.platforms.base import InstanceState
from safeship.routing.base import RouteKey


def _config() -> SafeshipConfig:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 20
    return config


async def _first_deployment() -> tuple[Simulation, list[dict[str, int]]]:
    """A sim world whose baseline no longer serves (the environment was cleaned up), with a strict router."""
    sim = await build(scenario(), policy_for=lambda _n: StepPolicy(), config=_config())
    sim.store.forget_environment(ENVIRONMENT, at=sim.clock.now())
    asked: list[dict[str, int]] = []
    lenient = sim.router.set_weights

    async def strict(route: RouteKey, weights: Mapping[str, int]) -> None:
        asked.append(dict(weights))
        if sum(weights.values()) != 100:
            raise InputError(f"weights: must sum to 100, got {sum(weights.values())} in {dict(weights)}")
        await lenient(route, weights)

    sim.router.set_weights = strict  # type: ignore[method-assign]
    return sim, asked


async def _candidates_running(sim: Simulation) -> int:
    return len([i for i in await sim.platform.instances(SERVICE, ENVIRONMENT)
                if i.version == CANDIDATE and i.state is not InstanceState.STOPPED])


@pytest.mark.parametrize("how", ["rollback", "cancel"])
async def test_undoing_a_first_deployment_stops_it_without_a_refused_split(how: str) -> None:
    sim, asked = await _first_deployment()
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.CANARY), policy="step")
    assert record.from_version is None  # a first deployment
    seen = await drive(sim, record.id, stop_after_ticks=6)
    assert Phase(seen.record.phase).is_active and await _candidates_running(sim) > 0
    assert sim.store.current_version(SERVICE, ENVIRONMENT) == CANDIDATE

    with pytest.raises(InputError, match="no earlier stable version"):
        sim.engine.request_rollback(record.id)  # without force: it would stop the service
    if how == "rollback":
        sim.engine.request_rollback(record.id, reason="manual rollback", force=True)
    else:
        sim.engine.cancel(record.id, by="alice")
    final = (await drive(sim, record.id)).record

    assert final.phase == ("rolled_back" if how == "rollback" else "cancelled"), final.reason
    assert "no earlier version to serve (first deployment)" in " ".join(e.message for e in sim.store.events(record.id))
    assert all(sum(w.values()) == 100 for w in asked), asked  # every split asked of the router was one it takes
    assert await _candidates_running(sim) == 0
    assert not deployment_view(final)["weights"]
    assert sim.store.current_version(SERVICE, ENVIRONMENT) is None
    rows = sim.store.rollbacks(deployment_id=record.id)
    if how == "rollback":
        [row] = rows
        assert row.success and row.to_version is None
    else:
        assert rows == []
