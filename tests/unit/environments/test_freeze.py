"""Freeze windows as tables of instants: overnight windows, week wrap-around and Berlin's DST days."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from safeship.environments.freeze import (
    FreezeWindow,
    active_window,
    describe,
    ends_at,
    parse_window,
    parse_windows,
)
from safeship.errors import ConfigError

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")

WEEKEND = FreezeWindow("weekend-freeze", ("fri",), "18:00", "08:00", "Europe/Berlin")
SUNDAY_NIGHT = FreezeWindow("sunday-maintenance", ("sun",), "22:00", "02:00")
LUNCH = FreezeWindow("lunch", ("daily",), "12:00", "13:00")
# 02:30 does not exist in Berlin on 2024-03-31 and happens twice on 2024-10-27.
DST_NIGHT = FreezeWindow("dst-night", ("sunday",), "02:30", "04:00", "Europe/Berlin")
WHOLE_SATURDAY = FreezeWindow("saturday", ("Saturday",), "00:00", "24:00", "Europe/Berlin")


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "now", "active"),
    [
        # Friday 18:00 Berlin is 16:00 UTC in summer (CEST) and 17:00 UTC in winter (CET).
        (WEEKEND, utc("2024-07-05 15:59"), False),
        (WEEKEND, utc("2024-07-05 16:00"), True),
        (WEEKEND, utc("2024-01-05 16:30"), False),
        (WEEKEND, utc("2024-01-05 17:00"), True),
        # ...and it runs into Saturday morning, end exclusive.
        (WEEKEND, utc("2024-07-06 05:59"), True),
        (WEEKEND, utc("2024-07-06 06:00"), False),
        (WEEKEND, utc("2024-01-06 06:59"), True),
        (WEEKEND, utc("2024-01-06 07:00"), False),
        # Only the listed start day opens it: Thursday evening and Saturday evening are free.
        (WEEKEND, utc("2024-07-04 20:00"), False),
        (WEEKEND, utc("2024-07-06 20:00"), False),
        (WEEKEND, utc("2024-07-05 07:00"), False),  # Friday morning belongs to a Thursday start
        # Sunday night into Monday: the wrap from weekday 6 to 0.
        (SUNDAY_NIGHT, utc("2024-07-07 21:59"), False),
        (SUNDAY_NIGHT, utc("2024-07-07 22:00"), True),
        (SUNDAY_NIGHT, utc("2024-07-08 01:59:59"), True),
        (SUNDAY_NIGHT, utc("2024-07-08 02:00"), False),
        (SUNDAY_NIGHT, utc("2024-07-08 22:30"), False),  # Monday night is not listed
        (LUNCH, utc("2024-07-03 12:30"), True),
        (LUNCH, utc("2024-07-06 12:00"), True),
        (LUNCH, utc("2024-07-06 13:00"), False),
        # Spring forward (2024-03-31, 02:00 CET -> 03:00 CEST): the window opens when clocks land at 03:00.
        (DST_NIGHT, utc("2024-03-31 00:59"), False),  # 01:59 CET
        (DST_NIGHT, utc("2024-03-31 01:00"), True),  # 03:00 CEST
        (DST_NIGHT, utc("2024-03-31 01:59"), True),  # 03:59 CEST
        (DST_NIGHT, utc("2024-03-31 02:00"), False),  # 04:00 CEST
        # Fall back (2024-10-27, 03:00 CEST -> 02:00 CET): 02:45 happens twice, inside both times.
        (DST_NIGHT, utc("2024-10-27 00:29"), False),  # 02:29 CEST
        (DST_NIGHT, utc("2024-10-27 00:45"), True),  # 02:45 CEST
        (DST_NIGHT, utc("2024-10-27 01:45"), True),  # 02:45 CET
        (DST_NIGHT, utc("2024-10-27 02:59"), True),  # 03:59 CET
        (DST_NIGHT, utc("2024-10-27 03:00"), False),  # 04:00 CET
        (WHOLE_SATURDAY, utc("2024-07-05 21:59"), False),  # Friday 23:59 CEST
        (WHOLE_SATURDAY, utc("2024-07-05 22:00"), True),  # Saturday 00:00 CEST
        (WHOLE_SATURDAY, utc("2024-07-06 21:59:59"), True),
        (WHOLE_SATURDAY, utc("2024-07-06 22:00"), False),
        # The caller's zone does not matter, only the instant.
        (WEEKEND, dt.datetime(2024, 7, 5, 12, 0, tzinfo=ZoneInfo("America/New_York")), True),
        (WEEKEND, dt.datetime(2024, 7, 5, 11, 59, tzinfo=ZoneInfo("America/New_York")), False),
    ],
)
def test_active_window_table(window: FreezeWindow, now: dt.datetime, active: bool) -> None:
    assert active_window([window], now) == (window if active else None)


def test_the_first_covering_window_is_returned() -> None:
    now = utc("2024-07-07 12:15")  # Sunday lunch
    assert active_window([WEEKEND, LUNCH, SUNDAY_NIGHT], now) is LUNCH
    assert active_window([WEEKEND, SUNDAY_NIGHT], now) is None
    assert active_window([], now) is None


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        active_window([LUNCH], dt.datetime(2024, 7, 3, 12, 30))


@pytest.mark.parametrize(
    ("window", "now", "end"),
    [
        (WEEKEND, utc("2024-07-05 20:00"), dt.datetime(2024, 7, 6, 8, 0, tzinfo=BERLIN)),
        (WEEKEND, utc("2024-07-06 05:00"), dt.datetime(2024, 7, 6, 8, 0, tzinfo=BERLIN)),
        (LUNCH, utc("2024-07-03 12:30"), dt.datetime(2024, 7, 3, 13, 0, tzinfo=UTC)),
        (WHOLE_SATURDAY, utc("2024-07-06 12:00"), dt.datetime(2024, 7, 7, 0, 0, tzinfo=BERLIN)),
        (SUNDAY_NIGHT, utc("2024-07-08 01:00"), dt.datetime(2024, 7, 8, 2, 0, tzinfo=UTC)),
        (LUNCH, utc("2024-07-03 14:00"), None),
    ],
)
def test_ends_at(window: FreezeWindow, now: dt.datetime, end: dt.datetime | None) -> None:
    assert ends_at(window, now) == end


def test_describe() -> None:
    assert describe(WEEKEND) == "weekend-freeze (fri 18:00-08:00 Europe/Berlin)"
    assert describe(FreezeWindow("nights", ("mon", "tue"), "20:00", "06:00")) == "nights (mon,tue 20:00-06:00 UTC)"
    assert describe(WHOLE_SATURDAY) == "saturday (sat 00:00-24:00 Europe/Berlin)"


def test_parse_window_normalises_days() -> None:
    data = {"name": "weekend-freeze", "days": ["Friday"], "start": "18:00", "end": "08:00", "timezone": "Europe/Berlin"}
    assert parse_window(data, "safeship.yaml", "freeze[0]") == WEEKEND
    assert parse_window({"name": "l", "days": "daily", "start": "12:00", "end": "13:00"}, "f", "w").days == ("daily",)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"days": ["funday"]}, "freeze[0].days", "unknown day 'funday'"),
        ({"days": []}, "freeze[0].days", "at least one day"),
        ({"days": 5}, "freeze[0].days", "list of day names"),
        ({"days": ["daily", "mon"]}, "freeze[0].days", "list it alone"),
        ({"start": "25:00"}, "freeze[0].start", "out of range 00:00..23:59"),
        ({"start": "24:00"}, "freeze[0].start", "out of range"),
        ({"start": "7pm"}, "freeze[0].start", "use HH:MM"),
        ({"end": "08:60"}, "freeze[0].end", "out of range 00:00..24:00"),
        ({"end": "18:00"}, "freeze[0].end", "equals start"),
        ({"timezone": "Mars/Olympus"}, "freeze[0].timezone", "unknown time zone 'Mars/Olympus'"),
        ({"timezone": "../../etc/passwd"}, "freeze[0].timezone", "unknown time zone"),
        ({"timezone": 1}, "freeze[0].timezone", "must be a string"),
        ({"name": " "}, "freeze[0].name", "must not be empty"),
        ({"tz": "UTC"}, "freeze[0].tz", "unknown key"),
        ({"start": None}, "freeze[0].start", "must be a string"),
    ],
)
def test_parse_window_errors_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    data: dict[str, Any] = {"name": "w", "days": ["fri"], "start": "18:00", "end": "08:00", **changes}
    with pytest.raises(ConfigError) as caught:
        parse_window(data, "safeship.yaml", "freeze[0]")
    assert caught.value.source == "safeship.yaml"
    assert caught.value.field == field
    assert words in caught.value.detail


def test_a_missing_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"safeship.yaml: w\.end: is required"):
        parse_window({"name": "w", "days": ["fri"], "start": "18:00"}, "safeship.yaml", "w")


def test_parse_windows_refuses_duplicate_names() -> None:
    item = {"name": "w", "days": ["fri"], "start": "18:00", "end": "08:00"}
    assert len(parse_windows([item], "f", "freeze")) == 1
    with pytest.raises(ConfigError, match=r"freeze\[1\]\.name: window 'w' is listed twice"):
        parse_windows([item, item], "f", "freeze")
