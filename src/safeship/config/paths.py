"""Where a config's state lives: relative paths in safeship.yaml are relative to its own folder, so
the commands and the controller agree wherever they are started from."""

from __future__ import annotations

from pathlib import Path

from safeship.config.models import SafeshipConfig

_SQLITE = "sqlite:///"


def state_dir(config: SafeshipConfig, config_path: str | Path) -> Path:
    path = Path(config.state_dir).expanduser()
    return path if path.is_absolute() else Path(config_path).resolve().parent / path


def store_url(config: SafeshipConfig, config_path: str | Path) -> str:
    url = config.store.url
    if url.startswith(_SQLITE) and not url.startswith(_SQLITE + "/") and ":memory:" not in url:
        return _SQLITE + str(Path(config_path).resolve().parent / url.removeprefix(_SQLITE))
    return url
