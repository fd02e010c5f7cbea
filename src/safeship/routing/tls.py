"""TLS on a route's listener, shared by the builtin and HAProxy routers.

- `TlsListener`: the certificate and key files of a route and its optional HTTP->HTTPS redirect
  port (`services.<name>.tls.<environment>`, see config/ports.py), as routers pass it around.
- `ReloadingContext` (builtin router): a server SSLContext whose certificate follows the files.
  Every TLS handshake looks at the files' stamps (mtime, size, inode: two stat calls) from the
  SNI callback and, when they changed, loads the pair into a new SSLContext that this and later
  handshakes use. Connections already open keep the context they were made with, so a renewed
  certificate drops nothing. A pair that does not load (one file written, not yet the other) is
  logged and ignored: the previous certificate keeps serving until the files load together.
- `combined_pem`: the certificate chain then the key, in one PEM text (HAProxy's `crt` and its
  Runtime API `set ssl cert` take them so).
- `redirect_answer`: the 301/308 response the redirect port gives a plain HTTP request.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from safeship.config.hosts import is_host_name
from safeship.config.models import SafeshipConfig
from safeship.config.ports import route_tls
from safeship.errors import InputError
from safeship.routing.base import RouteKey

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class TlsListener:
    cert_file: str
    key_file: str
    redirect_http: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cert_file": self.cert_file, "key_file": self.key_file, "redirect_http": self.redirect_http}

    @classmethod
    def from_json(cls, data: Any) -> TlsListener | None:
        """The listener a control request or a record carries; None for none; InputError when malformed."""
        if data is None:
            return None
        try:
            redirect = data.get("redirect_http")
            return cls(str(data["cert_file"]), str(data["key_file"]), None if redirect is None else int(redirect))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise InputError(f"bad tls settings: {str(data)[:200]!r}") from None


def tls_for(config: SafeshipConfig | None, route: RouteKey) -> TlsListener | None:
    """The route's TLS listener as its config sets it; None for plain HTTP (or no config)."""
    if config is None or route.service not in config.services:
        return None
    tls = route_tls(config, route.service, route.environment)
    if tls is None:
        return None
    return TlsListener(tls.cert_file, tls.key_file, tls.redirect_http)


def file_stamp(listener: TlsListener) -> Stamp:
    """What changes when either file is rewritten or replaced (OSError when one is missing)."""
    cert, key = os.stat(listener.cert_file), os.stat(listener.key_file)
    return (cert.st_mtime_ns, cert.st_size, cert.st_ino, key.st_mtime_ns, key.st_size, key.st_ino)


def server_context(listener: TlsListener) -> ssl.SSLContext:
    """A server context holding the listener's pair; InputError naming the files when it does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 and later, the library's ciphers
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(listener.cert_file, listener.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"{listener.cert_file} and {listener.key_file} do not load as a certificate and its "
                         f"key: {getattr(exc, 'reason', None) or exc}") from None
    return context


class ReloadingContext:
    """The SSLContext a listener is opened with; its SNI callback hands each handshake the newest
    context that loaded from the files (see the module text)."""

    def __init__(self, listener: TlsListener) -> None:
        self.listener = listener
        try:
            self._stamp: Stamp | None = file_stamp(listener)  # taken first: a change while loading reloads
        except OSError as exc:
            raise InputError(f"cannot read {listener.cert_file} or {listener.key_file}: "
                             f"{exc.strerror or exc}") from None
        self.current = server_context(listener)
        self.current.sni_callback = self._pick
        self.opening = self.current  # the context the server socket keeps; it only dispatches
        self.loads = 1  # pairs loaded, the first included
        self._refused: Stamp | None = None

    def retarget(self, listener: TlsListener) -> None:
        """Read other files from now on (the config names new ones); the next handshake loads them,
        or keeps the current pair while they do not load."""
        self.listener = listener
        self._stamp = self._refused = None
        self.refresh()

    def refresh(self) -> ssl.SSLContext:
        """The newest context: loaded again when the files' stamps changed and the pair loads."""
        try:
            stamp = file_stamp(self.listener)
        except OSError:
            return self.current  # a file replaced by rename, caught between unlink and rename
        if stamp == self._stamp or stamp == self._refused:
            return self.current
        try:
            fresh = server_context(self.listener)
        except InputError as exc:
            self._refused = stamp
            log.warning("tls: keeping the certificate that serves now: %s", exc)
            return self.current
        self.current, self._stamp, self._refused = fresh, stamp, None
        self.loads += 1
        log.info("tls: loaded %s again for new connections", self.listener.cert_file)
        return fresh

    def _pick(self, connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        fresh = self.refresh()
        if fresh is not self.opening:
            connection.context = fresh


def combined_pem(listener: TlsListener) -> str:
    """The certificate chain then the private key, as one PEM text (after checking they load)."""
    server_context(listener)
    try:
        with open(listener.cert_file, encoding="ascii") as cert, open(listener.key_file, encoding="ascii") as key:
            chain, secret = cert.read(), key.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {listener.cert_file} or {listener.key_file}: {exc}") from None
    return chain.rstrip("\n") + "\n" + secret.rstrip("\n") + "\n"


# ---------------------------------------------------------------- the HTTP -> HTTPS redirect


def redirect_answer(head: bytes, https_port: int) -> bytes:
    """The response to one plain HTTP request head: 301 (GET, HEAD) or 308 (other methods, which
    must be repeated as they were) to the same host and target over https on `https_port`; 400
    when the request line or the Host header is unusable."""
    line, _, fields = head.partition(b"\r\n")
    parts = line.split(b" ")
    host = _host_field(fields)
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _answer(400, None)
    method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
    if not target.startswith("/"):
        absolute = urlsplit(target)  # absolute-form: http://name/path
        if absolute.scheme.lower() != "http" or not absolute.hostname:
            return _answer(400, None)
        host = absolute.netloc.rpartition("@")[2]
        target = (absolute.path or "/") + (f"?{absolute.query}" if absolute.query else "")
    if host is None:
        return _answer(400, None)
    name = _without_port(host)
    if name is None:
        return _answer(400, None)
    if not is_host_name(name):
        return _answer(400, None)
    port = "" if https_port == 443 else f":{https_port}"
    status = 301 if method in ("GET", "HEAD") else 308
    return _answer(status, f"https://{name}{port}{target}")


def _without_port(host: str) -> str | None:
    """`name`, `name:port`, `[v6]` or `[v6]:port` without its port; None when malformed."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[: end + 1], host[end + 1 :]) if end > 0 else (host, "x")
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name


def _host_field(fields: bytes) -> str | None:
    for raw in fields.split(b"\r\n"):
        name, colon, value = raw.partition(b":")
        if colon and name.strip().lower() == b"host":
            text = value.strip().decode("latin-1")
            return text or None
    return None


_REASON = {301: "Moved Permanently", 308: "Permanent Redirect", 400: "Bad Request"}


def _answer(status: int, location: str | None) -> bytes:
    body = f"{status} {_REASON[status]}\n" if location is None else f"{location}\n"
    where = f"Location: {location}\r\n" if location is not None else ""
    return (f"HTTP/1.1 {status} {_REASON[status]}\r\n{where}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode("latin-1")
