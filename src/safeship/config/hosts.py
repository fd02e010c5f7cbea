"""`api_hosts:`: the extra names the controller's API and dashboard answer to.

The controller answers only requests whose Host header names it: 127.0.0.1, localhost, ::1, the
host it listens on, and these. A page on another site that a DNS rebinding points at 127.0.0.1
sends its own name, and gets 400 (see `safeship.api.app`).

Also `services.<name>.listen.<environment>`: the address a route listens on (`ListenAddress`)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

# A DNS name or an IPv4 address (letters, digits, '-' and '.'), or an IPv6 address in brackets;
# no port, no wildcard.
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?|\[[0-9A-Fa-f:.]+\]")


def _host_names(value: list[str]) -> list[str]:
    for name in value:
        if len(name) > 253 or not _HOST.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name (a DNS name or an IP address, an IPv6 one in "
                             "brackets, without a port)")
    return [name.lower().rstrip(".") for name in value]


def is_host_name(name: str) -> bool:
    """A DNS name, an IPv4 address or an IPv6 address in brackets, without a port."""
    return len(name) <= 253 and _HOST.fullmatch(name) is not None


ApiHosts = Annotated[list[str], AfterValidator(_host_names)]


# ---------------------------------------------------------------- a route's listen address

LOOPBACK = "127.0.0.1"  # where a route listens unless `services.<name>.listen.<environment>` says otherwise
_LISTEN_PORT = re.compile(r"[0-9]{1,5}")


def split_listen(value: str) -> tuple[str, int | None]:
    """`HOST:PORT`, `HOST`, `[IPv6]:PORT` or `[IPv6]` as (host, port or None); ValueError with one
    sentence otherwise. HOST is an IP address (0.0.0.0 or :: for every interface) or localhost."""
    text = value.strip()
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("an IPv6 address in brackets lacks its closing ']'")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected [IPv6]:PORT, such as [::]:443")
            port_text = rest[1:]
        version = 6
    else:
        host, colon, rest = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        if colon:
            port_text = rest
        version = 4
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("expected HOST:PORT with HOST an IP address (0.0.0.0 for every interface, "
                             "127.0.0.1 for this host only) or localhost, such as 0.0.0.0:443") from None
        if address.version != version:
            raise ValueError("an IPv6 address goes in brackets, such as [::]:443")
    port: int | None = None
    if port_text is not None:
        if not _LISTEN_PORT.fullmatch(port_text) or int(port_text) > 65535:
            raise ValueError("the port must be a number in 0..65535")
        port = int(port_text)
    return host, port


def _listen_address(value: str) -> str:
    host, port = split_listen(value)
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


ListenAddress = Annotated[str, AfterValidator(_listen_address)]
"""`services.<name>.listen.<environment>`: where the route listens, as HOST:PORT or HOST."""
