"""Where instances run. One module per platform, registered here by name; modules load lazily so
that a heavy optional dependency (a Kubernetes client) is imported only by those who use it."""

from __future__ import annotations

import importlib
from typing import Any

from safeship.errors import InputError

PLATFORMS: dict[str, str] = {
    "local": "safeship.platforms.local:LocalPlatform",
    "sim": "safeship.platforms.sim:SimPlatform",
}


def platform_class(name: str) -> Any:
    """The platform class registered as `name`; an unknown name is an error listing the known ones."""
    try:
        module, attribute = PLATFORMS[name].split(":")
    except KeyError:
        raise InputError(f"unknown platform {name!r}; known platforms: {', '.join(sorted(PLATFORMS))}") from None
    return getattr(importlib.import_module(module), attribute)
