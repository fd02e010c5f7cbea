"""Platform.scale: missing indexes start, leaving ones are drained through `on_leaving` before
they stop, and scaling again changes nothing (the sim platform; the local one shares the helper)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from safeship.clock import VirtualClock
from safeship.config.scenario import CandidateSpec, LatencySpec, Scenario, TrafficSpec, VersionSpec
from safeship.platforms.base import Instance, InstanceSpec
from safeship.platforms.sim import SimPlatform
from safeship.simworld import SimWorld


def _platform() -> tuple[SimPlatform, VirtualClock]:
    clock = VirtualClock()
    spec = VersionSpec(error_rate=0.0, latency_ms=LatencySpec(p50=10, p99=20))
    scenario = Scenario(name="scale", traffic=TrafficSpec(rps=1), baseline=spec,
                        candidate=CandidateSpec(error_rate=0.0, latency_ms=LatencySpec(p50=10, p99=20)),
                        expect="promote")
    return SimPlatform(SimWorld(scenario, clock)), clock


def _template(index: int) -> InstanceSpec:
    return InstanceSpec(service="shop", environment="prod", version="v1", index=index)


def test_scale_up_down_drains_first_and_is_idempotent() -> None:
    platform, clock = _platform()
    log: list[str] = []

    async def on_leaving(staying: Sequence[Instance]) -> None:
        running = await platform.instances("shop", "prod")
        assert len([i for i in running if not i.stopped]) == 3  # nothing stopped before the drain
        log.append("drain to " + ",".join(str(i.index) for i in staying))

    async def run() -> None:
        await platform.scale("shop", "prod", "v1", 3, _template, drain=0.0,
                             on_started=lambda i: log.append(f"started {i.index}"))
        clock.advance(10.0)  # every instance is ready
        await platform.scale("shop", "prod", "v1", 3, _template, drain=0.0,
                             on_started=lambda i: log.append(f"started {i.index}"))  # nothing to do
        await platform.scale("shop", "prod", "v1", 1, _template, drain=0.0, on_leaving=on_leaving,
                             on_stopped=lambda i: log.append(f"stopped {i.index}"))
        left = await platform.instances("shop", "prod")
        assert [i.index for i in left] == [0]

    asyncio.run(run())
    assert log == ["started 0", "started 1", "started 2", "drain to 0", "stopped 1", "stopped 2"]
