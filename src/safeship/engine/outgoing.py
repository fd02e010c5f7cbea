"""One POST to a receiver safeship does not run (a webhook gate, a webhook notification), bounded.

The answer is streamed and at most `MAX_ANSWER_BYTES` of it is kept; the rest is never read (the
connection is closed instead). The whole exchange (connect, send, headers, body) shares one
deadline, not httpx's per-read timeout, so a receiver that streams gigabytes or drips a kilobyte
every half second costs neither memory nor a thread for longer than the caller's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes  # the first MAX_ANSWER_BYTES of the answer, as sent (not decompressed)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


async def post(url: str, content: bytes, headers: Mapping[str, str], timeout: float) -> Reply:
    """POST `content` once, redirects not followed. Raises TimeoutError when the whole exchange
    takes longer than `timeout` seconds, and what httpx raises for a connection that fails."""
    async with (
        asyncio.timeout(timeout),
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
        client.stream("POST", url, content=content, headers=dict(headers)) as response,
    ):
        kept = bytearray()
        async for chunk in response.aiter_raw():
            kept += chunk[: MAX_ANSWER_BYTES - len(kept)]
            if len(kept) >= MAX_ANSWER_BYTES:
                break
        return Reply(response.status_code, response.reason_phrase, bytes(kept))


def post_blocking(url: str, content: bytes, headers: Mapping[str, str], timeout: float) -> Reply:
    """`post` for a caller in a thread of its own (a notification sink): the same bounds."""
    return asyncio.run(post(url, content, headers, timeout))
