"""Each environment's platform, router and traffic source, built from the registries by that
environment's config, and put behind one Platform, one Router and one TrafficSource that pass
every call to the environment it names.

What is shared: a platform class whose `per_environment` trait is False (the local platform: one
host, one set of processes) is built once for all the environments that use it; the same for a
router (by name) and a traffic source (by name and router). A class with `per_environment` True
(a Kubernetes platform: a cluster and namespace per environment) is built once per environment,
from a setup that names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from safeship.config.models import Environment
from safeship.errors import InputError
from safeship.platforms import DEFAULT_PLATFORM, platform_class
from safeship.platforms.base import (
    Instance,
    InstanceSpec,
    LeavingHook,
    Platform,
    PlatformSetup,
    SpecTemplate,
    StartedHook,
    StoppedHook,
)
from safeship.routing import router_class
from safeship.routing.base import Backend, Router, RouterAbilities, RouterSetup, RoutesSnapshot
from safeship.traffic import RouteKey, TrafficCounters, TrafficSetup, TrafficSource, TrafficWindow, traffic_source_class


def _per_environment(cls: Any) -> bool:
    return bool(getattr(cls, "per_environment", False))


@dataclass(frozen=True)
class Choice:
    """The registry names one environment runs on."""

    platform: str
    router: str
    traffic: str


def choice_for(environment: Environment | None) -> Choice:
    """The platform, router and traffic source an environment names, the defaults filling what it
    leaves out: the platform's router; the router's traffic source when its class names one
    (`traffic`), else the platform's. An unknown name is an InputError listing the known ones."""
    platform = environment.platform if environment is not None else DEFAULT_PLATFORM
    cls = platform_class(platform)
    router = (environment.router if environment is not None else None) or cls.router
    router_class(router)  # unknown: refused here, with the known ones listed
    # the environment's own, else its router's (a router may say which source measures it best),
    # else its platform's
    own = environment.traffic_source if environment is not None else None
    traffic = own or getattr(router_class(router), "traffic", None) or cls.traffic
    traffic_source_class(traffic)
    return Choice(platform, router, traffic)


class Parts:
    """The built parts, by environment, and the objects that dispatch to them."""

    def __init__(
        self,
        environments: Sequence[Environment],
        platform_setup: PlatformSetup,
        router_setup: RouterSetup,
        traffic_setup: Callable[[Router, Environment | None], TrafficSetup],
    ) -> None:
        self.platforms: dict[str, Platform] = {}
        self.routers: dict[str, Router] = {}
        self.traffic: dict[str, TrafficSource] = {}
        self.platform_setup, self.router_setup, self.traffic_setup = platform_setup, router_setup, traffic_setup
        self._shared: dict[tuple[str, ...], Any] = {}
        self.choices: dict[str, Choice] = {}
        chosen: list[tuple[Environment | None, Choice]] = [(e, choice_for(e)) for e in environments]
        chosen = chosen or [(None, choice_for(None))]
        self._build(chosen)
        self.default = chosen[0][0].name if chosen[0][0] is not None else ""

    def _build(self, chosen: Sequence[tuple[Environment | None, Choice]]) -> list[Any]:
        """Build (or share) the parts of each environment; returns the ones built new."""
        made: list[Any] = []
        shared = self._shared
        for environment, choice in chosen:
            name = environment.name if environment is not None else ""
            p_cls, r_cls = platform_class(choice.platform), router_class(choice.router)
            t_cls = traffic_source_class(choice.traffic)
            p_key = ("platform", choice.platform) + ((name,) if _per_environment(p_cls) else ())
            r_key = ("router", choice.router) + ((name,) if _per_environment(r_cls) else ())
            t_key = ("traffic", choice.traffic, *r_key) + ((name,) if _per_environment(t_cls) else ())
            if p_key not in shared:
                shared[p_key] = p_cls.create(replace(self.platform_setup, environment=environment))
                made.append(shared[p_key])
            if r_key not in shared:
                shared[r_key] = r_cls.create(replace(self.router_setup, environment=environment))
                made.append(shared[r_key])
            if t_key not in shared:
                shared[t_key] = t_cls.create(self.traffic_setup(shared[r_key], environment))
                made.append(shared[t_key])
            self.platforms[name], self.routers[name], self.traffic[name] = (shared[p_key], shared[r_key],
                                                                             shared[t_key])
            self.choices[name] = choice
        return made

    def add(self, environments: Sequence[Environment], *, platform_setup: PlatformSetup, router_setup: RouterSetup,
            traffic_setup: Callable[[Router, Environment | None], TrafficSetup]) -> list[Any]:
        """Environments a reloaded config adds: each gets its parts, sharing the ones already built
        where its platform, router or traffic source is shared (the local platform and the builtin
        router are one for all). The setups are the new config's, for whatever is built from now on.
        Returns the parts built new (a router the controller must open)."""
        self.platform_setup, self.router_setup, self.traffic_setup = platform_setup, router_setup, traffic_setup
        return self._build([(e, choice_for(e)) for e in environments])

    def all_parts(self) -> list[Any]:
        return list({id(p): p for p in self._shared.values()}.values())

    def distinct(self, parts: Mapping[str, Any]) -> list[Any]:
        return list({id(p): p for p in parts.values()}.values())


def _pick(parts: Mapping[str, Any], environment: str, default: str) -> Any:
    found = parts.get(environment)
    if found is None:
        found = parts.get(default)
    if found is None:
        raise InputError(f"environment {environment!r} is not run by this controller")
    return found


class PlatformByEnvironment:
    """One Platform over the environments' own: each call goes to the platform of its environment."""

    runs_in_controller = True

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def _of(self, environment: str) -> Platform:
        platform: Platform = _pick(self.parts.platforms, environment, self.parts.default)
        return platform

    async def start(self, spec: InstanceSpec) -> Instance:
        return await self._of(spec.environment).start(spec)

    async def stop(self, instance: Instance, *, drain: float) -> None:
        await self._of(instance.environment).stop(instance, drain=drain)

    async def instances(self, service: str, environment: str) -> list[Instance]:
        return await self._of(environment).instances(service, environment)

    async def scale(self, service: str, environment: str, version: str, replicas: int, template: SpecTemplate, *,
                    drain: float, on_leaving: LeavingHook | None = None, on_started: StartedHook | None = None,
                    on_stopped: StoppedHook | None = None) -> None:
        await self._of(environment).scale(service, environment, version, replicas, template, drain=drain,
                                          on_leaving=on_leaving, on_started=on_started, on_stopped=on_stopped)

    async def adopt(self) -> list[Instance]:
        adopted = await asyncio.gather(*(p.adopt() for p in self.parts.distinct(self.parts.platforms)))
        return [instance for found in adopted for instance in found]

    async def close(self) -> None:
        for platform in self.parts.distinct(self.parts.platforms):
            await platform.close()


class RouterByEnvironment:
    """One Router over the environments' own. Its abilities are those every one of them has, for
    callers that ask without a route; `abilities_for(route)` gives a route's own router's."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.abilities = RouterAbilities(hold=True, listens=True)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the shared abilities (after environments were added)."""
        routers = self.parts.distinct(self.parts.routers)
        self.abilities = RouterAbilities(hold=all(r.abilities.hold for r in routers),
                                         listens=all(r.abilities.listens for r in routers))

    def _of(self, route: RouteKey) -> Router:
        router: Router = _pick(self.parts.routers, route.environment, self.parts.default)
        return router

    def abilities_for(self, route: RouteKey) -> RouterAbilities:
        return self._of(route).abilities

    async def open(self) -> None:
        for router in self.parts.distinct(self.parts.routers):
            await router.open()

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        return await self._of(route).ensure_route(route, port=port, host=host)

    async def remove_route(self, route: RouteKey) -> None:
        await self._of(route).remove_route(route)

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        await self._of(route).set_backends(route, version, backends)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        await self._of(route).set_weights(route, weights)

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        await self._of(route).hold(route, max_wait)

    def weights_reached(self, route: RouteKey) -> dict[str, int]:
        """The weights the route's router reached ({} from a router that does not say)."""
        reached = getattr(self._of(route), "weights_reached", None)
        return dict(reached(route)) if reached is not None else {}

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return await self._of(route).counters(route)

    async def routes_snapshot(self) -> RoutesSnapshot:
        merged = RoutesSnapshot()
        for router in self.parts.distinct(self.parts.routers):
            snapshot = await router.routes_snapshot()
            merged.counters.update(snapshot.counters)
            merged.unrouted.update(snapshot.unrouted)
        return merged

    async def close(self) -> None:
        for router in self.parts.distinct(self.parts.routers):
            await router.close()


class TrafficByEnvironment:
    """One TrafficSource over the environments' own."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def _of(self, route: RouteKey) -> TrafficSource:
        source: TrafficSource = _pick(self.parts.traffic, route.environment, self.parts.default)
        return source

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        return await self._of(route).counters(route)

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        return await self._of(route).before(route, at, span)

    async def close(self) -> None:
        for source in self.parts.distinct(self.parts.traffic):
            await source.close()
