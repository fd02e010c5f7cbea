"""safeship's API and dashboard, served by the operator in the cluster (behind its Service).

    app = operator_app(operator, token, listen_host="0.0.0.0", api_hosts=["safeship"], running=...)

is one ASGI app: `/healthz` and `/metrics` are the operator's own (`safeship.operator.health`:
the probes and the ServiceMonitor use them, with no token and whatever Host header the kubelet or
Prometheus sends), everything else is the controller's app (`safeship.api.app.create_app`: the
same routes, tokens, roles, audit trail and dashboard) over `ReleaseController`, a small adapter
that gives it what it uses of a `Controller`:

- reads (deployments, events, history, rollbacks, overview, audit, tokens) come from the shared
  store, so every replica answers, leader or not; the config the pages list is the operator's
  `safeship.yaml` with the services and environments of the Releases this replica watches;
- approve, promote, cancel and rollback become the annotation (`safeship.dev/<command>`, a new
  value each time) of the Release that owns the deployment, by a merge patch of its
  `metadata.annotations` only; the Lease holder acts on it as on any annotation. The answer is
  202 with what was asked. The Release is the single source of truth: nothing else is changed;
- a new deployment (`POST /deployments`), an environment's cleanup and its validate run are
  refused with 409 and one sentence: a deployment starts by changing the Release's spec.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast

import uvicorn
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from safeship.config.models import DeploymentRequest, Environment, SafeshipConfig, ServiceConfig
from safeship.engine.phases import Phase
from safeship.errors import ConflictError, InputError, NotFoundError
from safeship.operator import release as rel
from safeship.operator.health import health_json, metrics_text
from safeship.operator.runner import Operator
from safeship.store import DeploymentRecord

GITOPS = ("the operator's deployments start from Releases: change the Release's spec.version or spec.image "
          "(kubectl apply, or a commit Argo CD or Flux applies)")
SUBMIT_REFUSED = f"POST /deployments is refused in the cluster; {GITOPS}"
WRITE_REFUSED = "is not done by the operator's API; the Release is the single source of truth"
ANNOTATION = {"approve": rel.APPROVE, "promote": rel.PROMOTE, "cancel": rel.ABORT, "rollback": rel.ROLLBACK}
MAX_BY = 120  # characters of who asked kept in the annotation's value


def command_value(by: str) -> str:
    """An annotation value that is new each time (the operator acts once per value): when, a random
    part, and who asked (`1765030000123-3fa2b1c0 by local admin`)."""
    who = " ".join(by.split())[:MAX_BY]
    return f"{time.time_ns() // 1_000_000}-{secrets.token_hex(4)}" + (f" by {who}" if who else "")


class ReleaseController:
    """What `create_app` and the dashboard use of a `Controller`, for the operator (see the module
    docstring); also the app's `CommandRelay`."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.store = operator.store
        self.state_dir = operator.settings.state_dir
        self.secrets_root = operator.settings.state_dir
        self.started_at = time.time()
        self._made: tuple[tuple[tuple[str, str, str], ...], SafeshipConfig] | None = None

    # ------------------------------------------------------------ what the pages list

    def _releases(self) -> list[tuple[rel.Release, Environment]]:
        """The Releases this replica watches that parse, with the environment each rolls out in."""
        found = []
        for tracked in list(self.operator.releases.values()):
            try:
                release = rel.Release.model_validate({k: v for k, v in tracked.obj.items() if k != "status"})
                found.append((release, self.operator.environment_for(release)))
            except (ValidationError, InputError):
                continue  # its status says why; it has no deployment to show
        return found

    @property
    def config(self) -> SafeshipConfig:
        """The operator's config, with each watched Release's service and environment in it."""
        key = tuple(sorted((*k, str((t.obj.get("metadata") or {}).get("resourceVersion", "")))
                           for k, t in list(self.operator.releases.items())))
        if self._made is not None and self._made[0] == key:
            return self._made[1]
        base = self.operator.settings.config
        environments = {e.name: e for e in base.environment_management.environments if e.platform == "kubernetes"}
        services: dict[str, ServiceConfig] = {}
        for release, environment in self._releases():
            services.setdefault(release.spec.service, ServiceConfig(image=release.spec.image))
            environments.setdefault(environment.name, environment)
        config = base.model_copy(update={
            "services": services,
            "environment_management": base.environment_management.model_copy(
                update={"environments": list(environments.values())}),
        })
        self._made = (key, config)
        return config

    @property
    def environment_names(self) -> list[str]:
        return [e.name for e in self.config.environment_management.environments]

    async def refresh_for(self, *, service: str | None = None, environment: str | None = None) -> None:
        """The config follows the watched Releases; there is no file to read again."""
        return None

    def environments(self) -> list[dict[str, Any]]:
        """`GET /environments`: each environment, its services' versions and active deployments."""
        config = self.config
        active = {(service, environment): deployment_id
                  for deployment_id, service, environment in self.store.active_deployment_keys()}
        found = []
        for environment in config.environment_management.environments:
            serving = self.store.current_versions(environment.name)
            found.append({
                "name": environment.name, "type": environment.type.value, "platform": environment.platform,
                "namespace": environment.namespace, "approval": environment.approval,
                "services": [{"service": name, "port": None, "current_version": serving.get(name),
                              "active_deployment": active.get((name, environment.name)),
                              "weights": {serving[name]: 100} if name in serving else {}}
                             for name in config.services],
            })
        return found

    async def version_metrics(self, service: str, environment: str) -> dict[str, dict[str, Any]]:
        """No route counters here: the cluster's traffic is measured by the environment's source."""
        return {}

    def require_service(self, service: str) -> None:
        if service not in self.config.services:
            raise NotFoundError(f"service {service!r} is not the service of a Release this operator watches")

    def require_environment(self, environment: str) -> None:
        # the dashboard's validate button, the only caller: it would run checks against the cluster
        raise ConflictError(f"validating environment {environment!r} {WRITE_REFUSED}; run `safeship "
                            "environment-manager --validate` outside the cluster")

    # ------------------------------------------------------------ what is refused

    def submit(self, request: DeploymentRequest, *, policy: str | None = None) -> DeploymentRecord:
        raise ConflictError(SUBMIT_REFUSED)

    async def cleanup_environment(self, environment: str) -> dict[str, Any]:
        raise ConflictError(f"cleaning environment {environment!r} up {WRITE_REFUSED}; deleting a Release deletes "
                            "what the operator made for it")

    def _through_release(self, deployment_id: str) -> DeploymentRecord:
        raise ConflictError(f"deployment {deployment_id}: commands go through its Release's annotations")

    def cancel(self, deployment_id: str, *, by: str = "") -> DeploymentRecord:
        return self._through_release(deployment_id)

    def approve(self, deployment_id: str, *, by: str) -> DeploymentRecord:
        return self._through_release(deployment_id)

    def rollback(self, deployment_id: str, *, reason: str, force: bool = False) -> DeploymentRecord:
        return self._through_release(deployment_id)

    def wake(self, deployment_id: str) -> None:
        return None

    # ------------------------------------------------------------ commands: the Release's annotations

    def owner(self, record: DeploymentRecord) -> rel.Release:
        """The watched Release whose deployment `record` is (its service, in its environment)."""
        for release, environment in self._releases():
            if release.spec.service == record.service and environment.name == record.environment:
                return release
        raise ConflictError(f"deployment {record.id} ({record.service} in {record.environment}) belongs to no Release "
                            "this operator watches, so no command can reach it")

    def _current(self, release: rel.Release, record: DeploymentRecord) -> str:
        """The id of the deployment a command on `release` acts on (as the reconciler picks it)."""
        tracked = self.operator.releases.get((release.namespace, release.name))
        status = (tracked.obj.get("status") or {}) if tracked is not None else {}
        named = str(status.get("deploymentId") or "")
        if named:
            return named
        active = self.store.active_deployment(record.service, record.environment)
        return active.id if active is not None else ""

    async def relay(self, record: DeploymentRecord, action: str, *, by: str) -> dict[str, Any]:
        """Ask the Release that owns `record` to `action` it: a merge patch of one annotation."""
        annotation = ANNOTATION[action]
        release = self.owner(record)
        where = f"Release {release.namespace}/{release.name}"
        current = self._current(release, record)
        if current != record.id:
            raise ConflictError(f"deployment {record.id} is not the current deployment of {where} "
                                f"({current or 'none'}), and a command on the Release acts on that one")
        if action != "rollback" and not Phase(record.phase).is_active:
            raise ConflictError(f"deployment {record.id} has ended ({record.phase}); there is nothing to {action}")
        if action == "approve" and record.phase != Phase.AWAITING_APPROVAL.value:
            raise ConflictError(f"deployment {record.id} is {record.phase}, not awaiting approval")
        if action == "promote" and record.phase == Phase.AWAITING_APPROVAL.value:
            raise ConflictError(f"deployment {record.id} is awaiting approval; approve it first")
        value = command_value(by)
        await self.operator.kube.patch(rel.API_VERSION, rel.KIND, release.name,
                                       {"metadata": {"annotations": {annotation: value}}}, namespace=release.namespace)
        return {"accepted": action, "deployment_id": record.id, "release": f"{release.namespace}/{release.name}",
                "annotation": annotation, "value": value,
                "detail": f"{action} of {record.id} asked of {where} ({annotation}={value}); the operator "
                          "holding the Lease acts on it"}


def operator_app(operator: Operator, token: str | None, *, listen_host: str, api_hosts: Sequence[str],
                 running: Callable[[], bool]) -> ASGIApp:
    """The operator's HTTP app: /healthz and /metrics, and (with a token) the API and dashboard."""
    api: ASGIApp | None = None
    if token is not None:
        from safeship.api.app import create_app
        from safeship.api.controller import Controller

        adapter = ReleaseController(operator)
        # create_app takes a Controller; the adapter has every attribute and method it and the
        # dashboard use (see above), and the commands go to its relay instead
        api = create_app(cast(Controller, adapter), token, listen_host=listen_host, extra_hosts=api_hosts,
                         relay=adapter)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ("/healthz", "/metrics"):
            answer: Response
            if scope.get("method") not in ("GET", "HEAD"):
                answer = JSONResponse({"detail": "only GET"}, status_code=405, headers={"Allow": "GET"})
            elif scope["path"] == "/healthz":
                alive = bool(running())
                answer = Response(json.dumps(health_json(operator, alive)), status_code=200 if alive else 503,
                                  media_type="application/json")
            else:
                answer = Response(metrics_text(operator), media_type="text/plain; version=0.0.4; charset=utf-8")
            await answer(scope, receive, send)
            return
        if api is None:
            if scope["type"] == "http":
                await JSONResponse({"detail": "not found: this operator runs with --no-api"},
                                   status_code=404)(scope, receive, send)
            return
        await api(scope, receive, send)

    return app


class QuietServer(uvicorn.Server):
    """uvicorn's server without signal handlers of its own: the operator's (SIGTERM, SIGINT) stop
    its loops, and then this server (`should_exit`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server_for(app: ASGIApp) -> QuietServer:
    """The server of `app` on the running loop (`await server.serve(sockets=[sock])`)."""
    return QuietServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                      timeout_graceful_shutdown=5))
