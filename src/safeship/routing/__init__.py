"""Who gets traffic. One module per router, registered here by name, loaded lazily."""

from __future__ import annotations

import importlib
from typing import Any

from safeship.errors import InputError

ROUTERS: dict[str, str] = {
    "builtin": "safeship.routing.builtin:BuiltinRouter",
    "sim": "safeship.routing.sim:SimRouter",
    "process": "safeship.routing.remote:RemoteRouter",
}


def router_class(name: str) -> Any:
    """The router class registered as `name`; an unknown name is an error listing the known ones."""
    try:
        module, attribute = ROUTERS[name].split(":")
    except KeyError:
        raise InputError(f"unknown router {name!r}; known routers: {', '.join(sorted(ROUTERS))}") from None
    return getattr(importlib.import_module(module), attribute)
