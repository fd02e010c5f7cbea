"""What a service, environment or version may be called, and where a name may lead on disk.

Names end up in paths (state and log folders), in router and process labels, in SQL rows and
on terminals, so each kind has one pattern, checked when the config loads and again at every
entry point (command line, API):

- service and environment: a DNS-1123 label, as Kubernetes requires for the objects they
  become: lowercase letters, digits and '-', starting and ending with a letter or digit, at
  most 63 characters;
- version: a letter or digit, then letters, digits, '.', '_', '+' or '-', at most 128
  characters (`v1.3.0`, `1.4.0-rc.1+build.7`, a git sha).

No pattern admits '/', '..' as a whole name, whitespace, control characters or markup, so a
name that passes cannot leave its folder or rewrite a terminal line. `inside()` checks the
paths built from names anyway, because a path can also come from elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from safeship.errors import ConfigError, InputError

NameKind = Literal["service", "environment", "version"]

PATTERNS: dict[NameKind, re.Pattern[str]] = {
    "service": re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"),
    "environment": re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"),
    "version": re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"),
}

RULES: dict[NameKind, str] = {
    "service": "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter "
               "or digit, at most 63 characters",
    "environment": "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
                   "letter or digit, at most 63 characters",
    "version": "a letter or digit followed by letters, digits, '.', '_', '+' or '-', at most 128 characters",
}


def shown(value: object, limit: int = 60) -> str:
    """A value as it may appear in an error: repr (so control characters are escaped), cut short.
    Values with no usable repr (an int of more than 4300 digits, a structure nested past the
    recursion limit) are described instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    length = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({length} characters)"


def name_problem(kind: NameKind, value: object) -> str | None:
    """Why `value` is not a valid `kind` name, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {shown(value)}"
    if PATTERNS[kind].fullmatch(value) is None:
        return f"{kind} name must be {RULES[kind]}, got {shown(value)}"
    return None


def check_name(kind: NameKind, value: object, *, source: str = "", field: str = "") -> str:
    """`value` when it is a valid `kind` name; otherwise one sentence as an InputError.

    With `source` (a file name) the error is a ConfigError naming the file and `field`; without
    it, an InputError naming `field` (a command-line flag or an API field)."""
    problem = name_problem(kind, value)
    if problem is None:
        assert isinstance(value, str)
        return value
    if source:
        raise ConfigError(source, field, problem)
    raise InputError(f"{field}: {problem}" if field else problem)


def inside(parent: Path, *parts: str) -> Path:
    """`parent / parts...`, resolved, refused unless it lies strictly inside `parent` resolved.

    Call it for every path built from a name before anything is written or removed there."""
    base = parent.resolve()
    target = base.joinpath(*parts).resolve()
    if target == base or base not in target.parents:
        raise InputError(f"refusing to touch {target}: it is not inside {base}")
    return target
