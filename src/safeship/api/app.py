"""The controller's HTTP API. Every resource needs a bearer token (the local admin token in
`<state_dir>/token`, or one made by `safeship token create`) except /healthz and /metrics;
/openapi.json (the schema of what the API takes) needs one too. What a token may do is its role's
(`safeship.api.roles`); every mutating call is written to the audit table (`safeship.api.audit`).

Errors are one sentence in `{"detail": ...}`:

- 400 the request is well formed but refused (a gate, a platform this controller does not run);
- 401 no token or a wrong one;
- 403 the token's role or environments do not allow the action (see `safeship.api.roles`);
- 404 an unknown deployment, service, environment or version. A path names a resource, so a path
  segment that names none (not configured, or not even a valid name, such as `..`) is 404 too, and
  the sentence says which and why;
- 409 the request clashes with state (an active deployment, a deployment that already ended);
- 422 a body or query that is not what the resource takes (wrong JSON, a missing field, a name
  that breaks its pattern);
- 503 the store or the router cannot be used right now (try again);
- 500 a bug: the traceback is logged, the answer names no internals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import Receive, Scope, Send

from safeship import tokens
from safeship.api.audit import AuditTrail, note
from safeship.api.controller import Controller
from safeship.api.roles import Authority, Forbidden, Permission, Principal
from safeship.config.models import DeploymentRequest
from safeship.config.names import PATTERNS, NameKind, name_problem, shown
from safeship.engine.views import deployment_view
from safeship.environments.secrets import redactor
from safeship.errors import (
    ConflictError,
    ControllerUnreachable,
    InputError,
    NotFoundError,
    SafeshipError,
    StoreError,
    TemporaryError,
)
from safeship.routing.metrics import CONTENT_TYPE_LATEST, render
from safeship.store import AuditRecord, DeploymentRecord, EventRecord, RollbackRecord

log = logging.getLogger(__name__)

TOKEN_FILE = tokens.TOKEN_FILE
MAX_LIMIT = 1000
# Deployment ids are `deploy-` and ten hex digits; anything that cannot be an id is not looked up.
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Unprocessable(InputError):
    """The body or query is not what the resource takes (answered 422)."""


class Unauthorized(SafeshipError):
    pass


# ---------------------------------------------------------------- request bodies


class DeploymentBody(DeploymentRequest):
    """A deployment request, and optionally the analysis policy to judge it with."""

    policy: str | None = Field(default=None, description="analysis policy (default: safeship)")

    service_name: str = Field(min_length=1, json_schema_extra={"pattern": f"^{PATTERNS['service'].pattern}$"})
    version: str = Field(min_length=1, json_schema_extra={"pattern": f"^{PATTERNS['version'].pattern}$"})
    environment: str = Field(min_length=1, json_schema_extra={"pattern": f"^{PATTERNS['environment'].pattern}$"})

    def request(self) -> DeploymentRequest:
        """The request without `policy`, as the engine takes it (the values are already validated,
        so nothing is parsed twice)."""
        given = {name: getattr(self, name) for name in self.model_fields_set if name != "policy"}
        return DeploymentRequest.model_validate(given)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CancelBody(_Body):
    by: str | None = Field(default=None, description="who cancels, recorded with the deployment")


class RollbackBody(_Body):
    reason: str | None = Field(default=None, description="why, recorded in the rollback row")
    force: bool = Field(default=False, description="roll back even with no earlier stable version to return "
                                                   "to, which stops the service")


class ApproveBody(_Body):
    by: str | None = Field(default=None, description="who approves, recorded with the deployment")


class PromoteBody(_Body):
    by: str | None = Field(default=None, description="who promotes, recorded in an event")


class ErrorBody(BaseModel):
    detail: str = Field(description="one sentence")
    kind: str | None = Field(default=None, description='"store" when the store cannot be used (503)')


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("refused: the request is well formed but cannot be done"),
    401: _error("no bearer token, or a wrong or revoked one"),
    403: _error("the token's role or environments do not allow this"),
    404: _error("unknown deployment, service, environment or version"),
    409: _error("clashes with the current state"),
    422: _error("the body or query is not what the resource takes"),
    503: _error("the store or the router cannot be used right now"),
}


class CommandRelay(Protocol):
    """Where a command goes when the deployments are not this process's to change (the operator in
    the cluster: the annotation of the Release that owns the deployment). `action` is approve,
    promote, cancel or rollback; the answer is 202 with the dict returned (what was asked, where)."""

    async def relay(self, record: DeploymentRecord, action: str, *, by: str) -> dict[str, Any]: ...


# ---------------------------------------------------------------- helpers


def load_or_create_token(state_dir: Path) -> str:
    """The API token, created (mode 0600, written aside and renamed into place) on first use.
    A token file that is too short, empty or readable by other users is an InputError naming the
    file (see `safeship.tokens`): it never switches authentication off."""
    return tokens.load_or_create_token(state_dir)


def status_of(exc: SafeshipError) -> int:
    """The HTTP status of every safeship error; one table for the whole API."""
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Unprocessable):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, StoreError | TemporaryError | ControllerUnreachable):
        return 503
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


def _field_path(loc: Sequence[int | str], data: Any) -> str:
    """`a.b[0].c` from a pydantic location, leaving out the names pydantic gives union members
    (a location item that is not a key of the data at that point, unless it is the last one)."""
    parts: list[str] = []
    node = data
    for index, item in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and not last:
            continue
        parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


_WHERE = {"body": "request body", "query": "query parameter", "path": "path", "header": "header"}


def validation_sentence(exc: RequestValidationError) -> str:
    """The first problem of a request FastAPI could not validate, as one sentence in the style of
    the config loader: `request body: version: required field is missing`."""
    errors = exc.errors()
    if not errors:
        return "request: not what this resource takes"
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    where = _WHERE.get(str(loc[0]), str(loc[0])) if loc else "request"
    kind = str(first.get("type", ""))
    given = first.get("input")
    if where == "request body" and len(loc) <= 2 and kind == "json_invalid":
        return "request body: is not valid JSON"
    if where == "request body" and len(loc) == 1:
        if kind == "missing":
            return "request body: a JSON object is required"
        if isinstance(given, bytes | bytearray):
            return "request body: must be a JSON object sent with Content-Type: application/json"
        return f"request body: must be a JSON object, got {type(given).__name__}"
    field = _field_path(loc[1:], exc.body if where == "request body" else None)
    prefix = f"{where}: {field}: " if field else f"{where}: "
    if kind == "extra_forbidden":
        return f"{prefix}unknown field (check its spelling)"
    if kind == "missing":
        return f"{prefix}required field is missing"
    message = str(first.get("msg", "is not valid")).removeprefix("Value error, ").replace("Input should be", "must be")
    if "got" not in message:
        message = f"{message}, got {shown(given)}"
    return prefix + message


def _well_formed(kind: NameKind, value: str | None, where: str) -> str | None:
    """`value` when it is a valid `kind` name (or None); a 422 sentence otherwise."""
    if value is None:
        return None
    problem = name_problem(kind, value)
    if problem is not None:
        raise Unprocessable(f"{where}: {problem}")
    return value


def _nothing_to_run(body: DeploymentRequest) -> None:
    """What runs on this host comes from safeship.yaml only: a body that sets an exec probe, a
    probe command or environment variables (LD_PRELOAD, PYTHONPATH, ...) would let any token holder
    run commands as the controller's user, so it is refused with 422."""
    given = body.configuration
    if given is None:
        return
    if given.environment_variables:
        raise Unprocessable("request body: configuration.environment_variables: environment variables are set only "
                            "under services.<name>.env in safeship.yaml, never by an API request")
    for name in ("liveness", "readiness"):
        probe = getattr(given.health_checks, name)
        if probe.type == "exec" or probe.command:  # an empty command (a whole request dumped) runs nothing
            raise Unprocessable(f"request body: configuration.health_checks.{name}: exec probes and probe commands "
                                "are set only in safeship.yaml, never by an API request")


def _names(kind: NameKind, value: str, known: Sequence[str]) -> None:
    """404 unless `value` (from the path) is one of the configured `known` names; the sentence says
    which names there are and, when `value` cannot be a name at all, why."""
    if value in known:
        return
    listed = ", ".join(sorted(known)) or "none configured"
    problem = name_problem(kind, value)
    why = f"; {problem}" if problem is not None else ""
    raise NotFoundError(f"{kind} {shown(value)} is not in the config (known: {listed}){why}")


def _deployment_id(value: str) -> str:
    if DEPLOYMENT_ID.fullmatch(value) is None:
        raise NotFoundError(f"deployment {shown(value)} not found (deployment ids look like deploy-0123456789)")
    return value


def _clamp(limit: int) -> int:
    return max(1, min(limit, MAX_LIMIT))


def _pattern(kind: NameKind) -> str:
    return f"^{PATTERNS[kind].pattern}$"


# Parameter types, at module level so that FastAPI can resolve the (postponed) annotations.
Service = Annotated[str, PathParam(description="a configured service")]
Environment = Annotated[str, PathParam(description="a configured environment")]
DeploymentId = Annotated[str, PathParam(description="a deployment id, such as deploy-0123456789")]
Limit = Annotated[int, Query(description=f"at most this many rows, newest first (1 to {MAX_LIMIT})")]
ServiceFilter = Annotated[
    str | None, Query(description="only this service", json_schema_extra={"pattern": _pattern("service")})
]
EnvironmentFilter = Annotated[
    str | None, Query(description="only this environment", json_schema_extra={"pattern": _pattern("environment")})
]
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False,
                       description="the token in <state_dir>/token, or one made by `safeship token create`")),
]


async def caller(request: Request, credentials: BearerCredentials) -> Principal:
    """The principal of the request's bearer token (401 for none, a wrong or a revoked one),
    noted on the request for the audit row."""
    authority: Authority = request.app.state.authority
    given = credentials.credentials if credentials is not None else ""
    principal = await asyncio.to_thread(authority.for_token, given) if given else None
    if principal is None:
        note(request.state, actor="unknown token" if given else "no token")
        raise Unauthorized("missing, wrong or revoked bearer token (the local admin token is in <state_dir>/token)")
    note(request.state, principal=principal)
    return principal


Caller = Annotated[Principal, Depends(caller)]


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """An audit row as the API and `safeship audit --json` show it (`at`: UTC seconds)."""
    return dataclasses.asdict(record)


def error_response(exc: SafeshipError) -> JSONResponse:
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s", type(exc).__name__, exc, exc_info=status == 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"detail": redactor().redact(str(exc))}
    if isinstance(exc, StoreError):
        body["kind"] = "store"  # the client answers it with exit code 4, like a local store failure
    return JSONResponse(body, status_code=status, headers=headers)


def _store_failure(exc: Exception) -> SafeshipError | None:
    """A database error the store let through, as the StoreError it is (locked, read-only, gone)."""
    if isinstance(exc, OperationalError):
        return StoreError(f"the store cannot be used right now: {exc.orig}")
    return None


class GuardedRoute(APIRoute):
    """Answers any exception a handler lets escape: safeship errors by the table above, anything
    else as a 500 with its traceback in the log (and nothing internal in the answer)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SafeshipError as exc:
                return error_response(exc)
            except (HTTPException, RequestValidationError):
                raise
            except Exception as exc:
                known = _store_failure(exc)
                if known is not None:
                    return error_response(known)
                log.exception("%s %s failed", request.method, request.url.path)
                return JSONResponse(
                    {"detail": f"the controller failed ({type(exc).__name__}); the traceback is in its log"},
                    status_code=500,
                )

        return guarded


# ---------------------------------------------------------------- trusted hosts

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def trusted_hosts(listen_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names the controller answers: loopback, the host it listens on, and the
    config's `api_hosts`. IPv6 addresses are written in brackets, as they come in the header."""
    listen = f"[{listen_host}]" if ":" in listen_host and not listen_host.startswith("[") else listen_host
    return list(dict.fromkeys(name.lower() for name in (*LOOPBACK_HOSTS, listen, *extra)))


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware, answering a refused Host header the way every other error
    is answered: 400 with one sentence in `detail`. Requests it lets through go on to Starlette's
    own check, so a header it cannot parse is still refused there."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = Headers(scope=scope).get("host", "")
            if _host_name(given) not in self.allowed_hosts:
                answer = JSONResponse(
                    {"detail": f"Host header {shown(given)} is not a name this controller answers to (it answers "
                               f"{', '.join(self.allowed_hosts)}; add others under api_hosts in the config)"},
                    status_code=400)
                await answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _host_name(header: str) -> str:
    """The host of a Host header, without its port: `[::1]` of `[::1]:8080`, `localhost` of `localhost`."""
    if header.startswith("["):
        return header[: header.find("]") + 1].lower() if "]" in header else header.lower()
    return header.rsplit(":", 1)[0].lower() if header.count(":") == 1 else header.lower()


# ---------------------------------------------------------------- the app


def create_app(controller: Controller, token: str, *, dashboard: bool = True, listen_host: str = "127.0.0.1",
               extra_hosts: Sequence[str] = (), relay: CommandRelay | None = None) -> FastAPI:
    """The API, and unless `dashboard` is False the web dashboard beside it (at / and under /ui;
    see `safeship.api.dashboard`): pages need the session cookie its login page sets, the API
    keeps needing the bearer token. Only requests whose Host header is one of `trusted_hosts`
    (loopback, `listen_host`, the config's `api_hosts` and `extra_hosts`) are answered, so a page
    that DNS rebinding points at the controller reads nothing, /healthz and /metrics included.
    With a `relay`, approve, promote, cancel and rollback (API and dashboard buttons) are handed to
    it and answered 202 with what it says was asked, instead of being done here."""
    app = FastAPI(
        title="safeship controller",
        version="1",
        description=__doc__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token
    )

    async def on_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SafeshipError)
        return error_response(exc)

    async def on_invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": redactor().redact(validation_sentence(exc))}, status_code=422)

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's words
            return JSONResponse({"detail": "request body: cannot be read as UTF-8 JSON"}, status_code=422)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(SafeshipError, on_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)
    app.router.route_class = GuardedRoute
    app.state.authority = Authority(controller.store, token)
    api = APIRouter(dependencies=[Depends(caller)], responses=ERRORS, route_class=GuardedRoute)

    def deployment_for(request: Request, who: Principal, deployment_id: str, doing: str) -> DeploymentRecord:
        """The deployment, once the caller may act on it in its environment (404 first, then 403)."""
        record = controller.store.get_deployment(_deployment_id(deployment_id))
        note(request.state, target=f"{record.id} ({record.service}/{record.environment})")
        who.require(Permission.DEPLOY, record.environment, f"{doing} deployments")
        return record

    async def relayed(response: Response, record: DeploymentRecord, action: str, who: Principal,
                      by: str | None) -> dict[str, Any] | None:
        """What the relay was asked (202), or None when commands are done here."""
        if relay is None:
            return None
        response.status_code = 202
        return clean_dict(await relay.relay(record, action, by=f"{by} ({who.name})" if by else who.name))

    # The names the controller's config has *now*: a request naming one it does not have reloads the
    # config first when the file changed (`Controller.refresh_for`), so a new environment is known.
    def environments() -> list[str]:
        return [e.name for e in controller.config.environment_management.environments]

    def services() -> list[str]:
        return list(controller.config.services)

    async def known_service(value: str | None, where: str) -> str | None:
        """A service filter from the query: 422 if malformed, 404 if not configured."""
        if _well_formed("service", value, where) is None:
            return None
        assert value is not None
        await controller.refresh_for(service=value)
        _names("service", value, services())
        return value

    async def known_environment(value: str | None, where: str) -> str | None:
        if _well_formed("environment", value, where) is None:
            return None
        assert value is not None
        await controller.refresh_for(environment=value)
        _names("environment", value, environments())
        return value

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "started_at": controller.started_at}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        snapshot = await controller.router_snapshot()
        body = render(lambda: snapshot.counters, lambda: snapshot.unrouted)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @api.post("/deployments", status_code=201)
    async def create_deployment(request: Request, who: Caller, body: DeploymentBody) -> dict[str, Any]:
        _well_formed("service", body.service_name, "request body: service_name")
        _well_formed("environment", body.environment, "request body: environment")
        _well_formed("version", body.version, "request body: version")
        note(request.state, target=f"{body.service_name}/{body.environment} {body.version}")
        who.require(Permission.DEPLOY, body.environment, "deploy")
        _nothing_to_run(body)
        await controller.refresh_for(service=body.service_name, environment=body.environment)
        record = controller.submit(body.request(), policy=body.policy)
        note(request.state, target=f"{record.id} ({record.service}/{record.environment} {record.version})")
        return deployment_json(record, full=True)

    @api.get("/deployments")
    async def list_deployments(
        service: ServiceFilter = None,
        environment: EnvironmentFilter = None,
        active: bool = False,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        found = controller.store.list_deployments(
            service=await known_service(service, "query parameter: service"),
            environment=await known_environment(environment, "query parameter: environment"),
            active_only=active,
            limit=_clamp(limit),
        )
        return {"deployments": [deployment_json(d) for d in found]}

    @api.get("/deployments/{deployment_id}")
    async def get_deployment(deployment_id: DeploymentId) -> dict[str, Any]:
        record = controller.store.get_deployment(_deployment_id(deployment_id))
        data = deployment_json(record, full=True)
        data["events"] = [event_json(e) for e in controller.store.events(deployment_id)]
        try:
            data["metrics"] = clean(await controller.version_metrics(record.service, record.environment))
        except TemporaryError as exc:  # the route's counters cannot be read now (its router restarts, its port
            data["metrics"] = {}  # is held): the deployment is still shown, and says why its numbers are not
            data["metrics_unavailable"] = redactor().redact(str(exc))
        rows = controller.store.rollbacks(deployment_id=deployment_id)
        data["rollbacks"] = [rollback_json(r) for r in rows]
        return data

    @api.post("/deployments/{deployment_id}/cancel")
    async def cancel_deployment(request: Request, response: Response, who: Caller, deployment_id: DeploymentId,
                                body: CancelBody | None = None) -> dict[str, Any]:
        record = deployment_for(request, who, deployment_id, "cancel")
        by = (body.by if body is not None else None) or ""
        if (asked := await relayed(response, record, "cancel", who, by)) is not None:
            return asked
        return deployment_json(controller.cancel(record.id, by=by), full=True)

    @api.post("/deployments/{deployment_id}/rollback")
    async def rollback_deployment(request: Request, response: Response, who: Caller, deployment_id: DeploymentId,
                                  body: RollbackBody | None = None) -> dict[str, Any]:
        record = deployment_for(request, who, deployment_id, "roll back")
        if (asked := await relayed(response, record, "rollback", who, None)) is not None:
            return asked
        reason = (body.reason if body is not None else None) or "manual rollback"
        force = body.force if body is not None else False
        return deployment_json(controller.rollback(record.id, reason=reason, force=force), full=True)

    @api.post("/deployments/{deployment_id}/approve")
    async def approve_deployment(request: Request, response: Response, who: Caller, deployment_id: DeploymentId,
                                 body: ApproveBody | None = None) -> dict[str, Any]:
        record = deployment_for(request, who, deployment_id, "approve")
        by = (body.by if body is not None else None) or ""
        if (asked := await relayed(response, record, "approve", who, by)) is not None:
            return asked
        return deployment_json(controller.approve(record.id, by=by), full=True)

    @api.post("/deployments/{deployment_id}/promote")
    async def promote_deployment(request: Request, response: Response, who: Caller, deployment_id: DeploymentId,
                                 body: PromoteBody | None = None) -> dict[str, Any]:
        """Promote now: skip the remaining steps up to the promotion (409 once promoted, ended,
        rolling back or awaiting approval)."""
        found = deployment_for(request, who, deployment_id, "promote")
        by = (body.by if body is not None else None) or ""
        if (asked := await relayed(response, found, "promote", who, by)) is not None:
            return asked
        record = controller.engine.promote(found.id, by=by)
        controller.wake(record.id)
        return deployment_json(record, full=True)

    @api.get("/services/{service}/history")
    async def service_history(service: Service, limit: Limit = 100) -> dict[str, Any]:
        await controller.refresh_for(service=service)
        _names("service", service, services())
        found = controller.store.list_deployments(service=service, limit=_clamp(limit))
        return {
            "service": service,
            "deployments": [deployment_json(d) for d in found],
            "rollbacks": [rollback_json(r) for r in controller.store.rollbacks(service=service)],
        }

    @api.get("/rollbacks")
    async def rollbacks(service: ServiceFilter = None) -> dict[str, Any]:
        rows = controller.store.rollbacks(service=await known_service(service, "query parameter: service"))
        return {"rollbacks": [rollback_json(r) for r in rows]}

    @api.get("/environments")
    async def list_environments() -> dict[str, Any]:
        return clean_dict({"environments": controller.environments()})

    @api.post("/environments/{environment}/cleanup")
    async def cleanup_environment(request: Request, who: Caller, environment: Environment) -> dict[str, Any]:
        await controller.refresh_for(environment=environment)
        _names("environment", environment, environments())  # before anything is touched
        who.require(Permission.ADMIN, environment, "clean environments up")
        return clean_dict(await controller.cleanup_environment(environment))

    @api.get("/audit")
    async def audit(who: Caller, limit: Limit = 100, actor: str | None = None) -> dict[str, Any]:
        """The audit table, newest first (admins not limited to environments only)."""
        who.require(Permission.ADMIN, None, "read the audit table")
        rows = await asyncio.to_thread(controller.store.audit, limit=_clamp(limit), actor=actor)
        return {"audit": [audit_json(r) for r in rows]}

    app.include_router(api)
    app.add_middleware(AuditTrail, store=controller.store)
    hosts = trusted_hosts(listen_host, [*controller.config.api_hosts, *extra_hosts])
    app.add_middleware(TrustedHosts, allowed_hosts=hosts, www_redirect=False)
    if dashboard:
        from safeship.api.dashboard import mount

        mount(app, controller, token, relay=relay)
    return app

