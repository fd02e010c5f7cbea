"""Freeze windows: weekly wall-clock periods in which an environment takes no deployments.

A window lists the days it starts on, a start and an end time and a time zone. Times are local wall
clock in that zone, so "18:00" stays 18:00 across daylight-saving changes. The start is inclusive and
the end exclusive. An end earlier than the start means "until that time on the next day", and the
window belongs to the day it starts on: `days: [fri], start: "18:00", end: "08:00"` covers Friday
18:00 to Saturday 08:00. A longer freeze is several windows (or `end: "24:00"` plus whole days).

On the day clocks jump forward, a window starting inside the skipped hour begins when the clock
lands after it; on the day they fall back, the repeated hour is inside the window both times.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from safeship.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
DAILY = "daily"
_FULL_NAMES = {
    full: full[:3] for full in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_FIELDS = ("name", "days", "start", "end", "timezone")
_DAY_MINUTES = 24 * 60


class _Invalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class FreezeWindow:
    name: str
    days: tuple[str, ...]  # "mon".."sun" (full names accepted and shortened), or ("daily",)
    start: str  # "HH:MM", 00:00..23:59
    end: str  # "HH:MM", 00:00..24:00; earlier than start: on the next day
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise _Invalid("name", "must not be empty")
        object.__setattr__(self, "days", _normalise_days(self.days))
        start, end = _minutes(self.start, "start"), _minutes(self.end, "end", allow_24=True)
        if start == end:
            raise _Invalid("end", f"equals start ({self.start}); a whole day is 00:00-24:00")
        _zone(self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    @property
    def weekdays(self) -> frozenset[int]:
        if DAILY in self.days:
            return frozenset(range(7))
        return frozenset(DAYS.index(day) for day in self.days)

    @property
    def crosses_midnight(self) -> bool:
        return _minutes(self.end, "end", allow_24=True) < _minutes(self.start, "start")


def parse_window(data: Mapping[str, object], source: str, field: str) -> FreezeWindow:
    """Build a window from config data; every problem is a ConfigError naming `field`.<key>."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(source, f"{field}.{unknown[0]}", f"unknown key; known: {', '.join(_FIELDS)}")
    for key in ("name", "days", "start", "end"):
        if key not in data:
            raise ConfigError(source, f"{field}.{key}", "is required")
    days = data["days"]
    if isinstance(days, str):
        days = [days]
    if not isinstance(days, Sequence) or not all(isinstance(d, str) for d in days):
        raise ConfigError(source, f"{field}.days", "must be a list of day names (mon..sun) or 'daily'")
    texts = {}
    for key in ("name", "start", "end", "timezone"):
        value = data.get(key, "UTC")
        if not isinstance(value, str):
            raise ConfigError(source, f"{field}.{key}", f"must be a string, got {value!r}")
        texts[key] = value
    try:
        return FreezeWindow(texts["name"], tuple(days), texts["start"], texts["end"], texts["timezone"])
    except _Invalid as exc:
        raise ConfigError(source, f"{field}.{exc.field}", exc.message) from None


def parse_windows(items: Sequence[Mapping[str, object]], source: str, field: str) -> list[FreezeWindow]:
    windows = [parse_window(item, source, f"{field}[{i}]") for i, item in enumerate(items)]
    names = [w.name for w in windows]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(source, f"{field}[{i}].name", f"window {name!r} is listed twice")
    return windows


def active_window(windows: Sequence[FreezeWindow], now: dt.datetime) -> FreezeWindow | None:
    """The first window that covers `now` (which must carry a time zone), or None."""
    for window in windows:
        if _opened_at(window, now) is not None:
            return window
    return None


def ends_at(window: FreezeWindow, now: dt.datetime) -> dt.datetime | None:
    """When the occurrence of `window` covering `now` ends (in the window's zone), or None."""
    opened = _opened_at(window, now)
    if opened is None:
        return None
    end = _minutes(window.end, "end", allow_24=True)
    day = opened + dt.timedelta(days=1 if window.crosses_midnight or end == _DAY_MINUTES else 0)
    clock = dt.time(*divmod(end % _DAY_MINUTES, 60))
    return dt.datetime.combine(day, clock, tzinfo=window.zone)


def describe(window: FreezeWindow) -> str:
    """e.g. "weekend-freeze (fri 18:00-08:00 Europe/Berlin)"."""
    return f"{window.name} ({','.join(window.days)} {window.start}-{window.end} {window.timezone})"


def _opened_at(window: FreezeWindow, now: dt.datetime) -> dt.date | None:
    """The local date on which the occurrence covering `now` started, or None if none does."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(window.zone)
    minute = local.hour * 60 + local.minute
    start = _minutes(window.start, "start")
    end = _minutes(window.end, "end", allow_24=True)
    today, weekdays = local.date(), window.weekdays
    if start < end:
        return today if local.weekday() in weekdays and start <= minute < end else None
    if minute >= start and local.weekday() in weekdays:
        return today
    yesterday = today - dt.timedelta(days=1)
    if minute < end and yesterday.weekday() in weekdays:
        return yesterday
    return None


def _normalise_days(days: Sequence[str]) -> tuple[str, ...]:
    if isinstance(days, str) or not days:
        raise _Invalid("days", "must list at least one day (mon..sun) or 'daily'")
    normalised: list[str] = []
    for day in days:
        key = day.strip().lower()
        key = _FULL_NAMES.get(key, key)
        if key not in DAYS and key != DAILY:
            raise _Invalid("days", f"unknown day {day!r}; use {', '.join(DAYS)} or {DAILY}")
        if key not in normalised:
            normalised.append(key)
    if DAILY in normalised and len(normalised) > 1:
        raise _Invalid("days", f"{DAILY!r} already covers every day; list it alone")
    return tuple(normalised)


def _minutes(text: str, field: str, *, allow_24: bool = False) -> int:
    match = _TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise _Invalid(field, f"{text!r} is not a time; use HH:MM (24-hour)")
    hours, minutes = int(match[1]), int(match[2])
    if allow_24 and (hours, minutes) == (24, 0):
        return _DAY_MINUTES
    if hours > 23 or minutes > 59:
        upper = "24:00" if allow_24 else "23:59"
        raise _Invalid(field, f"{text!r} is out of range 00:00..{upper}")
    return hours * 60 + minutes


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise _Invalid("timezone", f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from None
