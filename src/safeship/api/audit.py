"""The audit trail of the controller: every mutating request (POST, PUT, PATCH, DELETE), to the
API or the dashboard, allowed or refused, becomes one row of the store's append-only audit table:
when, who (the token's name, or `dashboard: <name>`), what (method and route), on what (service and
environment, deployment id), from where (the client's address and port) and the outcome (the HTTP
status and, when refused or failed, the answer's one sentence).

Handlers say who and what through the request's state (`note`); this middleware, around them, sees
the status and writes the row once the answer has been sent. A row that cannot be written is
logged as an error: the action it records has happened already.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safeship.api.roles import Principal
from safeship.store import AuditRecord, Store

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEPT_BODY = 8192  # an error answer's body is read this far for its sentence
STATE_KEY = "safeship_audit"


def note(scope_state: Any, *, principal: Principal | None = None, actor: str | None = None,
         target: str | None = None, outcome: str | None = None) -> None:
    """Record on the request (its `request.state`) what the audit row should say."""
    found = getattr(scope_state, STATE_KEY, None)
    if found is None:
        found = {}
        setattr(scope_state, STATE_KEY, found)
    if principal is not None:
        found["principal"] = principal
    if actor is not None:
        found["actor"] = actor
    if target is not None:
        found["target"] = target
    if outcome is not None:
        found["outcome"] = outcome


def _sentence(body: bytes, content_type: str) -> str:
    if "json" not in content_type:
        return ""
    try:
        detail = json.loads(body.decode("utf-8")).get("detail", "")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else json.dumps(detail)


class AuditTrail:
    """ASGI middleware: one audit row per mutating HTTP request."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") not in MUTATING:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        seen: dict[str, Any] = {"status": 500, "body": b"", "type": ""}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                seen["type"] = headers.get("content-type", "")
            elif (message["type"] == "http.response.body" and seen["status"] >= 400
                  and len(seen["body"]) < MAX_KEPT_BODY):
                seen["body"] += message.get("body", b"")[:MAX_KEPT_BODY]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            record = self._record(scope, state.get(STATE_KEY) or {}, seen)
            try:
                await asyncio.to_thread(self.store.append_audit, record)
            except Exception as exc:  # the action is done; losing its row must be seen in the log
                log.error("cannot write the audit row for %s %s (%s: %s)", record.action, record.target,
                          type(exc).__name__, exc)

    @staticmethod
    def _record(scope: Scope, noted: dict[str, Any], seen: dict[str, Any]) -> AuditRecord:
        principal: Principal | None = noted.get("principal")
        status = int(seen["status"])
        outcome = noted.get("outcome") or (_sentence(seen["body"], seen["type"]) if status >= 400 else "")
        if not outcome:
            outcome = "ok" if status < 400 else f"HTTP {status}"
        client = scope.get("client")
        source = f"{client[0]}:{client[1]}" if client else ""
        params = scope.get("path_params") or {}
        target = noted.get("target") or "/".join(str(v) for v in params.values())
        actor = noted.get("actor") or (principal.name if principal is not None else "no valid token")
        return AuditRecord(
            at=time.time(),
            actor=actor,
            role=principal.role.value if principal is not None else None,
            action=f"{scope.get('method', '')} {scope.get('path', '')}",
            target=target,
            source=source,
            status=status,
            outcome=outcome,
        )
