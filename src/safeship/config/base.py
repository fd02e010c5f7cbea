"""The base of every config model, and the number types they share."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
"""An int that refuses `true`/`false` (pydantic would read them as 1 and 0)."""
Number = Annotated[float, BeforeValidator(_not_bool)]
"""A finite float that refuses `true`/`false`."""

MAX_COUNT = 10_000  # replicas, surge, thresholds: more is a typo, not a plan
