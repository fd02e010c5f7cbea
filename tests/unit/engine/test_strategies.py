"""Each strategy on the sim world: the weights the router received and the instances over time."""

from __future__ import annotations

from harness import run, scenario

from safeship.config.models import DeploymentStrategy as S
from safeship.config.models import SafeshipConfig
from safeship.engine.simulate import CANDIDATE


def _config(**rolling: int) -> SafeshipConfig:
    config = SafeshipConfig()
    config.intelligent_deployment.strategies.canary.step_duration = 30
    config.intelligent_deployment.rollback.monitoring.duration = 60
    for key, value in rolling.items():
        setattr(config.intelligent_deployment.strategies.rolling, key, value)
    return config


async def test_canary_walks_the_configured_weights_then_promotes() -> None:
    seen = await run(scenario(), S.CANARY, config=_config())
    assert seen.record.phase == "succeeded"
    candidate_weights = [w.get(CANDIDATE, 0) for w in seen.weights[1:]]
    assert candidate_weights == [5, 10, 25, 50, 75, 100]
    assert seen.weights[-1] == {CANDIDATE: 100}
    final = seen.counts[-1]
    assert final[1] == 0 and final[3] == 2  # baseline stopped, candidate at full replicas


async def test_blue_green_switches_atomically_and_keeps_the_old_colour_for_the_delay() -> None:
    config = _config()
    config.intelligent_deployment.strategies.blue_green.scale_down_delay = 45
    seen = await run(scenario(), S.BLUE_GREEN, config=config, replicas=3)
    assert seen.record.phase == "succeeded"
    assert seen.weights[1:] == [{CANDIDATE: 100}]  # one switch, no intermediate split
    # full new colour ready before the switch: 3 + 3 instances at once
    assert max(c[3] for c in seen.counts) == 3 and max(c[1] + c[3] for c in seen.counts) == 6
    promoted_at = seen.record.decided_at
    assert promoted_at is not None
    stops = [t for t, iid in seen.sim.platform.stopped if "/baseline-" in iid]
    assert stops and min(stops) - promoted_at >= 45


async def test_blue_green_rollback_is_a_switch_back_to_the_warm_colour() -> None:
    seen = await run(scenario(error_rate=0.5), S.BLUE_GREEN, config=_config())
    assert seen.record.phase == "rolled_back"
    assert seen.weights[-1] == {"baseline": 100}
    baseline_starts = [iid for _, iid in seen.sim.platform.started if "/baseline-" in iid]
    assert baseline_starts == []  # nothing had to be started again


async def test_rolling_respects_surge_and_unavailable() -> None:
    for surge, unavailable in [(1, 1), (0, 1), (2, 0)]:
        seen = await run(scenario(), S.ROLLING, config=_config(max_surge=surge, max_unavailable=unavailable),
                         replicas=4)
        assert seen.record.phase == "succeeded", (surge, unavailable)
        for _, base_live, base_ready, cand_live, cand_ready in seen.counts:
            assert base_live + cand_live <= 4 + surge, (surge, unavailable, seen.counts)
            assert base_ready + cand_ready >= 4 - unavailable, (surge, unavailable, seen.counts)
        cand = [w.get(CANDIDATE, 0) for w in seen.weights[1:]]
        assert cand == sorted(cand) and cand[-1] == 100


async def test_recreate_holds_requests_in_the_gap_and_loses_none() -> None:
    seen = await run(scenario(error_rate=0.0), S.RECREATE, config=_config())
    assert seen.record.phase == "succeeded"
    route = next(iter(seen.sim.router.routes.values()))
    assert route.unrouted == 0  # the gap was bridged by the hold
    assert all(c[1] == 0 for c in seen.counts if c[3] > 0)  # never both versions at once
