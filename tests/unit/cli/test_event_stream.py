"""`-v` while a command follows a deployment: the controller's events, each once and in order, as
log lines on stderr with UTC times; control characters and registered secrets never printed raw."""

from __future__ import annotations

import logging

import pytest

from safeship.cli.output import EventStream
from safeship.redaction import register


def test_each_event_is_logged_once_in_order_with_its_utc_time(caplog: pytest.LogCaptureFixture) -> None:
    stream = EventStream("deploy-0123456789")
    first = [{"at": 1_767_225_600.0, "kind": "created", "message": "deploy user-service v1.3.0"}]
    later = [*first, {"at": 1_767_225_601.5, "kind": "weights", "message": "v1.3.0 25%\x1b[2J"},
             {"at": 1_767_225_602.0, "kind": "promoted", "message": "no regression"}]
    with caplog.at_level(logging.INFO, logger="safeship.events"):
        stream.update(first)
        stream.update(first)  # polled again, nothing new
        stream.update(later)
    lines = [r.getMessage() for r in caplog.records if r.name == "safeship.events"]
    assert lines == [
        "2026-01-01 00:00:00 UTC deploy-0123456789 created: deploy user-service v1.3.0",
        "2026-01-01 00:00:01 UTC deploy-0123456789 weights: v1.3.0 25%\\x1b[2J",
        "2026-01-01 00:00:02 UTC deploy-0123456789 promoted: no regression",
    ]


def test_a_registered_secret_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    register(["s3cr3t-value-for-the-test"])
    with caplog.at_level(logging.INFO, logger="safeship.events"):
        EventStream("deploy-0000000001").update([{"at": 0.0, "kind": "gate",
                                                  "message": "token s3cr3t-value-for-the-test"}])
    [line] = [r.getMessage() for r in caplog.records if r.name == "safeship.events"]
    assert "s3cr3t" not in line and "***" in line
