"""The controller's HTTP API. Every resource needs the bearer token from `<state_dir>/token`
except /healthz and /metrics. Errors are one sentence in `{"detail": ...}`:
400 bad input, 401 no token, 404 unknown id or name, 409 clashes with state, 422 bad body."""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from safeship.api.controller import Controller
from safeship.config.loader import validate
from safeship.config.models import DeploymentRequest
from safeship.engine.views import deployment_view
from safeship.environments.secrets import redactor
from safeship.errors import (
    ConfigError,
    ConflictError,
    InputError,
    NotFoundError,
    SafeshipError,
)
from safeship.routing.metrics import CONTENT_TYPE_LATEST, render
from safeship.store import DeploymentRecord, EventRecord, RollbackRecord

TOKEN_FILE = "token"


class BodyError(InputError):
    """The request body is not what the resource takes (answered 422)."""


class Unauthorized(SafeshipError):
    pass


def load_or_create_token(state_dir: Path) -> str:
    """The API token, created (mode 0600) on first use."""
    path = state_dir / TOKEN_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        token = secrets.token_urlsafe(32)
        file.write(token + "\n")
    return token


def status_of(exc: SafeshipError) -> int:
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, BodyError):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, InputError):
        return 400
    return 500


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe, and with every registered secret value replaced by ***."""
    cleaned: dict[str, Any] = redactor().redact(clean(value))
    return cleaned


def deployment_json(record: DeploymentRecord, *, full: bool = False) -> dict[str, Any]:
    return clean_dict(deployment_view(record, full=full))


def event_json(event: EventRecord) -> dict[str, Any]:
    data = {"at": event.at, "kind": event.kind, "message": event.message, "data": dict(event.data)}
    return clean_dict(data)


def rollback_json(record: RollbackRecord) -> dict[str, Any]:
    return clean_dict(dataclasses.asdict(record))


async def json_body(request: Request, *, required: bool) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise BodyError("request body: a JSON object is required")
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BodyError("request body: is not valid JSON") from None
    if not isinstance(data, dict):
        raise BodyError(f"request body: must be a JSON object, got {type(data).__name__}")
    return data


def optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BodyError(f"request body: {name}: must be a string, got {value!r}")
    return value


def bearer_guard(token: str) -> Callable[[Request], Awaitable[None]]:
    expected = f"Bearer {token}".encode()

    async def guard(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("missing or wrong bearer token (it is in <state_dir>/token)")

    return guard


def create_app(controller: Controller, token: str) -> FastAPI:
    app = FastAPI(title="safeship controller", docs_url=None, redoc_url=None, openapi_url=None)

    async def on_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SafeshipError)
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    app.add_exception_handler(SafeshipError, on_error)
    api = APIRouter(dependencies=[Depends(bearer_guard(token))])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "started_at": controller.started_at}

    @app.get("/metrics")
    async def metrics() -> Response:
        snapshot = await controller.router_snapshot()
        body = render(lambda: snapshot, lambda: dict(controller.router.unrouted))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.post("/deployments", status_code=201)
    async def create_deployment(request: Request) -> dict[str, Any]:
        body = await json_body(request, required=True)
        policy = optional_text(body, "policy")
        body.pop("policy", None)
        try:
            deployment = validate(DeploymentRequest, body, "request body")
        except ConfigError as exc:
            raise BodyError(str(exc)) from None
        return deployment_json(controller.submit(deployment, policy=policy), full=True)

    @api.get("/deployments")
    async def list_deployments(
        service: str | None = None,
        environment: str | None = None,
        active: bool = False,
        limit: int = 100,
    ) -> dict[str, Any]:
        found = controller.store.list_deployments(
            service=service,
            environment=environment,
            active_only=active,
            limit=max(1, min(limit, 1000)),
        )
        return {"deployments": [deployment_json(d) for d in found]}

    @api.get("/deployments/{deployment_id}")
    async def get_deployment(deployment_id: str) -> dict[str, Any]:
        record = controller.store.get_deployment(deployment_id)
        data = deployment_json(record, full=True)
        data["events"] = [event_json(e) for e in controller.store.events(deployment_id)]
        data["metrics"] = clean(
            await controller.version_metrics(record.service, record.environment)
        )
        rows = controller.store.rollbacks(deployment_id=deployment_id)
        data["rollbacks"] = [rollback_json(r) for r in rows]
        return data

    @api.post("/deployments/{deployment_id}/cancel")
    async def cancel_deployment(deployment_id: str, request: Request) -> dict[str, Any]:
        body = await json_body(request, required=False)
        by = optional_text(body, "by") or ""
        return deployment_json(controller.cancel(deployment_id, by=by), full=True)

    @api.post("/deployments/{deployment_id}/rollback")
    async def rollback_deployment(deployment_id: str, request: Request) -> dict[str, Any]:
        body = await json_body(request, required=False)
        reason = optional_text(body, "reason") or "manual rollback"
        return deployment_json(controller.rollback(deployment_id, reason=reason), full=True)

    @api.get("/services/{service}/history")
    async def service_history(service: str, limit: int = 100) -> dict[str, Any]:
        controller.require_service(service)
        found = controller.store.list_deployments(service=service, limit=max(1, min(limit, 1000)))
        return {
            "service": service,
            "deployments": [deployment_json(d) for d in found],
            "rollbacks": [rollback_json(r) for r in controller.store.rollbacks(service=service)],
        }

    @api.get("/rollbacks")
    async def rollbacks(service: str | None = None) -> dict[str, Any]:
        rows = controller.store.rollbacks(service=service)
        return {"rollbacks": [rollback_json(r) for r in rows]}

    @api.get("/environments")
    async def environments() -> dict[str, Any]:
        return clean_dict({"environments": controller.environments()})

    @api.post("/environments/{environment}/cleanup")
    async def cleanup_environment(environment: str) -> dict[str, Any]:
        return clean_dict(await controller.cleanup_environment(environment))

    @api.post("/deployments/{deployment_id}/approve")
    async def approve_deployment(deployment_id: str, request: Request) -> dict[str, Any]:
        body = await json_body(request, required=False)
        by = optional_text(body, "by") or ""
        return deployment_json(controller.approve(deployment_id, by=by), full=True)

    app.include_router(api)
    return app
