"""URLs that safeship itself logs or records go through the redactor: a webhook's or gate's
credential (`?token=`, a password, a Slack-style secret path) is masked; the controller's logging
setup keeps httpx's request lines (whole URLs) out of its log."""

from __future__ import annotations

import logging

import pytest

from safeship.api.server import quiet_http_clients
from safeship.redaction import MASK, redact_url, redact_urls, register


@pytest.mark.parametrize(("url", "shown"), [
    ("http://127.0.0.1:9000/hook?token=abc123&team=x", f"http://127.0.0.1:9000/{MASK}?token={MASK}&team={MASK}"),
    ("https://bot:pa55word@hooks.example.com/", f"https://bot:{MASK}@hooks.example.com/"),
    ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", f"https://hooks.slack.com/{MASK}"),
    ("slack://TokenA/TokenB/TokenC/#deploys", f"slack://{MASK}"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
])
def test_a_logged_url_keeps_no_credential(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_url_inside_an_error_is_redacted_with_registered_secrets() -> None:
    register(["reg-secret-77c1"])
    text = "POST http://127.0.0.1:1/hook?token=q1w2e3 failed with reg-secret-77c1"
    redacted = redact_urls(text, ["http://127.0.0.1:1/hook?token=q1w2e3"])
    assert "q1w2e3" not in redacted and "reg-secret-77c1" not in redacted
    assert "http://127.0.0.1:1/" in redacted


def test_the_controller_logs_httpx_and_httpcore_at_warning_only() -> None:
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    before = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        quiet_http_clients()
        for logger in loggers:
            assert not logger.isEnabledFor(logging.INFO)
            assert logger.isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
