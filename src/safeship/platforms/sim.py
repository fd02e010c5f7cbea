"""Simulated instances on a virtual clock (see safeship.simworld). Used by `safeship simulate`,
the analysis benchmark and most unit tests."""

from __future__ import annotations

from typing import ClassVar

from safeship.errors import InputError
from safeship.platforms.base import (
    Instance,
    InstanceSpec,
    InstanceState,
    Platform,
    PlatformSetup,
)
from safeship.platforms.scaling import ScalesOneByOne
from safeship.simworld import SimInstance, SimWorld


class SimPlatform(ScalesOneByOne):
    """A `Platform` over a `SimWorld`: instances start, become ready and crash on its virtual
    clock. Deployments on it are driven in the foreground by the command that deploys."""

    runs_in_controller: ClassVar[bool] = False
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = "sim"
    traffic: ClassVar[str] = "sim"

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        raise InputError("the sim platform is a simulated world, which the command that deploys builds "
                         "on a virtual clock; no controller runs it")

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.started: list[tuple[float, str]] = []  # (time, instance id), for tests
        self.stopped: list[tuple[float, str]] = []

    def _view(self, sim: SimInstance) -> Instance:
        alive, ready, restarts, crashed_at = self.world.life(sim)
        if sim.stopped_at is not None:
            state = InstanceState.STOPPED
        elif not alive:
            state = InstanceState.RESTARTING
        elif ready:
            state = InstanceState.READY
        elif restarts or self.world.clock.now() - sim.started_at > self.world.ready_delay_s:
            state = InstanceState.UNREADY
        else:
            state = InstanceState.STARTING
        failure = None
        if crashed_at is not None:
            failure = f"process exited at t={crashed_at:.0f}s (restarted {restarts} times)"
        return Instance(
            id=sim.id,
            service=sim.service,
            environment=sim.environment,
            version=sim.version,
            index=sim.index,
            port=sim.port,
            state=state,
            started_at=sim.started_at,
            restarts=restarts,
            last_failure=failure,
        )

    async def start(self, spec: InstanceSpec) -> Instance:
        existing = self.world.instances.get(f"{spec.environment}/{spec.service}/{spec.version}-{spec.index}")
        if existing is not None and existing.stopped_at is None:
            return self._view(existing)
        sim = self.world.spawn(spec.service, spec.environment, spec.version, spec.index)
        self.started.append((self.world.clock.now(), sim.id))
        return self._view(sim)

    async def stop(self, instance: Instance, *, drain: float) -> None:
        sim = self.world.instances.get(instance.id)
        if sim is not None and sim.stopped_at is None:
            sim.stopped_at = self.world.clock.now()
            self.stopped.append((sim.stopped_at, sim.id))
            del self.world.instances[sim.id]

    async def instances(self, service: str, environment: str) -> list[Instance]:
        return [
            self._view(sim)
            for sim in list(self.world.instances.values())
            if sim.service == service and sim.environment == environment
        ]

    async def adopt(self) -> list[Instance]:
        return []  # a simulated world does not outlive its owner

    async def close(self) -> None:
        return None
