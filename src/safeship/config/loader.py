"""Load `safeship.yaml` into typed models; every failure is one sentence naming file, field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from safeship.config.models import SafeshipConfig
from safeship.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# pydantic names the member of a tagged union in an error's location; the user never wrote it
_UNION_TAGS = ("health_check_failure", "error_rate_threshold", "response_time_threshold", "custom_metric")


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS:
            continue  # pydantic's name for the union member, not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _lookup(data: Any, loc: tuple[int | str, ...]) -> tuple[bool, Any]:
    node = data
    for item in loc:
        in_list = isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        if in_list or (isinstance(node, dict) and item in node):
            node = node[item]
        elif isinstance(item, str) and item in _UNION_TAGS:
            continue
        else:
            return False, None
    return True, node


def explain(error: ValidationError, source: str, data: Any) -> ConfigError:
    """The first problem in `error`, as one sentence."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    field = _field_path(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        return ConfigError(source, field, "unknown field (check its spelling and indentation)")
    if kind == "missing":
        return ConfigError(source, field, "required field is missing")
    message = str(first["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    found, value = _lookup(data, loc)
    if found and "got" not in message:
        message = f"{message}, got {value!r}"
    return ConfigError(source, field, message)


def validate(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source, data) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), "", f"{problem} at {where}") from None


def load_config(path: str | Path) -> SafeshipConfig:
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"the top level must be a mapping, got {type(data).__name__}")
    config = validate(SafeshipConfig, data, str(path))
    _check_references(config, str(path))
    return config


def _check_references(config: SafeshipConfig, source: str) -> None:
    for name, service in config.services.items():
        if not name or any(c.isspace() for c in name):
            raise ConfigError(source, f"services.{name}", "a service name cannot be empty or contain spaces")
        if service.versions and len(set(service.versions)) != len(service.versions):
            raise ConfigError(source, f"services.{name}.versions", f"lists a version twice, got {service.versions}")
