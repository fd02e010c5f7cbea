"""Kubernetes-style quantities: cpu "500m" or "2", memory "128Mi", "8Gi", "1G"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_MEM_UNITS = {
    "": 1 / 2**20, "k": 1e3 / 2**20, "m": 1e6 / 2**20, "g": 1e9 / 2**20, "t": 1e12 / 2**20,
    "ki": 1 / 1024, "mi": 1.0, "gi": 1024.0, "ti": 1024.0**2,
}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?$")


def parse_cpu(value: Any) -> float:
    """Cores as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("m"):
                return float(text[:-1]) / 1000
            cores = float(text)
            if cores >= 0:
                return cores
        except ValueError:
            pass
    raise ValueError(f"expected cpu cores such as '500m' or '2', got {value!r}")


def parse_memory_mb(value: Any) -> float:
    """Mebibytes as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value) / 2**20  # a bare number is bytes, as in Kubernetes
    if isinstance(value, str):
        match = _MEM.match(value.strip().lower())
        if match:
            return float(match.group(1)) * _MEM_UNITS[match.group(2) or ""]
    raise ValueError(f"expected memory such as '128Mi' or '8Gi', got {value!r}")


Cpu = Annotated[float, BeforeValidator(parse_cpu)]
MemoryMb = Annotated[float, BeforeValidator(parse_memory_mb)]
