"""Explicit plug-in registries (STYLE §2): a dict from name to "module:Class", loaded lazily so a
heavy optional dependency is imported only by those who use it; an unknown name fails loudly."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from safeship.errors import InputError


def load(registry: Mapping[str, str], name: str, kind: str) -> Any:
    """The class registered as `name`; an unknown name is an InputError listing the known ones."""
    try:
        module, attribute = registry[name].split(":")
    except KeyError:
        raise InputError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}") from None
    return getattr(importlib.import_module(module), attribute)
