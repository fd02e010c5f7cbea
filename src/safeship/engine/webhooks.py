"""Webhook gates: one POST of a deployment's state to a gate's url, and the answer as a verdict.

A gate lets the deployment pass on a 2xx answer; any other status, a timeout or a connection that
fails is not a pass. What a non-pass does depends on the gate's type (see config/webhooks.py and
docs/webhooks.md); this module only asks. Every ask is one attempt, asynchronous
(`engine/outgoing.py`: at most 64 KiB of the answer is read), bounded as a whole by the gate's
`timeout`; it never raises: transport
failures are answers too ("timed out after 2s", "connection failed: ..."), so that a gate that is
down holds or fails the deployment with that reason instead of breaking the tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from safeship.config.webhooks import WebhookGateConfig
from safeship.engine import outgoing
from safeship.errors import ConfigError
from safeship.redaction import redact_urls
from safeship.signing import SIGNATURE_HEADER, signature
from safeship.store import DeploymentRecord

log = logging.getLogger(__name__)

USER_AGENT = "safeship-webhook-gate/1"
MAX_REASON = 200  # characters of an error kept in an answer's text


@dataclass(frozen=True)
class Answer:
    """What a gate answered: `ok` on a 2xx; `text` says it for people ("HTTP 500", "timed out
    after 2s"); `status` is the HTTP status code, None when no answer came."""

    ok: bool
    text: str
    status: int | None = None


def find_gate(gates: Sequence[WebhookGateConfig], name: str) -> WebhookGateConfig | None:
    return next((g for g in gates if g.name == name), None)


def gate_body(
    record: DeploymentRecord,
    gate: WebhookGateConfig,
    *,
    phase: str,
    step: int,
    weights: Mapping[str, int] | None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The JSON a gate receives: which deployment, where it stands, and which gate asks."""
    body: dict[str, Any] = {
        "id": record.id,
        "service": record.service,
        "environment": record.environment,
        "version": record.version,
        "baseline": record.from_version,
        "strategy": record.strategy,
        "phase": phase,
        "step": step,
        "steps": len(record.plan),
        "weights": dict(weights or {}),
        "gate": {"name": gate.name, "type": gate.type},
        "metadata": dict(gate.metadata),
        "timestamp": time.time(),
    }
    if reason is not None:
        body["reason"] = reason
    return body


def request_headers(gate: WebhookGateConfig, content: bytes) -> dict[str, str]:
    """The headers of one ask: with a `secret_file`, `X-Safeship-Signature: t=<unix seconds>,v1=<hex
    HMAC-SHA256 of "<t>.<body>">`, as webhook notifications are signed (see `safeship.signing`)."""
    headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
    secret = gate.signing_secret()
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, content)
    return headers


async def ask(gate: WebhookGateConfig, body: Mapping[str, Any]) -> Answer:
    """POST `body` to the gate once, within its timeout; never raises (but on cancellation)."""
    try:
        content = json.dumps(dict(body), separators=(",", ":"), default=str).encode()
        reply = await outgoing.post(gate.url, content, request_headers(gate, content), gate.timeout)
    except TimeoutError:
        return Answer(False, f"timed out after {gate.timeout:g}s")
    except httpx.TimeoutException:
        return Answer(False, f"timed out after {gate.timeout:g}s")
    except httpx.HTTPError as exc:
        return Answer(False, f"connection failed: {_short(exc, gate.url)}")
    except ConfigError as exc:  # the secret file of a gate built without the loader
        return Answer(False, f"not asked: {exc}")
    except (OSError, ValueError) as exc:  # a url httpx cannot use, a socket error it did not wrap
        return Answer(False, f"request failed: {_short(exc, gate.url)}")
    return Answer(reply.is_success, f"HTTP {reply.status}", reply.status)


async def ask_with_retries(gate: WebhookGateConfig, body: Mapping[str, Any]) -> tuple[Answer, int]:
    """Ask until a 2xx or `1 + retries` attempts, `backoff` apart and doubling; the last answer
    and the number of attempts. Bounded: (1 + retries) timeouts plus the backoffs."""
    attempts = 0
    while True:
        answer = await ask(gate, body)
        attempts += 1
        if answer.ok or attempts > gate.retries:
            return answer, attempts
        await asyncio.sleep(backoff(gate, attempts))


def backoff(gate: WebhookGateConfig, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: backoff, doubling, at most 5m."""
    return float(min(300.0, gate.backoff * 2 ** max(0, attempts - 1)))


def _short(exc: BaseException, url: str) -> str:
    """The error as it goes into events and the log: the gate's URL in it redacted (it may carry a
    credential), and cut short."""
    text = redact_urls(str(exc) or type(exc).__name__, [url])
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
