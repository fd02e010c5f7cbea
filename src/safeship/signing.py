"""The signature on every webhook notification and webhook gate request that has a secret.

    X-Safeship-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

`t` is when the request was signed and the HMAC covers it and the exact body bytes, so a receiver
can refuse a replayed request: it recomputes the HMAC over `f"{t}.".encode() + body` with the shared
secret, compares in constant time, and refuses a `t` more than MAX_AGE_S (5 minutes) away from its
own clock. `verify` does exactly that. The secret signs and never travels.

It sits at the bottom of the package (like `redaction.py`) so that the notification sinks and the
webhook gates share one format, and a receiver written in Python can import `verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Safeship-Signature"
MAX_AGE_S = 300.0


def signature(secret: bytes, body: bytes, at: float | None = None) -> str:
    """The header value for `body` signed now (or at `at`, unix seconds)."""
    stamp = int(time.time() if at is None else at)
    mac = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, now: float | None = None,
           max_age_s: float = MAX_AGE_S) -> bool:
    """Whether `header` signs `body` with `secret` and was made within `max_age_s` of `now`."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    stamp = int(stamps[0])
    if abs((time.time() if now is None else now) - stamp) > max_age_s:
        return False
    expected = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected.encode(), given.encode()) for given in fields.get("v1", []))
