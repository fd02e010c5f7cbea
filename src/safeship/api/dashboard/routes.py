"""The dashboard's routes: server-rendered pages, the actions they post, and one stream of
server-sent events that tells open pages when to refresh.

Paths (the JSON API keeps every other path, bearer-only):

    GET  /                                   overview (environments x services)
    GET  /ui/login, POST /ui/login           the token in, a session cookie out
    POST /ui/logout
    GET  /ui/deployments/{id}                one deployment: plan, chart, evidence, events, buttons
    GET  /ui/deployments/{id}/timeline.json  the chart's data
    POST /ui/deployments/{id}/{action}       approve, promote, abort, rollback (CSRF token required)
    GET  /ui/history                         deployments and rollbacks, filtered
    GET  /ui/environments                    validate results, quota bars, freeze windows
    POST /ui/environments/{name}/validate    run the validate checks now (CSRF token required)
    GET  /ui/audit                           the audit table (admins not limited to environments)
    GET  /ui/stream                          server-sent events from the events cursor
    GET  /ui/static/...                      CSS, JS, uPlot

A page without a valid session cookie (or whose token was revoked since) redirects to the login
page; the chart data and the stream answer 401 instead. An action without the right CSRF token is
refused with 403 and changes nothing, and so is one the session's role does not allow (pages show
only the buttons it allows). Every POST is written to the audit table (`safeship.api.audit`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import OperationalError
from sse_starlette import EventSourceResponse

from safeship.api.app import CommandRelay, audit_json, status_of
from safeship.api.audit import note
from safeship.api.controller import Controller
from safeship.api.dashboard import views
from safeship.api.dashboard.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, SESSION_MAX_AGE_S, Sessions
from safeship.api.roles import Authority, Permission, Principal
from safeship.engine.phases import Phase
from safeship.engine.views import step_of
from safeship.environments.manager import EnvironmentManager
from safeship.errors import InputError, NotFoundError, SafeshipError, StoreError
from safeship.redaction import redactor

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ACTIONS = ("approve", "promote", "abort", "rollback")
CONFIRMED = ("abort", "rollback")  # asked for in the page; without the answer, a confirmation page
DONE = {
    "approve": "Approved: the deployment goes on.",
    "promote": "Promote requested: the remaining steps up to the promotion are skipped.",
    "abort": "Abort requested: the deployment is being cancelled.",
    "rollback": "Rollback requested.",
}
# With a relay (the operator), the button asks the Release; the operator acts on it.
SENT = {
    "approve": "Approval sent to the deployment's Release; the operator acts on it.",
    "promote": "Promote sent to the deployment's Release; the operator acts on it.",
    "abort": "Abort sent to the deployment's Release; the operator acts on it.",
    "rollback": "Rollback sent to the deployment's Release; the operator acts on it.",
}
DOING = {"approve": "approve deployments", "promote": "promote deployments", "abort": "cancel deployments",
         "rollback": "roll back deployments"}
AUDIT_ROWS = 200
MAX_FORM_BYTES = 16 * 1024
STREAM_POLL_S = 0.5
STREAM_MAX_S = 300.0  # then the browser reconnects with Last-Event-ID and resumes where it was
STREAM_BATCH = 200
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # as the API checks ids


class Forbidden(SafeshipError):
    """The CSRF token is missing or wrong (answered 403)."""


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = views.when
    env.filters["took"] = views.took
    env.filters["step_of"] = step_of  # "3/5", as the commands print it
    env.filters["redact"] = lambda value: redactor().redact(str(value)) if value is not None else ""
    env.filters["evalue"] = _evalue
    env.filters["phase"] = lambda value: str(value or "").replace("_", " ")
    env.filters["log_share"] = _log_share
    return env


def _log_share(e_value: float, bound: float | None) -> float:
    """How far an e-value has gone towards its bound, in percent on a log scale (0 at e = 1)."""
    if bound is None or bound <= 1 or not math.isfinite(e_value) or e_value <= 1:
        return 0.0
    return round(min(100.0, 100.0 * math.log(e_value) / math.log(bound)), 1)


def _evalue(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if value >= 1e5:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _script_json(value: Any) -> str:
    """JSON to embed in a <script type="application/json"> element: no '<' can end the element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _local_path(value: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class Dashboard:
    """The dashboard of one controller, for one API token."""

    def __init__(self, controller: Controller, token: str, *, stream_max_s: float = STREAM_MAX_S,
                 stream_poll_s: float = STREAM_POLL_S, relay: CommandRelay | None = None) -> None:
        self.controller = controller
        self.relay = relay  # set: the buttons' commands go to it (see safeship.api.app.CommandRelay)
        self.sessions = Sessions(token, state_dir=controller.state_dir)
        self.authority = Authority(controller.store, token)
        self.templates = _templates()
        self.stream_max_s = stream_max_s
        self.stream_poll_s = stream_poll_s
        # validate runs started from the Environments page, by environment: kept in memory, since
        # the store keeps only what `--prepare` recorded
        self.validations: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ helpers

    def who(self, request: Request) -> Principal | None:
        """The principal of the request's session: None without a valid cookie, or when the token
        it was issued to has been revoked since. Looked up once per request, and noted for the
        audit row."""
        if "safeship.principal" in request.scope:
            found: Principal | None = request.scope["safeship.principal"]
            return found
        subject = self.sessions.session_subject(request.cookies.get(COOKIE))
        principal = self.authority.for_session(subject) if subject is not None else None
        request.scope["safeship.principal"] = principal
        if principal is not None:
            note(request.state, principal=principal, actor=f"dashboard: {principal.name}")
        return principal

    def session(self, request: Request) -> str | None:
        cookie = request.cookies.get(COOKIE)
        return cookie if self.who(request) is not None else None

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        cookie = self.session(request)
        body = self.templates.get_template(template).render(
            csrf=self.sessions.csrf_for(cookie) if cookie else "",
            csrf_field=CSRF_FIELD,
            path=request.url.path,
            who=self.who(request),
            READ=Permission.READ,
            DEPLOY=Permission.DEPLOY,
            ADMIN=Permission.ADMIN,
            **values,
        )
        return HTMLResponse(body, status_code=status, headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                       "frame-ancestors 'none'",
            "Referrer-Policy": "same-origin",
        })

    def login_redirect(self, request: Request) -> RedirectResponse:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(wanted, safe='')}", status_code=303)

    async def form(self, request: Request) -> dict[str, str]:
        """An urlencoded form body (the pages post nothing else), first value of each field."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise InputError(f"form: larger than {MAX_FORM_BYTES} bytes")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError("form: cannot be read as an urlencoded UTF-8 form") from exc
        return {name: values[0] for name, values in fields.items() if values}

    def check_csrf(self, request: Request, form: Mapping[str, str]) -> None:
        given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not self.sessions.valid_csrf(request.cookies.get(COOKIE), given):
            raise Forbidden("missing or wrong CSRF token: reload the page and try again")

    def refused(self, request: Request, exc: SafeshipError, status: int) -> HTMLResponse:
        message = redactor().redact(str(exc))
        note(request.state, outcome=message)
        return self.page(request, "message.html", status=status, title="Refused", message=message)

    def require(self, request: Request, permission: Permission, environment: str | None, doing: str) -> None:
        """Forbidden (a 403 page) unless the session's role allows `doing` in `environment`."""
        principal = self.who(request)
        assert principal is not None  # pages check the session first
        principal.require(permission, environment, doing)


def _status(exc: SafeshipError) -> int:
    """The API's status for the error (one table for both, 403 for a role that does not allow the
    action), and 403 for a refused CSRF token."""
    return 403 if isinstance(exc, Forbidden) else status_of(exc)


def mount(app: FastAPI, controller: Controller, token: str, *, relay: CommandRelay | None = None,
          **options: float) -> Dashboard:
    """Serve the dashboard from `app`: pages at / and under /ui, its files under /ui/static."""
    board = Dashboard(controller, token, relay=relay, **options)
    app.include_router(build_router(board))
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
    return board


def build_router(board: Dashboard) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    controller = board.controller

    async def guarded(request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
        """Pages: no session, to the login page; a safeship error, a page that says it in one
        sentence with the status of the API's table (403 for a missing CSRF token)."""
        if board.session(request) is None:
            return board.login_redirect(request)
        try:
            return await handler(request)
        except SafeshipError as exc:
            return board.refused(request, exc, _status(exc))
        except OperationalError as exc:  # the store is locked, read-only or gone: try again later
            return board.refused(request, StoreError(f"the store cannot be used right now: {exc.orig}"), 503)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            return board.page(request, "message.html", status=500, title="Failed",
                              message=f"the controller failed ({type(exc).__name__}); the traceback is in its log")

    # ------------------------------------------------------------ login

    @router.get("/ui/login")
    async def login_page(request: Request, next: str = "/") -> Response:
        return board.page(request, "login.html", next=_local_path(next), error="")

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        try:
            form = await board.form(request)
        except InputError as exc:
            return board.page(request, "login.html", status=400, next="/", error=str(exc))
        target = _local_path(form.get("next"))
        given = form.get("token", "")
        principal = await asyncio.to_thread(board.authority.for_token, given) if given.strip() else None
        if principal is None:
            error = ("That is not the token: use the local admin token in <state_dir>/token, or one that "
                     "`safeship token create` printed and no one has revoked.")
            note(request.state, actor="dashboard: unknown token" if given.strip() else "dashboard: no token",
                 outcome=error)
            return board.page(request, "login.html", status=401, next=target, error=error)
        note(request.state, principal=principal, actor=f"dashboard: {principal.name}", target="session",
             outcome="logged in")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, board.sessions.new_session(principal.token_id or ""), max_age=SESSION_MAX_AGE_S,
                            path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        board.who(request)  # the audit row names who logged out
        try:
            board.check_csrf(request, await board.form(request))
        except SafeshipError as exc:
            return board.refused(request, exc, _status(exc))
        note(request.state, target="every session", outcome="logged out")
        board.sessions.revoke_all()  # a copy of this cookie (or any other session) is refused from now on
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------ pages

    @router.get("/")
    async def overview(request: Request) -> Response:
        async def show(request: Request) -> Response:
            # read in a worker thread: the deployments' ticks go on while the store is read
            data = await asyncio.to_thread(views.overview, controller)
            return board.page(request, "overview.html", title="Overview", **data)
        return await guarded(request, show)

    @router.get("/ui/deployments/{deployment_id}")
    async def deployment(request: Request, deployment_id: str, done: str = "") -> Response:
        async def show(request: Request) -> Response:
            data = views.deployment_page(controller, _deployment_id(deployment_id))
            principal = board.who(request)
            allowed = principal is not None and principal.may(Permission.DEPLOY, data["record"].environment)
            data["actions"] = {name: shown and allowed for name, shown in data["actions"].items()}
            return board.page(request, "deployment.html", title=data["record"].id, done=_done(done),
                              timeline_json=_script_json(data["timeline"]), **data)
        return await guarded(request, show)

    @router.get("/ui/deployments/{deployment_id}/timeline.json")
    async def timeline(request: Request, deployment_id: str) -> Response:
        if board.session(request) is None:
            return JSONResponse({"detail": "log in first"}, status_code=401)
        try:
            record = controller.store.get_deployment(_deployment_id(deployment_id))
        except NotFoundError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)
        data = views.timeline(record, controller.store.events(record.id)).to_json()
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    @router.post("/ui/deployments/{deployment_id}/{action}")
    async def act(request: Request, deployment_id: str, action: str) -> Response:
        async def run(request: Request) -> Response:
            form = await board.form(request)
            board.check_csrf(request, form)  # before anything is looked up or changed
            if action not in ACTIONS:
                raise NotFoundError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
            record = controller.store.get_deployment(_deployment_id(deployment_id))
            note(request.state, target=f"{record.id} ({record.service}/{record.environment})")
            board.require(request, Permission.DEPLOY, record.environment, DOING[action])
            if action in CONFIRMED and form.get("confirmed") != "yes":
                note(request.state, outcome="not done: the page asks to confirm it")
                return board.page(request, "confirm.html", title="Confirm", record=record, action=action)
            by = "dashboard"
            if board.relay is not None:
                principal = board.who(request)
                verb = {"abort": "cancel"}.get(action, action)
                if action == "promote" and record.phase == Phase.AWAITING_APPROVAL.value:
                    verb = "approve"  # as below: promoting a deployment that waits for approval approves it
                await board.relay.relay(record, verb, by=f"dashboard: {principal.name if principal else ''}")
                return RedirectResponse(f"/ui/deployments/{record.id}?done={action}-sent", status_code=303)
            if action == "approve" or (action == "promote" and record.phase == Phase.AWAITING_APPROVAL.value):
                controller.approve(record.id, by=by)
            elif action == "promote":
                controller.engine.promote(record.id, by=by)
                controller.wake(record.id)
            elif action == "abort":
                controller.cancel(record.id, by=by)
            else:
                reason = form.get("reason", "").strip()[:500] or "manual rollback from the dashboard"
                controller.rollback(record.id, reason=reason, force=form.get("force") == "yes")
            return RedirectResponse(f"/ui/deployments/{record.id}?done={action}", status_code=303)
        return await guarded(request, run)

    @router.get("/ui/history")
    async def history(request: Request, service: str = "", environment: str = "", outcome: str = "") -> Response:
        async def show(request: Request) -> Response:
            environments = [e.name for e in controller.config.environment_management.environments]
            data = views.history(
                controller,
                service=_choice(service, list(controller.config.services), "service"),
                environment=_choice(environment, environments, "environment"),
                outcome=_choice(outcome, list(views.OUTCOMES), "outcome"),
            )
            return board.page(request, "history.html", title="History", **data)
        return await guarded(request, show)

    @router.get("/ui/environments")
    async def environments(request: Request) -> Response:
        async def show(request: Request) -> Response:
            data = views.environments_page(controller, board.validations)
            return board.page(request, "environments.html", title="Environments", **data)
        return await guarded(request, show)

    @router.post("/ui/environments/{name}/validate")
    async def validate(request: Request, name: str) -> Response:
        async def run(request: Request) -> Response:
            board.check_csrf(request, await board.form(request))
            controller.require_environment(name)
            note(request.state, target=name)
            board.require(request, Permission.DEPLOY, name, "validate environments")
            manager = EnvironmentManager(controller.config, state_dir=controller.state_dir,
                                         root=controller.secrets_root, store=controller.store)
            checks = await asyncio.to_thread(manager.validate, name)
            board.validations[name] = {"at": time.time(), "ok": all(c.ok for c in checks),
                                       "checks": [c.to_json() for c in checks], "source": "dashboard"}
            return RedirectResponse(f"/ui/environments#env-{name}", status_code=303)
        return await guarded(request, run)

    @router.get("/ui/audit")
    async def audit(request: Request, actor: str = "") -> Response:
        async def show(request: Request) -> Response:
            board.require(request, Permission.ADMIN, None, "read the audit table")
            rows = await asyncio.to_thread(controller.store.audit, limit=AUDIT_ROWS, actor=actor or None)
            return board.page(request, "audit.html", title="Audit", rows=[audit_json(r) for r in rows],
                              actor=actor, shown=AUDIT_ROWS)
        return await guarded(request, show)

    # ------------------------------------------------------------ live updates

    @router.get("/ui/stream")
    async def stream(request: Request, deployment: str = "", after: int = -1) -> Response:
        if board.session(request) is None:
            return JSONResponse({"detail": "log in first"}, status_code=401)
        wanted = deployment or None
        if wanted is not None and _not_an_id(wanted):
            return JSONResponse({"detail": f"deployment {wanted!r} not found"}, status_code=404)
        resume = request.headers.get("last-event-id", "")
        start = int(resume) if resume.isdigit() else after
        if start < 0:
            start = await asyncio.to_thread(controller.store.last_event_id)
        return EventSourceResponse(_events(board, request, wanted, start), ping=15,
                                   headers={"Cache-Control": "no-store"})

    return router


async def _events(
    board: Dashboard, request: Request, deployment: str | None, after: int
) -> AsyncIterator[dict[str, Any]]:
    """Events above the cursor `after`, as they are written, until the client goes away or
    `stream_max_s` passes. Each read is one short query in a worker thread: nothing holds the
    store between reads, and the event loop never waits on it."""
    store = board.controller.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + board.stream_max_s
    yield {"event": "hello", "data": json.dumps({"after": after})}
    while loop.time() < deadline:
        if await request.is_disconnected():
            return
        found = await asyncio.to_thread(store.events_since, after, limit=STREAM_BATCH, deployment_id=deployment)
        for event in found:
            after = event.id if event.id is not None else after
            data = {"id": event.id, "deployment_id": event.deployment_id, "kind": event.kind,
                    "message": redactor().redact(event.message), "at": event.at}
            yield {"id": str(after), "event": "change", "data": json.dumps(data)}
        if len(found) < STREAM_BATCH:
            await asyncio.sleep(board.stream_poll_s)


def _done(value: str) -> str:
    """The sentence a page shows after a button: `approve` done here, `approve-sent` to the Release."""
    if value.endswith("-sent"):
        return SENT.get(value.removesuffix("-sent"), "")
    return DONE.get(value, "")


def _not_an_id(value: str) -> bool:
    """True when `value` cannot be a deployment id (the API's rule), so it is never looked up."""
    return DEPLOYMENT_ID.fullmatch(value) is None


def _deployment_id(value: str) -> str:
    if _not_an_id(value):
        raise NotFoundError(f"deployment {value!r} not found (deployment ids look like deploy-0123456789)")
    return value


def _choice(value: str, known: list[str], what: str) -> str | None:
    """A filter from the query string: '' for all, else one of `known` (400 otherwise)."""
    if not value:
        return None
    if value not in known:
        raise InputError(f"{what} filter: {value!r} is not one of {', '.join(known) or 'none'}")
    return value
