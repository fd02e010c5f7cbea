"""Explicit plug-in registries: a dict from name to "module:Class" (loaded lazily, so that a heavy
optional dependency is imported only by those who use it) or to a class registered at run time.
An unknown name fails loudly, listing the known ones."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from safeship.errors import InputError

_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def load(registry: Mapping[str, str | type], name: str, kind: str) -> Any:
    """The class registered as `name`; an unknown name is an InputError listing the known ones."""
    try:
        entry = registry[name]
    except KeyError:
        raise InputError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}") from None
    if isinstance(entry, type):
        return entry
    module, attribute = entry.split(":")
    return getattr(importlib.import_module(module), attribute)


def register_in(registry: MutableMapping[str, str | type], name: str, cls_or_path: str | type, kind: str) -> None:
    """Add (or replace) `name` in `registry`: a class, or a "module:Class" path loaded on first use."""
    if not name or not isinstance(name, str):
        raise InputError(f"a {kind} needs a name, got {name!r}")
    if isinstance(cls_or_path, str) and not _PATH.fullmatch(cls_or_path):
        raise InputError(f"{kind} {name!r}: expected a class or \"module:Class\", got {cls_or_path!r}")
    if not isinstance(cls_or_path, str | type):
        raise InputError(f"{kind} {name!r}: expected a class or \"module:Class\", got {cls_or_path!r}")
    registry[name] = cls_or_path
