"""Scaling by starting and stopping one instance at a time: what a platform without a native
replica count (processes on this host, the simulated world) does behind `Platform.scale`."""

from __future__ import annotations

from safeship.platforms.base import (
    Instance,
    LeavingHook,
    Platform,
    SpecTemplate,
    StartedHook,
    StoppedHook,
)


class ScalesOneByOne:
    """`Platform.scale` for platforms without a native replica count (processes on this host, the
    simulated world): they start and stop single instances."""

    async def scale(
        self,
        service: str,
        environment: str,
        version: str,
        replicas: int,
        template: SpecTemplate,
        *,
        drain: float,
        on_leaving: LeavingHook | None = None,
        on_started: StartedHook | None = None,
        on_stopped: StoppedHook | None = None,
    ) -> None:
        """Start every missing index below `replicas`; then, when some instances have an index at
        or above it, drain them first (`on_leaving` with the ready instances that stay, so that the
        router stops sending them new requests) and only then stop them one by one, each given
        `drain` seconds for its in-flight work."""
        platform: Platform = self  # type: ignore[assignment]  # mixed into a Platform
        every = await platform.instances(service, environment)
        running = [i for i in every if i.version == version and not i.stopped]
        used = {i.index for i in running}
        for index in range(replicas):
            if index not in used:
                started = await platform.start(template(index))
                if on_started is not None:
                    on_started(started)
        leaving = [i for i in running if i.index >= replicas]
        if not leaving:
            return
        staying: list[Instance] = [i for i in running if i.index < replicas and i.ready]
        if on_leaving is not None:
            await on_leaving(staying)
        for instance in leaving:
            await platform.stop(instance, drain=drain)
            if on_stopped is not None:
                on_stopped(instance)
