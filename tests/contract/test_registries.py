"""Every registered plug-in loads and satisfies its protocol's methods; unknown names fail loudly."""

from __future__ import annotations

import pytest

from safeship.errors import InputError
from safeship.platforms import PLATFORMS, platform_class
from safeship.routing import ROUTERS, router_class


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_platforms_have_the_protocol_methods(name: str) -> None:
    cls = platform_class(name)
    for method in ("start", "stop", "instances", "scale", "adopt", "close", "create"):
        assert callable(getattr(cls, method, None)), (name, method)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_routers_have_the_protocol_methods(name: str) -> None:
    cls = router_class(name)
    for method in ("open", "ensure_route", "remove_route", "set_backends", "set_weights", "hold", "counters",
                   "routes_snapshot", "close", "create"):
        assert callable(getattr(cls, method, None)), (name, method)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(InputError, match="known platforms: kubernetes, local, sim"):
        platform_class("nomad")
    with pytest.raises(InputError, match="known routers: builtin, gateway-api, haproxy, istio, process, replicas, sim"):
        router_class("nginx")


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_platforms_say_their_traits(name: str) -> None:
    cls = platform_class(name)
    assert isinstance(cls.runs_in_controller, bool) and isinstance(cls.runs_commands, bool)
    assert router_class(cls.router) is not None
    from safeship.traffic import traffic_source_class

    assert traffic_source_class(cls.traffic) is not None


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_routers_say_their_abilities(name: str) -> None:
    from safeship.routing.base import RouterAbilities

    assert isinstance(router_class(name).abilities, RouterAbilities)
