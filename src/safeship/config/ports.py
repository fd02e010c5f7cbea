"""Which port a route (a service in an environment) listens on: the user's, never list order.

- `services.<name>.ports.<environment>: 18080` is that route's port, as written;
- `services.<name>.ports.<environment>: 0` asks for any free port: the controller takes one when
  it first starts and keeps it in `routes.json` while it stays free;
- a route not named there gets a port from its two names alone: `route_port_from_names` hashes
  `<service>/<environment>` (SHA-256) into 20000-31999, below Linux's default ephemeral range
  (32768-60999), so that no outgoing connection is handed it. Adding, removing or reordering
  services and environments never moves another route.

The loader refuses a config in which two routes would want the same port.

Where a route listens: `services.<name>.listen.<environment>: "0.0.0.0:443"` (HOST:PORT or HOST)
gives the address, and its port when it has one (then `ports.<environment>` must not also be
set); a route without it listens on 127.0.0.1 only. `services.<name>.tls.<environment>` makes the
route's router terminate TLS there (`check_listeners` reads the files when the config loads).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from safeship.config.hosts import LOOPBACK, split_listen
from safeship.config.models import SafeshipConfig, TlsConfig
from safeship.config.secret_files import read_secret_file, secret_path
from safeship.errors import ConfigError

PORT_RANGE_START = 20000
PORT_RANGE_END = 31999  # inclusive; Linux's default ip_local_port_range starts at 32768
ANY_PORT = 0  # `ports.<environment>: 0`: any free port, picked by the controller


def route_port_from_names(service: str, environment: str) -> int:
    """The port of a route the config gives no port: a stable hash of its names into the range."""
    digest = hashlib.sha256(f"{service}/{environment}".encode()).digest()
    size = PORT_RANGE_END - PORT_RANGE_START + 1
    return PORT_RANGE_START + int.from_bytes(digest[:8], "big") % size


def route_port(config: SafeshipConfig, service: str, environment: str) -> int | None:
    """The port the route of `service` in `environment` listens on; None when the config asks for
    any free port (`ports.<environment>: 0`, or a listen address ending in `:0`)."""
    listen = config.services[service].listen.get(environment)
    if listen is not None:
        written = split_listen(listen)[1]
        if written is not None:
            return written or None
    given = config.services[service].ports.get(environment)
    if given is None:
        return route_port_from_names(service, environment)
    return given or None


def route_port_rule(config: SafeshipConfig, service: str, environment: str) -> str:
    """Where `route_port` got its number, in words, for prepare and validate to print."""
    listen = config.services[service].listen.get(environment)
    if listen is not None and split_listen(listen)[1] is not None:
        return f"services.{service}.listen.{environment}"
    given = config.services[service].ports.get(environment)
    if given is None:
        return (f"from the names {service}/{environment}, hashed into {PORT_RANGE_START}-{PORT_RANGE_END}; "
                f"set services.{service}.ports.{environment} to choose it")
    if given == ANY_PORT:
        return f"services.{service}.ports.{environment}: 0, any free port"
    return f"services.{service}.ports.{environment}"


def route_host(config: SafeshipConfig, service: str, environment: str) -> str:
    """The address the route of `service` in `environment` listens on (127.0.0.1 unless its
    `listen.<environment>` names another)."""
    listen = config.services[service].listen.get(environment)
    return LOOPBACK if listen is None else split_listen(listen)[0]


def route_tls(config: SafeshipConfig, service: str, environment: str) -> TlsConfig | None:
    """The route's TLS settings (paths made absolute when the config loaded), or None for plain HTTP."""
    return config.services[service].tls.get(environment)


_TLS_ROUTERS = ("builtin", "haproxy")


def check_listeners(config: SafeshipConfig, source: str, config_dir: Path) -> None:
    """`listen:` and `tls:` name configured environments whose router listens; a port is written
    in one place only; every certificate and key loads as a pair and the key is its owner's alone;
    a redirect port is no other route's. Relative TLS paths become absolute (from `config_dir`).
    Any problem is a ConfigError naming the field and the value."""
    environments = {e.name: e for e in config.environment_management.environments}
    known = ", ".join(environments) or "none"
    taken: dict[int, str] = {}
    for name in config.services:
        for environment in environments:
            port = route_port(config, name, environment)
            if port is not None:
                taken[port] = f"the route of {name} in {environment}"
    for name, service in config.services.items():
        for block in ("listen", "tls"):
            for environment in getattr(service, block):
                field = f"services.{name}.{block}.{environment}"
                env = environments.get(environment)
                if env is None:
                    raise ConfigError(source, field, f"there is no environment {environment!r} under "
                                                     f"environment_management (known: {known})")
                router = env.router or ("builtin" if env.platform == "local" else None)
                if router not in _TLS_ROUTERS:
                    raise ConfigError(source, field, f"environment {environment!r} routes with "
                                      f"{router or 'its platform ' + repr(env.platform)}, which does not listen "
                                      "for safeship; listen and tls are for router builtin or haproxy")
        for environment, listen in service.listen.items():
            if split_listen(listen)[1] is not None and environment in service.ports:
                raise ConfigError(source, f"services.{name}.ports.{environment}",
                                  f"the port is also written in services.{name}.listen.{environment} "
                                  f"({listen!r}); write it in one place, got {service.ports[environment]}")
        for environment, tls in service.tls.items():
            field = f"services.{name}.tls.{environment}"
            _load_pair(tls, config_dir, source, field)
            if tls.redirect_http is not None:
                other = taken.get(tls.redirect_http)
                if other is not None:
                    raise ConfigError(source, f"{field}.redirect_http",
                                      f"port {tls.redirect_http} is already {other}'s; give the redirect "
                                      f"another port, got {tls.redirect_http}")
                taken[tls.redirect_http] = f"the redirect of {name} in {environment}"


def _load_pair(tls: TlsConfig, config_dir: Path, source: str, field: str) -> None:
    cert = secret_path(tls.cert_file, config_dir)
    key = secret_path(tls.key_file, config_dir)
    try:
        cert.read_bytes()
    except OSError as exc:
        raise ConfigError(source, f"{field}.cert_file", f"cannot read {cert}: "
                                                         f"{exc.strerror or type(exc).__name__}") from None
    # The key is a secret file: readable, not empty, its owner's alone (0600), and masked wherever
    # it might be printed.
    read_secret_file(tls.key_file, config_dir, source, f"{field}.key_file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(source, field, f"{cert} and {key} do not load as a PEM certificate and its private "
                                         f"key ({getattr(exc, 'reason', None) or exc})") from None
    tls.cert_file, tls.key_file = str(cert), str(key)
