"""One rule for which instances serve: a version's backends are its ready instances.

Used by the controller's reconcile loop and by the deployment engine, so that both tell the
router the same thing. It reads instances through the small `Serving` view below, so that it
needs nothing from any platform's module."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from safeship.routing.base import Backend, RouteKey, Router


class Serving(Protocol):
    """What routing needs to know of one instance (`safeship.platforms.base.Instance` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def stopped(self) -> bool: ...


@dataclass
class BackendSync:
    """What `sync_backends` told the router: backends per version (every version it set, with
    an empty list for versions without a ready instance), and the versions that still had an
    instance that was not stopped."""

    backends: dict[str, list[Backend]] = field(default_factory=dict)
    live_versions: set[str] = field(default_factory=set)

    def ready_counts(self) -> dict[str, int]:
        return {version: len(backends) for version, backends in self.backends.items()}

    def ready_ids(self) -> frozenset[str]:
        return frozenset(b.instance_id for backends in self.backends.values() for b in backends)


async def sync_backends(
    router: Router, route: RouteKey, instances: Iterable[Serving], *, seen: Iterable[str] = ()
) -> BackendSync:
    """Set every version's backends to its ready instances.

    Stopped instances count as gone. A version in `seen` (one the caller knew before) that has no
    instance left gets an empty list, so that the router drains what it still sends there; the
    caller decides which versions to remember next time (`BackendSync.live_versions`, or every
    version set)."""
    synced = BackendSync(backends={version: [] for version in seen})
    for instance in instances:
        if instance.stopped:
            continue
        synced.live_versions.add(instance.version)
        listed = synced.backends.setdefault(instance.version, [])
        if instance.ready:
            listed.append(Backend(instance.id, instance.host, instance.port))
    for version, backends in synced.backends.items():
        await router.set_backends(route, version, backends)
    return synced
