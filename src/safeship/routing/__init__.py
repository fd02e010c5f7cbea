"""Who gets traffic: one module per router, registered here by name."""

from __future__ import annotations

from typing import Any

from safeship.plugins import load

ROUTERS: dict[str, str] = {
    "builtin": "safeship.routing.builtin:BuiltinRouter",
    "process": "safeship.routing.remote:RemoteRouter",
    "sim": "safeship.routing.sim:SimRouter",
}


def router_class(name: str) -> Any:
    return load(ROUTERS, name, "router")
