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

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from safeship.config.names import check_name, inside
from safeship.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_T = TypeVar("_T")


# ---------------------------------------------------------------- loading


def secrets_dir(root: Path, environment: str) -> Path:
    """`<root>/secrets/<environment>`. ConfigError (field `environment`) unless `environment` is a
    valid environment name and the folder lies inside `<root>/secrets`."""
    base = Path(root) / "secrets"
    check_name("environment", environment, source=str(base), field="environment")
    return inside(base, environment)


def load_secrets(root: Path, environment: str, names: Sequence[str] | None = None) -> dict[str, str]:
    """The secrets of `environment`: all of them, or exactly `names` (each must exist).

    A name from the config is a variable name (letters, digits, '_'), never '/' or '.', so its
    file is always a direct child of `secrets/<environment>/`; any other name is refused."""
    directory = secrets_dir(root, environment)
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


# Redaction lives at the bottom of the package (the store uses it); re-exported for callers here.
from safeship.redaction import MASK, RedactingFilter, Redactor, install, redactor, register  # noqa: E402

__all__ = ["MASK", "RedactingFilter", "Redactor", "install", "load_secrets", "redactor", "register", "secrets_dir"]
