"""The Router protocol: who gets traffic. Only the interface and its value types live here.

`RouteKey` and `TrafficCounters` are defined in `safeship.traffic` (measuring is apart from
steering) and re-exported here, where the routers and their callers have always found them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from safeship.clock import Clock
from safeship.config.models import Environment, SafeshipConfig
from safeship.errors import PermanentError
from safeship.traffic import RouteKey, TrafficCounters

__all__ = [
    "AbilityNotSupported",
    "Backend",
    "RouteKey",
    "Router",
    "RouterAbilities",
    "RouterClass",
    "RouterSetup",
    "RoutesSnapshot",
    "TrafficCounters",
]


@dataclass(frozen=True)
class Backend:
    """One upstream instance of a version: its address and whether it may get new requests."""

    instance_id: str
    host: str
    port: int


@dataclass(frozen=True)
class RouterAbilities:
    """The optional powers of a router. A caller that needs one checks it first; a router asked
    for a power it lacks raises `AbilityNotSupported` instead of pretending.

    hold:    queue new requests while no version has a backend (`Router.hold`), e.g. the gap of a
             recreate deployment; without it those requests fail.
    listens: `ensure_route(route, port=...)` opens a listener that clients connect to; without it
             the router steers traffic that reaches it some other way and `port` is ignored.
    """

    hold: bool = False
    listens: bool = False


class AbilityNotSupported(PermanentError):
    """A router (or platform) was asked for an optional ability it does not have. Retrying will
    not help: the caller must refuse, or degrade and say so."""


@dataclass
class RoutesSnapshot:
    """Every route's cumulative counters per version, and the requests per route that found no
    backend at all (answered 503, or a hold that expired)."""

    counters: dict[RouteKey, dict[str, TrafficCounters]] = field(default_factory=dict)
    unrouted: dict[RouteKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterSetup:
    """What a registered router may be built from.

    state_dir:     where the router may keep files (sockets, logs, its daemon's records);
    clock:         the clock of the world it routes in;
    own_process:   run the listeners in a process of their own, so that routes keep serving while
                   the caller restarts (the builtin router honours it);
    close_grace:   seconds in-flight requests get when a route closes;
    config, environment: the settings it routes for (None where a test builds it bare); a router
                   that lives in an environment's cluster reads its namespace and context there.
    """

    state_dir: Path
    clock: Clock
    own_process: bool = True
    close_grace: float = 2.0
    config: SafeshipConfig | None = None
    environment: Environment | None = None


class Router(Protocol):
    """Who gets traffic: per route (service in an environment), which instances serve each version
    (`set_backends`) and what share of new requests each version gets (`set_weights`).

    Contract:
    - Routes are idempotent to declare: `ensure_route` on a known route changes nothing.
    - A backend that leaves a version's list is drained: no new requests, in-flight ones finish.
      Callers drain before they stop an instance.
    - `counters` are cumulative per version since the router started serving the route; they never
      decrease while it keeps serving (a restarted router starts again from zero).
    - Optional powers are in `abilities`; a method for a power the router lacks raises
      `AbilityNotSupported`.
    - Errors of the router's own machinery (sockets, a daemon, HTTP) reach the caller only as
      `TemporaryError` (try again after `delay`) or `PermanentError`; bad arguments as `InputError`.
    """

    abilities: RouterAbilities

    async def open(self) -> None:
        """Be ready to route: connect to (or start) whatever serves the routes. Idempotent."""
        ...

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        """Make `route` known. With `port` (0: any free port) and `abilities.listens`, also listen
        on `host:port` unless the route already listens. Returns the port it listens on, or None
        when it does not listen."""
        ...

    async def remove_route(self, route: RouteKey) -> None:
        """Stop routing `route`: no new requests; in-flight ones get a short grace. Unknown: no-op."""
        ...

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        """The ready instances of `version`. A backend that leaves the list is drained: it gets no
        new requests and its in-flight requests finish."""
        ...

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        """Percent of new requests per version (sums to 100). Ends any hold on the route."""
        ...

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        """Queue new requests for up to `max_wait` seconds instead of failing them (the
        recreate gap). Released by the next `set_weights` that names a version with backends.
        Raises `AbilityNotSupported` when `abilities.hold` is False."""
        ...

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        """Cumulative counters per version (copies: the caller may keep them)."""
        ...

    async def routes_snapshot(self) -> RoutesSnapshot:
        """Every route's counters and unrouted requests at once (for an exposition such as /metrics)."""
        ...

    async def close(self) -> None:
        """Release what this object holds; whether routes keep serving afterwards is the router's
        own documented choice (a router daemon keeps serving)."""
        ...


class RouterClass(Protocol):
    """The class side of a registered router: how a controller builds one from its setup."""

    def create(self, setup: RouterSetup) -> Router: ...


def not_supported(router: object, ability: str) -> AbilityNotSupported:
    """The error a router raises when asked for `ability` it does not have."""
    return AbilityNotSupported(f"{type(router).__name__} cannot {ability}")


