"""Webhook gates: one POST of a deployment's state to a gate's url, and the answer as a verdict.

A gate lets the deployment pass on a 2xx answer; any other status, a timeout or a connection that
fails is not a pass. What a non-pass does depends on the gate's type (see config/webhooks.py and
docs/webhooks.md); this module only asks. Every ask is one attempt, asynchronous
(`httpx.AsyncClient`), bounded as a whole by the gate's `timeout`; it never raises: transport
failures are answers too ("timed out after 2s", "connection failed: ..."), so that a gate that is
down holds or fails the deployment with that reason instead of breaking the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from safeship.config.webhooks import WebhookGateConfig
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


async def ask(gate: WebhookGateConfig, body: Mapping[str, Any]) -> Answer:
    """POST `body` to the gate once, within its timeout; never raises (but on cancellation)."""
    try:
        async with asyncio.timeout(gate.timeout):
            async with httpx.AsyncClient(timeout=gate.timeout, follow_redirects=False) as client:
                response = await client.post(gate.url, json=dict(body), headers={"User-Agent": USER_AGENT})
    except TimeoutError:
        return Answer(False, f"timed out after {gate.timeout:g}s")
    except httpx.TimeoutException:
        return Answer(False, f"timed out after {gate.timeout:g}s")
    except httpx.HTTPError as exc:
        return Answer(False, f"connection failed: {_short(exc)}")
    except (OSError, ValueError) as exc:  # a url httpx cannot use, a socket error it did not wrap
        return Answer(False, f"request failed: {_short(exc)}")
    code = response.status_code
    return Answer(200 <= code < 300, f"HTTP {code}", code)


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


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."
