"""Durations as people write them: "5m", "30s", "2m30s", "1h", "250ms", or a number of seconds.

Every duration is bounded, so that a typo such as "99999999999h" is refused when the config loads
instead of becoming a wait that never ends:

- `Duration`: from 0 up to 30 days;
- `PositiveDuration`: at least 1ms, up to 30 days (timeouts and intervals: 0 would fail every probe
  or spin without pause);
- `StepDuration`: at least 1ms, up to 7 days (how long one step of a rollout or one analysis waits).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from safeship.config.names import shown as show

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

DAY = 86400.0
MAX_DURATION = 30 * DAY
MAX_STEP_DURATION = 7 * DAY


def parse_duration(value: Any) -> float:
    """Seconds as a float, from 0 up to 30 days. Raises ValueError with the offending value named."""
    return _bounded(value, positive=False, at_most=MAX_DURATION)


def parse_positive_duration(value: Any) -> float:
    """Seconds as a float, at least 1ms and up to 30 days."""
    return _bounded(value, positive=True, at_most=MAX_DURATION)


def parse_step_duration(value: Any) -> float:
    """Seconds as a float, at least 1ms and up to 7 days."""
    return _bounded(value, positive=True, at_most=MAX_STEP_DURATION)


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30s' or '5m', got {show(value)}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {show(value)}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {show(value)}")
        try:
            return float(value)
        except OverflowError:
            return math.inf  # an integer too large for a float: refused as too long by the caller
    if isinstance(value, str):
        text = value.strip().lower()
        if text and _PART.sub("", text) == "":
            return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
    raise ValueError(f"expected a duration such as '30s', '5m' or '1h', got {show(value)}")


def _bounded(value: Any, *, positive: bool, at_most: float) -> float:
    seconds = _seconds(value)
    if positive and seconds < 0.001:
        raise ValueError(f"must be at least 1ms, got {show(value)}")
    if seconds > at_most:
        raise ValueError(f"must be at most {at_most / DAY:.0f} days ({at_most:.0f}s), got {show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short text that parses back to `seconds` exactly (to the nanosecond)."""
    text = _short(seconds)
    if math.isfinite(seconds) and abs(_seconds(text) - seconds) > 1e-9 * max(1.0, seconds):
        text = f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    return text


def _short(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m" if seconds % 60 == 0 else f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _schema(minimum: float, maximum: float) -> WithJsonSchema:
    """What the API's schema says a duration is: seconds as a number, or text such as "30s"."""
    return WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": minimum, "maximum": maximum},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"},
    ], "description": f"seconds, or a duration such as \"30s\", \"5m\", \"1h\" (at most {_short(maximum)})"})


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration),
                     _schema(0, MAX_DURATION)]
PositiveDuration = Annotated[float, BeforeValidator(parse_positive_duration), PlainSerializer(format_duration),
                             _schema(0.001, MAX_DURATION)]
StepDuration = Annotated[float, BeforeValidator(parse_step_duration), PlainSerializer(format_duration),
                         _schema(0.001, MAX_STEP_DURATION)]
