"""HTTP/1.1 framing and body relays for the builtin router.

Only the fields that decide framing and connection reuse are read (Content-Length,
Transfer-Encoding, Connection, Expect); everything else passes through byte for byte. Heads two
parsers could frame differently are refused rather than guessed at.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Protocol

HEAD_LIMIT = 64 * 1024  # longest request or response head (and chunk-size line) accepted
_REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are buffered so they can be retried
CHUNK = 64 * 1024
HIGH_WATER = 256 * 1024  # wait for the peer to read once this much is queued for it
END_OF_HEAD = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_monotonic = time.monotonic


class Deadline(Protocol):
    """What a body relay pushes forward on each write: the connection's watchdog deadline."""

    deadline: float


# ---------------------------------------------------------------------------------------------
# Heads


class BadMessage(Exception):
    """A head we refuse to forward (ambiguous framing, malformed line)."""


class Request:
    __slots__ = (
        "body",
        "chunked",
        "expects_continue",
        "head",
        "http11",
        "is_head",
        "keep_alive",
        "length",
        "streams_body",
    )

    def __init__(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        if head[line_end - 8 : line_end - 1] != b"HTTP/1." or head.find(b" ", 0, line_end) <= 0:
            raise BadMessage("bad request line")
        self.http11 = http11 = head[line_end - 1] == 0x31  # b"1"
        self.is_head = head.startswith(b"HEAD ")
        content_length, transfer_encoding, connection, expect = _scan_fields(head)
        self.length, self.chunked = _request_framing(content_length, transfer_encoding)
        # HTTP/1.0 keep-alive is rare and its rules are murky: one request per connection.
        self.keep_alive = http11 and (connection is None or b"close" not in connection)
        self.expects_continue = expect == b"100-continue" and (self.length > 0 or self.chunked)
        if self.expects_continue or (http11 and not self.keep_alive):
            # We answer 100 Continue ourselves, and keep the upstream connection reusable even
            # when this client leaves after one request.
            head = _drop_headers(head, (b"expect:", b"connection:"))
        self.head = head
        self.streams_body = self.chunked or self.length > _REPLAY_LIMIT
        self.body: bytes | None = None  # set when the body was read whole (replayable)


NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


class Response:
    __slots__ = ("framing", "head", "length", "reusable", "status")

    def __init__(self, head: bytes, request: Request) -> None:
        if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
            raise BadMessage("bad status line")
        self.status = status = int(head[9:12])
        # Responses come from our own upstreams: plain searches, cheaper than _scan_fields.
        lower = head.lower()
        if request.is_head or status < 200 or status in (204, 304):
            self.framing, self.length = NO_BODY, 0
        else:
            self.framing, self.length = _response_framing(
                _value(lower, b"\r\ncontent-length:"), _value(lower, b"\r\ntransfer-encoding:")
            )
        http11 = head[7] == 0x31  # b"1"
        connection = _value(lower, b"\r\nconnection:")
        upstream_closes = (
            (connection is not None and b"close" in connection)
            if http11
            else (connection is None or b"keep-alive" not in connection)
        )
        self.reusable = not upstream_closes and self.framing != UNTIL_CLOSE and request.http11
        if not http11:
            # We speak HTTP/1.1 to the client whatever the upstream spoke.
            head = b"HTTP/1.1" + head[8:]
        if (
            upstream_closes
            and request.keep_alive
            and connection is not None
            and self.framing != UNTIL_CLOSE
        ):
            head = _drop_headers(head, (b"connection:",))
        self.head = head


def _value(lower: bytes, marker: bytes) -> bytes | None:
    """The value of the first field whose `\\r\\nname:` marker is given, or None."""
    at = lower.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    return lower[start : lower.find(b"\r\n", start)].strip()


# The only fields the proxy reads, found in one case-insensitive pass. A folded line (leading
# whitespace) or whitespace before the colon is refused: another parser could read such a framing
# field where we do not, and the two would disagree on where a message ends (smuggling).
_FIELDS = re.compile(
    rb"\r\n(?:(content-length|transfer-encoding|connection|expect)([ \t]*):[ \t]*([^\r\n]*)"
    rb"|[ \t])",
    re.IGNORECASE,
)

_Scanned = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _scan_fields(head: bytes) -> _Scanned:
    """(content-length, transfer-encoding, connection, expect) values, lower-cased, or None."""
    content_length = transfer_encoding = connection = expect = None
    for match in _FIELDS.finditer(head):
        name, space, value = match.groups()
        if name is None or space:
            raise BadMessage("folded header line or whitespace before a colon")
        value = value.rstrip()
        first = name[0] | 0x20  # ASCII lower case
        if first == 0x63 and len(name) == 14:  # content-length
            if content_length is not None:
                raise BadMessage("more than one content-length")
            content_length = value
        elif first == 0x63:
            connection = value.lower()
        elif first == 0x74:
            transfer_encoding = value.lower()
        else:
            expect = value.lower()
    return content_length, transfer_encoding, connection, expect


def _request_framing(
    content_length: bytes | None, transfer_encoding: bytes | None
) -> tuple[int, bool]:
    """(content length, chunked); heads two parsers could frame differently are refused."""
    if transfer_encoding is not None:
        if content_length is not None or not transfer_encoding.endswith(b"chunked"):
            raise BadMessage("ambiguous request framing")
        return 0, True
    if content_length is None:
        return 0, False
    if not content_length.isdigit():
        raise BadMessage("bad content-length")
    return int(content_length), False


def _response_framing(
    content_length: bytes | None, transfer_encoding: bytes | None
) -> tuple[int, int]:
    if transfer_encoding is not None:
        return (CHUNKED if transfer_encoding.endswith(b"chunked") else UNTIL_CLOSE), 0
    if content_length is None:
        return UNTIL_CLOSE, 0
    if not content_length.isdigit():
        raise BadMessage("bad content-length")
    return LENGTH, int(content_length)


def _drop_headers(head: bytes, names: tuple[bytes, ...]) -> bytes:
    """`head` without the fields named (lower case, with their colon); rare, so kept simple."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(names))


def with_forwarded_proto(head: bytes, proto: bytes) -> bytes:
    """`head` with `X-Forwarded-Proto: proto` in place of any the client sent, so that a client on
    plain HTTP cannot claim https (nor one on TLS claim http)."""
    if b"x-forwarded-proto:" in head.lower():
        head = _drop_headers(head, (b"x-forwarded-proto:",))
    return head[:-2] + b"X-Forwarded-Proto: " + proto + b"\r\n\r\n"


class PeerFailed(Exception):
    """A body relay stopped because one side failed; `upstream` tells which side."""

    def __init__(self, *, upstream: bool) -> None:
        super().__init__()
        self.upstream = upstream


STREAM_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, RuntimeError, ValueError)


# ---------------------------------------------------------------------------------------------
# Body relays. `from_upstream` says which side `src` is, so a failure names the right culprit.


async def copy_exact(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    remaining: int,
    session: Deadline,
    timeout: float,
    from_upstream: bool,
) -> None:
    while remaining > 0:
        data = await _read(src, min(remaining, CHUNK), from_upstream)
        remaining -= len(data)
        await _write(dst, data, session, timeout, from_upstream)


async def copy_chunked(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    session: Deadline,
    timeout: float,
    from_upstream: bool,
) -> None:
    """Relays a chunked body verbatim, parsing just enough to find where it ends."""
    while True:  # one chunk per turn; a stalled peer is cut by the watchdog
        line = await _read_line(src, from_upstream)
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError as exc:
            raise PeerFailed(upstream=from_upstream) from exc
        await _write(dst, line, session, timeout, from_upstream)
        if size == 0:
            break
        await copy_exact(src, dst, size + 2, session, timeout, from_upstream)
    for _ in range(1024):  # trailer fields, then the empty line
        line = await _read_line(src, from_upstream)
        await _write(dst, line, session, timeout, from_upstream)
        if line == b"\r\n":
            return
    raise PeerFailed(upstream=from_upstream)


async def copy_until_eof(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, session: Deadline, timeout: float
) -> None:
    while True:  # ends at EOF; a stalled peer is cut by the watchdog
        try:
            data = await src.read(CHUNK)
        except STREAM_ERRORS as exc:
            raise PeerFailed(upstream=True) from exc
        if not data:
            return
        await _write(dst, data, session, timeout, True)


async def _read(src: asyncio.StreamReader, size: int, from_upstream: bool) -> bytes:
    try:
        data = await src.read(size)
    except STREAM_ERRORS as exc:
        raise PeerFailed(upstream=from_upstream) from exc
    if not data:
        raise PeerFailed(upstream=from_upstream)
    return data


async def _read_line(src: asyncio.StreamReader, from_upstream: bool) -> bytes:
    try:
        return await src.readuntil(b"\r\n")
    except STREAM_ERRORS as exc:
        raise PeerFailed(upstream=from_upstream) from exc


async def _write(
    dst: asyncio.StreamWriter, data: bytes, session: Deadline, timeout: float, from_upstream: bool
) -> None:
    session.deadline = _monotonic() + timeout
    try:
        dst.write(data)
        if dst.transport.get_write_buffer_size() > HIGH_WATER:
            await dst.drain()
    except STREAM_ERRORS as exc:
        raise PeerFailed(upstream=not from_upstream) from exc
