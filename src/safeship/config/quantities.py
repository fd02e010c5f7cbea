"""Kubernetes-style quantities: cpu "500m" or "2", memory "128Mi", "8Gi", "1G".

Both must be finite and not negative; anything else is refused with the value named.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from safeship.config.names import shown as show

_MEM_UNITS = {
    "": 1 / 2**20, "k": 1e3 / 2**20, "m": 1e6 / 2**20, "g": 1e9 / 2**20, "t": 1e12 / 2**20,
    "ki": 1 / 1024, "mi": 1.0, "gi": 1024.0, "ti": 1024.0**2,
}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?$")


def _usable(number: float) -> bool:
    return math.isfinite(number) and number >= 0


def parse_cpu(value: Any) -> float:
    """Cores as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            cores = float(value)
        except OverflowError:
            cores = math.inf
        if _usable(cores):
            return cores
    if isinstance(value, str):
        text = value.strip()
        try:
            cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            pass
        else:
            if _usable(cores):
                return cores
    raise ValueError(f"expected cpu cores such as '500m' or '2', got {show(value)}")


def parse_memory_mb(value: Any) -> float:
    """Mebibytes as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            mb = float(value) / 2**20  # a bare number is bytes, as in Kubernetes
        except OverflowError:
            mb = math.inf
        if _usable(mb):
            return mb
    if isinstance(value, str):
        match = _MEM.match(value.strip().lower())
        if match:
            mb = float(match.group(1)) * _MEM_UNITS[match.group(2) or ""]
            if _usable(mb):
                return mb
    raise ValueError(f"expected memory such as '128Mi' or '8Gi', got {show(value)}")


Cpu = Annotated[float, BeforeValidator(parse_cpu)]
MemoryMb = Annotated[float, BeforeValidator(parse_memory_mb)]
