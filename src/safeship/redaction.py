"""Redaction of secret values: one process-wide redactor shared by the store, the controller, the
API and the commands, so that a secret value never reaches a log line, an event, an API answer or an
error message. It sits at the bottom of the package so that the store can use it too; the secret
files themselves are read by `environments/secrets.py`.

The redactor replaces every non-empty secret value, however short. A one-character secret will
blank out that character everywhere, which makes logs ugly but never leaks; a length cut-off would
do the opposite, so short secrets are the operator's problem to fix, not ours to hide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_T = TypeVar("_T")


# ---------------------------------------------------------------- redaction


class Redactor:
    """Replaces every occurrence of any known secret value with `***`.

    Overlapping values are masked as a union (secrets "abcd" and "cdef" turn "abcdef" into "***"),
    so no fragment of either survives. Values can be added while other threads redact.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(values)

    @property
    def values(self) -> tuple[str, ...]:
        return self._values

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._values) | {v for v in values if v}
            self._values = tuple(sorted(merged, key=lambda v: (-len(v), v)))  # longest first

    def redact_text(self, text: str) -> str:
        values = self._values
        if not values or not text:
            return text
        spans: list[tuple[int, int]] = []
        for value in values:
            start = text.find(value)
            while start != -1:
                spans.append((start, start + len(value)))
                start = text.find(value, start + 1)
        if not spans:
            return text
        spans.sort()
        pieces: list[str] = []
        cursor = 0
        span_start, span_end = spans[0]
        for start, end in spans[1:]:
            if start <= span_end:
                span_end = max(span_end, end)
                continue
            pieces += [text[cursor:span_start], MASK]
            cursor, span_start, span_end = span_end, start, end
        pieces += [text[cursor:span_start], MASK, text[span_end:]]
        return "".join(pieces)

    def redact(self, obj: _T) -> _T:
        """A copy of `obj` with secrets masked in every str and bytes, in dict keys and values, lists,
        tuples and sets. Other objects are returned as they are."""
        if not self._values:
            return obj  # nothing is secret: no copy, no walk (the engine calls this on every transition)
        return cast(_T, self._redact(obj))

    def _redact(self, obj: object) -> object:
        if isinstance(obj, str):
            return self.redact_text(obj)
        if isinstance(obj, bytes):
            return self.redact_text(obj.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        if isinstance(obj, Mapping):
            return {self._redact(key): self._redact(value) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self._redact(item) for item in obj]
        if isinstance(obj, tuple):
            items = [self._redact(item) for item in obj]
            if hasattr(obj, "_fields"):  # a named tuple: keep its type
                named: Any = type(obj)
                return named(*items)
            return tuple(items)
        if isinstance(obj, set | frozenset):
            return type(obj)(self._redact(item) for item in obj)
        return obj


class RedactingFilter(logging.Filter):
    """Formats each record's message now and masks secrets in it, in its traceback and stack text.

    Attach it to handlers, not loggers: a logger's filters do not see records from child loggers.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: logging reports them later, so mask them too
            record.msg = self.redactor.redact_text(str(record.msg))
            record.args = self.redactor.redact(record.args)
        else:
            record.msg, record.args = self.redactor.redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact_text(record.stack_info)
        return True


def install(redactor: Redactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Add a RedactingFilter to every handler of `logger` (the root logger by default). Call it after
    logging is configured: handlers added later are not covered."""
    target = logger if logger is not None else logging.getLogger()
    existing = [
        f
        for handler in target.handlers
        for f in handler.filters
        if isinstance(f, RedactingFilter) and f.redactor is redactor
    ]
    log_filter = existing[0] if existing else RedactingFilter(redactor)
    for handler in target.handlers:
        if log_filter not in handler.filters:
            handler.addFilter(log_filter)
    return log_filter


def redact_url(url: str) -> str:
    """A URL as it may be logged: its password, path, query values and fragment masked, then every
    known secret value too. A webhook or gate URL often carries a credential (`?token=...`,
    `https://user:pass@host/`, or the path itself, as Slack's `/services/T0/B0/XXXX`); a URL of
    another scheme (Apprise's `slack://TokenA/TokenB/...`) keeps only its scheme."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.scheme not in ("http", "https"):
        return f"{parts.scheme}://{MASK}" if parts.scheme else MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = "&".join(f"{pair.split('=', 1)[0]}={MASK}" if pair else pair for pair in parts.query.split("&"))
    path = parts.path if parts.path in ("", "/") else f"/{MASK}"
    shown = urlunsplit((parts.scheme, netloc, path, query, MASK if parts.fragment else ""))
    return _shared.redact_text(shown)


def redact_urls(text: str, urls: Iterable[str]) -> str:
    """`text` with each of `urls` replaced by its redacted form, and every known secret masked."""
    for url in sorted(set(urls), key=len, reverse=True):
        if url:
            text = text.replace(url, redact_url(url))
    return _shared.redact_text(text)


# ---------------------------------------------------------------- the process-wide redactor

_shared = Redactor()


def register(values: Iterable[str]) -> None:
    """Make these values secret for the whole process (controller, CLI and API share one redactor)."""
    _shared.add(values)


def redactor() -> Redactor:
    return _shared
