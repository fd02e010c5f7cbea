"""Where instances run: one module per platform, registered here by name."""

from __future__ import annotations

from typing import Any

from safeship.plugins import load

PLATFORMS: dict[str, str] = {
    "local": "safeship.platforms.local:LocalPlatform",
    "sim": "safeship.platforms.sim:SimPlatform",
}


def platform_class(name: str) -> Any:
    return load(PLATFORMS, name, "platform")
