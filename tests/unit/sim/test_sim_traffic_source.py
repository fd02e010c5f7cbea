"""The sim traffic source: live counts are the router's, and `before()` gives each stable version's
record from before the deployment, which the candidate does not have."""

from __future__ import annotations

import asyncio

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import CANDIDATE, build
from safeship.routing.sim import SimTraffic


def scenario(history_s: float) -> Scenario:
    return Scenario.model_validate({
        "name": "history", "expect": "promote", "history_s": history_s, "traffic": {"rps": 20},
        "baseline": {"error_rate": 0.02, "latency_ms": {"p50": 40, "p99": 180}},
    })


def test_before_gives_the_stable_versions_record_and_not_the_candidates() -> None:
    async def run() -> None:
        sim = await build(scenario(600), policy_for=get_policy, seed=3)
        source = SimTraffic(sim.router)
        now = sim.clock.now()
        sim.world.start_deployment(now)
        window = await source.before(sim.route, now, 600)
        assert window is not None and CANDIDATE not in window.counters
        [(_version, record)] = window.counters.items()
        assert window.end - window.start == 600
        assert 600 * 20 * 0.8 < record.requests < 600 * 20 * 1.2  # about 20 requests a second
        assert 0 < record.failed < record.requests * 0.05
        assert await source.before(sim.route, now, 600) == window  # fixed: asking again changes nothing
        assert await source.counters(sim.route) == await sim.router.counters(sim.route)

    asyncio.run(run())


def test_a_version_with_no_history_has_no_record() -> None:
    async def run() -> None:
        sim = await build(scenario(0), policy_for=get_policy, seed=3)
        now = sim.clock.now()
        sim.world.start_deployment(now)
        assert await SimTraffic(sim.router).before(sim.route, now, 600) is None

    asyncio.run(run())
