"""Which port a route (a service in an environment) listens on: the user's, never list order.

- `services.<name>.ports.<environment>: 18080` is that route's port, as written;
- `services.<name>.ports.<environment>: 0` asks for any free port: the controller takes one when
  it first starts and keeps it in `routes.json` while it stays free;
- a route not named there gets a port from its two names alone: `route_port_from_names` hashes
  `<service>/<environment>` (SHA-256) into 20000-31999, below Linux's default ephemeral range
  (32768-60999), so that no outgoing connection is handed it. Adding, removing or reordering
  services and environments never moves another route.

The loader refuses a config in which two routes would want the same port.
"""

from __future__ import annotations

import hashlib

from safeship.config.models import SafeshipConfig

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
    any free port (`ports.<environment>: 0`)."""
    given = config.services[service].ports.get(environment)
    if given is None:
        return route_port_from_names(service, environment)
    return given or None


def route_port_rule(config: SafeshipConfig, service: str, environment: str) -> str:
    """Where `route_port` got its number, in words, for prepare and validate to print."""
    given = config.services[service].ports.get(environment)
    if given is None:
        return (f"from the names {service}/{environment}, hashed into {PORT_RANGE_START}-{PORT_RANGE_END}; "
                f"set services.{service}.ports.{environment} to choose it")
    if given == ANY_PORT:
        return f"services.{service}.ports.{environment}: 0, any free port"
    return f"services.{service}.ports.{environment}"
