"""Drive the real engine tick by tick on the sim world and record what a user would observe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policies import StepPolicy

from safeship.analysis.base import Policy
from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.phases import Phase
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.platforms.base import InstanceState
from safeship.store import DeploymentRecord


def scenario(**candidate: Any) -> Scenario:
    return Scenario.model_validate({
        "name": "test", "seed": 1, "duration_s": 3600,
        "traffic": {"rps": 100},
        "baseline": {"error_rate": 0.005, "latency_ms": {"p50": 40, "p99": 180}},
        "candidate": candidate, "expect": "promote",
    })


@dataclass
class Observed:
    record: DeploymentRecord
    weights: list[dict[str, int]]
    counts: list[tuple[float, int, int, int, int]]  # (t, baseline live, baseline ready, candidate live, ready)
    sim: Simulation
    phases: list[str] = field(default_factory=list)


async def run(
    scen: Scenario,
    strategy: DeploymentStrategy,
    *,
    config: SafeshipConfig | None = None,
    policy: Callable[[str], Policy] | None = None,
    replicas: int | None = None,
    stop_after_ticks: int | None = None,
    sim: Simulation | None = None,
) -> Observed:
    sim = sim or await build(scen, policy_for=policy or (lambda _n: StepPolicy()), config=config,
                             replicas=replicas or 2)
    record = sim.engine.submit(
        DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                          deployment_strategy=strategy), policy="step")
    return await drive(sim, record.id, stop_after_ticks=stop_after_ticks)


async def drive(sim: Simulation, deployment_id: str, *, stop_after_ticks: int | None = None) -> Observed:
    counts, phases = [], []
    ticks = 0
    while True:
        wait = await sim.engine.advance(deployment_id)
        ticks += 1
        current = sim.store.get_deployment(deployment_id)
        if not phases or phases[-1] != current.phase:
            phases.append(current.phase)
        instances = await sim.platform.instances(SERVICE, ENVIRONMENT)
        row = [sim.clock.now()]
        for version in ("baseline", CANDIDATE):
            mine = [i for i in instances if i.version == version and i.state is not InstanceState.STOPPED]
            row += [len(mine), sum(1 for i in mine if i.ready)]
        counts.append(tuple(row))
        if Phase(current.phase).is_final or (stop_after_ticks is not None and ticks >= stop_after_ticks):
            break
        assert ticks < 20_000, "the deployment never ended"
        sim.clock.advance(max(wait, 0.05))
    weights = [w for _, _, w in sim.router.weight_log]
    return Observed(current, weights, counts, sim, phases)  # type: ignore[arg-type]
