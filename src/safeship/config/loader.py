"""Load `safeship.yaml` into typed models; every failure is one sentence naming file, field and value.

Reading YAML is stricter than `yaml.safe_load`:

- the file must be UTF-8 text;
- a key may appear only once in a mapping (YAML would keep the last one silently);
- `12:30` is a string, as in YAML 1.2, not the base-60 number 750 of YAML 1.1;
- values nest at most 64 levels deep and aliases may expand to at most 100,000 values, so that a
  small file cannot make validation walk a billion items;
- a date that is no date (`2024-02-30`) or an integer of more than 4300 digits is a YAML error
  naming its line, not a crash.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from safeship.config.kubernetes import check_kubernetes
from safeship.config.models import RollbackConfiguration, SafeshipConfig
from safeship.config.names import NameKind, name_problem
from safeship.config.names import shown as show
from safeship.config.ports import check_listeners
from safeship.config.secret_files import read_secret_file
from safeship.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# pydantic names the member of a tagged union in an error's location; the user never wrote it
_UNION_TAGS = ("health_check_failure", "error_rate_threshold", "response_time_threshold", "custom_metric")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FILE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")

MAX_DEPTH = 64
MAX_VALUES = 100_000
_MESSAGE_LIMIT = 200


def _key(item: object) -> str:
    """A key as it appears in a field path: as written when plain, quoted and cut short otherwise."""
    text = str(item) if isinstance(item, str | int) and not isinstance(item, bool) else None
    if text is not None and _PLAIN_KEY.fullmatch(text):
        return text
    return show(item)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS or item == "[key]":
            continue  # pydantic's name for the union member or for "the key of", not a key the user wrote
        else:
            parts.append(("." if parts else "") + _key(item))
    return "".join(parts)


def _lookup(data: Any, loc: tuple[int | str, ...]) -> tuple[bool, Any]:
    node = data
    for item in loc:
        in_list = isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        if in_list or (isinstance(node, dict) and item in node):
            node = node[item]
        elif isinstance(item, str) and item in _UNION_TAGS:
            continue
        elif item == "[key]":
            return True, loc[-2] if len(loc) >= 2 else None
        else:
            return False, None
    return True, node


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


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
    if kind == "finite_number":
        message = "must be a finite number"
    if loc and loc[-1] == "[key]":
        message = f"key {message}"
    found, value = _lookup(data, loc)
    if found and "got" not in message:
        message = f"{message}, got {show(value)}"
    return ConfigError(source, field, _one_line(message))


def validate(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, source, data) from None
    except RecursionError:  # a structure that contains itself, through YAML aliases
        raise ConfigError(source, "", "values nest too deeply to be checked") from None


# ---------------------------------------------------------------- YAML


class SafeshipLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and bounds nesting, and reads `12:30` as a string."""

    source = "<yaml>"

    def construct_document(self, node: yaml.Node) -> Any:
        _check_tree(node, self.source)
        return super().construct_document(node)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4300)
            raise yaml.constructor.ConstructorError(
                None, None, "integer has too many digits", node.start_mark) from None

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{show(node.value)} looks like a date but is not one; quote it", node.start_mark,
            ) from None


SafeshipLoader.add_constructor("tag:yaml.org,2002:int", SafeshipLoader.construct_yaml_int)
SafeshipLoader.add_constructor("tag:yaml.org,2002:timestamp", SafeshipLoader.construct_yaml_timestamp)

# YAML 1.1 reads `12:30` as 750 (base 60); drop that form from the int and float resolvers.
SafeshipLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SafeshipLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+)$""", re.X),
    list("-+0123456789"),
)
SafeshipLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _scalar_key(node: yaml.Node) -> tuple[str, str] | None:
    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else None


def _check_tree(root: yaml.Node, source: str) -> None:
    """Refuse duplicate keys (naming both lines), nesting deeper than MAX_DEPTH and alias bombs."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    visited = 0
    while stack:
        node, path, depth = stack.pop()
        visited += 1
        if visited > MAX_VALUES:
            raise ConfigError(source, "", f"holds more than {MAX_VALUES:,} values once its aliases are expanded")
        if depth > MAX_DEPTH:
            raise ConfigError(source, path, f"values nest more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                key = _scalar_key(key_node)
                child = f"{path}.{_key(key_node.value)}" if path else _key(key_node.value)
                if key is not None and key[0] == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path, depth + 1))
                    continue
                if key is not None:
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise ConfigError(source, child, f"key appears twice (lines {seen[key]} and {line})")
                    seen[key] = line
                stack.append((value_node, child, depth + 1))


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`; any problem is a ConfigError of one sentence naming its line."""
    loader: SafeshipLoader | None = None
    try:
        loader = SafeshipLoader(text)  # the reader checks the characters here
        loader.source = source
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise ConfigError(source, "", _one_line(f"{problem}{where}")) from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise ConfigError(source, "", f"contains the character U+{code:04X} at offset {exc.position}, "
                                      "which YAML does not allow") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", _one_line(f"invalid YAML ({exc})")) from None
    except RecursionError:
        raise ConfigError(source, "", f"values nest more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, *, main_config: bool = False) -> Any:
    """The YAML document in `path`. `main_config`: a missing file says how to write a starter one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = "; run `safeship init` to write a starter safeship.yaml" if main_config else ""
        raise ConfigError(str(path), "", f"file not found{hint}") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise ConfigError(str(path), "", f"not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})") from None
    return parse_yaml(text, str(path))


def load_config(path: str | Path) -> SafeshipConfig:
    path = Path(path)
    data = read_yaml(path, main_config=True)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"the top level must be a mapping of sections, got a {_kind(data)}")
    config = validate(SafeshipConfig, data, str(path))
    _check_references(config, str(path))
    check_listeners(config, str(path), path.resolve().parent)
    check_kubernetes(config, str(path))
    _read_secret_files(config, path.resolve().parent, str(path))
    return config


def _read_secret_files(config: SafeshipConfig, config_dir: Path, source: str) -> None:
    """Read every secret file the config names for signing, refusing one that cannot be read, is
    empty, or that group or other users may read (see config/secret_files.py)."""
    for index, sink in enumerate(config.notifications):
        if sink.secret_file is not None:
            read_secret_file(sink.secret_file, config_dir, source, f"notifications[{index}].secret_file")
    for name, service in config.services.items():
        for index, gate in enumerate(service.webhooks):
            gate.load_secret(config_dir, source, f"services.{_key(name)}.webhooks[{index}].secret_file")


def load_rollback_settings(path: str | Path) -> RollbackConfiguration:
    """A rollback settings file as `rollback-manager --configure --config FILE` reads it: the
    seed's `rollback:` block, either under a `rollback:` key or at the top level."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"a rollback config must be a mapping, got a {_kind(data)}")
    block = data.get("rollback", data)
    return validate(RollbackConfiguration, block, str(path))


def _kind(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__)


def _name(kind: NameKind, value: object, source: str, field: str) -> None:
    problem = name_problem(kind, value)
    if problem is not None:
        raise ConfigError(source, field, problem)


def _check_references(config: SafeshipConfig, source: str) -> None:
    for index, environment in enumerate(config.environment_management.environments):
        where = f"environment_management.environments[{index}]"
        _name("environment", environment.name, source, f"{where}.name")
        for key in environment.variables:
            if not _ENV_VAR.fullmatch(key):
                raise ConfigError(source, f"{where}.variables", "a variable name must be letters, digits and '_', "
                                  f"not starting with a digit, got {show(key)}")
        for map_name, values in environment.config_maps.items():
            _name("service", map_name, source, f"{where}.config_maps")  # same rule: a DNS-1123 label
            for key in values:
                if not _FILE_KEY.fullmatch(key):
                    raise ConfigError(source, f"{where}.config_maps.{map_name}", "a config map key becomes a "
                                      "file name: letters, digits, '.', '_' and '-', not starting with '.', "
                                      f"got {show(key)}")
    for name, service in config.services.items():
        _name("service", name, source, f"services.{_key(name)}")
        where = f"services.{name}"
        for index, version in enumerate(service.versions):
            _name("version", version, source, f"{where}.versions[{index}]")
        if len(set(service.versions)) != len(service.versions):
            twice = next(v for v in service.versions if service.versions.count(v) > 1)
            raise ConfigError(source, f"{where}.versions", f"lists version {show(twice)} twice")
        for version in service.simulate:
            _name("version", version, source, f"{where}.simulate.{_key(version)}")
            if service.versions and version not in service.versions:
                raise ConfigError(source, f"{where}.simulate.{version}", "describes a version that is not in "
                                  f"{where}.versions; add it there or remove this profile")
        for key in service.env:
            if not _ENV_VAR.fullmatch(key):
                raise ConfigError(source, f"{where}.env", "a variable name must be letters, digits and '_', "
                                  f"not starting with a digit, got {show(key)}")
        for index, secret in enumerate(service.secrets):
            if not _ENV_VAR.fullmatch(secret):
                raise ConfigError(source, f"{where}.secrets[{index}]", "a secret is injected as an environment "
                                  "variable: letters, digits and '_', not starting with a digit, "
                                  f"got {show(secret)}")
    _check_ports(config, source)


def _check_ports(config: SafeshipConfig, source: str) -> None:
    """Route ports are the user's (config/ports.py): `ports:` names configured environments, the
    old rules that counted places in a list are refused with the ports they gave, and no two routes
    want the same port."""
    from safeship.config.ports import route_port, route_port_rule

    environments = [e.name for e in config.environment_management.environments]
    for index, env in enumerate(config.environment_management.environments):
        if env.router_port_base:
            given = ", ".join(f"{name}: {env.router_port_base + n}" for n, name in enumerate(config.services))
            raise ConfigError(source, f"environment_management.environments[{index}].router_port_base",
                              "counts each service's place in services:, so adding a service moves the others; "
                              f"write each service's ports.{env.name} instead (this gave {given}), "
                              f"got {env.router_port_base}")
    for name, service in config.services.items():
        if service.router_port:
            given = ", ".join(f"{env}: {service.router_port + 100 * n}" for n, env in enumerate(environments))
            raise ConfigError(source, f"services.{name}.router_port",
                              "counts each environment's place in the list (+100 each), so adding an environment "
                              f"moves the others; write the ports instead: ports: {{{given}}}, "
                              f"got {service.router_port}")
        for environment in service.ports:
            if environment not in environments:
                raise ConfigError(source, f"services.{name}.ports.{_key(environment)}",
                                  f"there is no environment {show(environment)} under environment_management "
                                  f"(known: {', '.join(environments) or 'none'})")
    taken: dict[int, tuple[str, str]] = {}
    for environment in environments:
        for name in config.services:
            port = route_port(config, name, environment)
            if port is None:
                continue
            if port in taken:
                other = taken[port]
                raise ConfigError(source, f"services.{name}.ports.{environment}",
                                  f"{name} in {environment} would listen on port {port}, as {other[0]} in "
                                  f"{other[1]} does ({route_port_rule(config, name, environment)}); "
                                  f"give one of them another port")
            taken[port] = (name, environment)
