"""Secrets: one private file per variable under `<root>/secrets/<environment>/`, and a redactor that
keeps their values out of logs, API bodies and error messages.

A secret file's name is the variable's name and its content the value (one trailing newline is
dropped, as `echo value > FILE` adds it). Files readable by group or others are refused: a secret
that every local user can read is not a secret. Symlinks are followed and the target's mode is
checked, so a Kubernetes-style mount (NAME -> ..data/NAME) works when it is 0600; dot-files
(`.gitkeep`, `..data`) are skipped.

The redactor replaces every non-empty secret value, however short. A one-character secret will
blank out that character everywhere, which makes logs ugly but never leaks; a length cut-off would
do the opposite, so short secrets are the operator's problem to fix, not ours to hide.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from safeship.errors import ConfigError

MASK = "***"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_T = TypeVar("_T")


# ---------------------------------------------------------------- loading


def secrets_dir(root: Path, environment: str) -> Path:
    return Path(root) / "secrets" / environment


def load_secrets(root: Path, environment: str, names: Sequence[str] | None = None) -> dict[str, str]:
    """The secrets of `environment`: all of them, or exactly `names` (each must exist)."""
    directory = secrets_dir(root, environment)
    if not environment or environment in (".", "..") or "/" in environment or "\0" in environment:
        raise ConfigError(str(directory), "environment", f"{environment!r} is not a valid environment name")
    if names is not None:
        _check_names(directory, names)
    if not directory.exists():
        if names:
            _missing(directory, names)
        return {}
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "the secrets location is not a directory")
    if names is None:
        names = sorted(_listed_names(directory))
    else:
        _missing(directory, [n for n in names if not (directory / n).exists()])
    return {name: _read_secret(directory / name) for name in names}


def _check_names(directory: Path, names: Sequence[str]) -> None:
    for name in names:
        if not _NAME.fullmatch(name):
            raise ConfigError(str(directory), "secrets", f"{name!r} is not a valid variable name")


def _missing(directory: Path, missing: Sequence[str]) -> None:
    if missing:
        what = ", ".join(missing)
        raise ConfigError(str(directory), what, f"secret file missing: create {directory / missing[0]} (mode 0600)")


def _listed_names(directory: Path) -> list[str]:
    names = []
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue  # .gitkeep, and Kubernetes' ..data / ..<timestamp> bookkeeping
        if not _NAME.fullmatch(entry.name):
            raise ConfigError(str(entry), "name", "secret file names must be variable names (letters, digits, _)")
        names.append(entry.name)
    return names


def _read_secret(path: Path) -> str:
    try:
        # O_NONBLOCK: a FIFO planted here must not hang the controller; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read secret file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)  # the file we read, not whatever the path named a moment earlier
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), "type", "secret files must be regular files")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                str(path),
                "mode",
                f"secret files must be private (0600 or stricter), got {oct(mode)}; run chmod 600 {path}",
            )
        data = handle.read()
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "encoding", "secret files must be UTF-8 text") from None
    if value.endswith("\r\n"):
        return value[:-2]
    return value.removesuffix("\n")


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


# ---------------------------------------------------------------- the process-wide redactor

_shared = Redactor()


def register(values: Iterable[str]) -> None:
    """Make these values secret for the whole process (controller, CLI and API share one redactor)."""
    _shared.add(values)


def redactor() -> Redactor:
    return _shared
