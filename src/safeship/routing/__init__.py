"""Who gets traffic: one module per router, registered here by name.

A registered router class has `create(setup: RouterSetup) -> Router` (see `routing.base`)."""

from __future__ import annotations

from typing import Any

from safeship.plugins import load, register_in

ROUTERS: dict[str, str | type] = {
    "builtin": "safeship.routing.builtin:BuiltinRouter",
    "haproxy": "safeship.routing.haproxy:HAProxyRouter",
    "gateway-api": "safeship.routing.kubernetes:GatewayApiRouter",
    "istio": "safeship.routing.kubernetes:IstioRouter",
    "replicas": "safeship.routing.kubernetes:ReplicasRouter",
    "process": "safeship.routing.remote:RemoteRouter",
    "sim": "safeship.routing.sim:SimRouter",
}


def router_class(name: str) -> Any:
    """The router class registered as `name`; an unknown name is an InputError listing the known ones."""
    return load(ROUTERS, name, "router")


def register(name: str, cls_or_path: str | type) -> None:
    """Register (or replace) the router called `name`: a class or a "module:Class" path."""
    register_in(ROUTERS, name, cls_or_path, "router")
