"""Where instances run: one module per platform, registered here by name.

A registered platform class has the class attributes of `platforms.base.PlatformTraits` and
`create(setup: PlatformSetup) -> Platform`. What differs between platforms is asked of those
attributes, never of a platform's name."""

from __future__ import annotations

from typing import Any

from safeship.errors import InputError
from safeship.plugins import load, register_in

PLATFORMS: dict[str, str | type] = {
    "kubernetes": "safeship.platforms.kubernetes:KubernetesPlatform",
    "local": "safeship.platforms.local:LocalPlatform",
    "sim": "safeship.platforms.sim:SimPlatform",
}

DEFAULT_PLATFORM = "local"  # what an environment without `platform:` uses


def platform_class(name: str) -> Any:
    """The platform class registered as `name`; an unknown name is an InputError listing the known ones."""
    return load(PLATFORMS, name, "platform")


def register(name: str, cls_or_path: str | type) -> None:
    """Register (or replace) the platform called `name`: a class or a "module:Class" path."""
    register_in(PLATFORMS, name, cls_or_path, "platform")


def runs_in_controller(name: str) -> bool:
    """Whether deployments on platform `name` are driven by the controller daemon. A name this
    installation does not know counts as one, so that the controller is the one that refuses it."""
    try:
        return bool(platform_class(name).runs_in_controller)
    except InputError:
        return True


def runs_commands(name: str) -> bool:
    """Whether platform `name` runs `services.<name>.command` as processes on this host (False
    for a name this installation does not know)."""
    try:
        return bool(platform_class(name).runs_commands)
    except InputError:
        return False
