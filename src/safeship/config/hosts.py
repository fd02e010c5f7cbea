"""`api_hosts:`: the extra names the controller's API and dashboard answer to.

The controller answers only requests whose Host header names it: 127.0.0.1, localhost, ::1, the
host it listens on, and these. A page on another site that a DNS rebinding points at 127.0.0.1
sends its own name, and gets 400 (see `safeship.api.app`)."""

from __future__ import annotations

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


ApiHosts = Annotated[list[str], AfterValidator(_host_names)]
