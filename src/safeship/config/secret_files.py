"""The secret files a config names for signing (`notifications[].secret_file`, a webhook gate's
`secret_file`): read when the config loads, and refused there (one sentence naming the file, exit
2) when they cannot be read, are empty, or let group or other users read them. Each secret joins
the process-wide redactor, so it is masked wherever it might be printed."""

from __future__ import annotations

import stat
from pathlib import Path

from safeship.errors import ConfigError
from safeship.redaction import register


def secret_path(name: str, config_dir: Path) -> Path:
    """`name` as written in the config: relative to the config file's folder unless absolute."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else config_dir / path


def read_secret_file(name: str, config_dir: Path, source: str, field: str) -> bytes:
    """The secret in the file `name`; ConfigError naming `source`, `field` and the file otherwise."""
    path = secret_path(name, config_dir)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(source, field, f"cannot read the secret file {name!r} ({path}): {reason}") from None
    if mode & 0o077:
        raise ConfigError(source, field, f"the secret file {path} has mode {mode:04o}, which lets other users "
                                         f"read it; run chmod 600 {path}")
    if not text:
        raise ConfigError(source, field, f"the secret file {name!r} ({path}) is empty")
    register([text])
    return text.encode()
