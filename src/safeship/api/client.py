"""Talking to the controller daemon from the CLI: find it through `<state_dir>/controller.json`,
authenticate with `<state_dir>/token`, start it in the background when nobody answers.

Errors come back as safeship errors carrying the server's one sentence: 400/422 InputError,
404 NotFoundError, 409 ConflictError, 503 StoreError (exit code 4) when the store cannot be used and
TemporaryError otherwise; no answer at all is ControllerUnreachable (exit code 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from safeship.api.daemons import SERVER_MODULE, alive, cmdline, is_controller, listens_on
from safeship.environments.manager import read_routes
from safeship.errors import (
    ConflictError,
    ControllerUnreachable,
    InputError,
    NotFoundError,
    SafeshipError,
    StoreError,
    TemporaryError,
)
from safeship.tokens import TOKEN_FILE, private_dir, token_problem

CONTROLLER_FILE = "controller.json"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0

Rows = list[dict[str, Any]]  # a module-level name: the client has a method called `list`


class ControllerClient:
    def __init__(self, state_dir: str | Path, *, timeout: float = 10.0) -> None:
        self.state_dir = Path(state_dir)
        self.timeout = timeout

    # ------------------------------------------------------------ finding the daemon

    def info(self) -> dict[str, Any] | None:
        """controller.json: {pid, host, port, started_at, config}, or None."""
        try:
            data = json.loads((self.state_dir / CONTROLLER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "port" in data else None

    def not_running_because(self) -> str | None:
        """Why controller.json does not lead to a running controller, or None when it does: its PID
        must be alive, be a safeship controller of this state directory, and itself listen on the
        recorded port. Checked before the token is sent anywhere, so a stale record whose port
        another program took never receives it."""
        record = self.state_dir / CONTROLLER_FILE
        info = self.info()
        if info is None:
            return f"{record} does not exist"
        try:
            pid, port = int(info["pid"]), int(info["port"])
        except (KeyError, TypeError, ValueError):
            return f"{record} names no pid and port"
        if not alive(pid):
            return f"{record} is stale: pid {pid} no longer runs"
        if not is_controller(pid, self.state_dir):
            command = " ".join(cmdline(pid))[:80] or "a process /proc does not show"
            return f"{record} is stale: pid {pid} is not a safeship controller ({command})"
        if not listens_on(pid, port):
            return f"{record} is stale: the controller (pid {pid}) does not listen on port {port}"
        return None

    def base_url(self) -> str:
        why = self.not_running_because()
        info = self.info()
        if why is not None or info is None:
            raise ControllerUnreachable(f"no safeship controller is running for {self.state_dir} ({why})")
        return f"http://{info.get('host', '127.0.0.1')}:{int(info['port'])}"

    def token(self) -> str:
        try:
            return (self.state_dir / TOKEN_FILE).read_text().strip()
        except OSError:
            return ""

    def routes(self) -> dict[str, int]:
        """ "<environment>/<service>" -> the route's port, as the controller last wrote them."""
        return {str(key): port for key, port in read_routes(self.state_dir).items()}

    def is_running(self) -> bool:
        try:
            response = httpx.get(self.base_url() + "/healthz", timeout=2.0)
        except (ControllerUnreachable, httpx.HTTPError):
            return False
        return response.status_code == 200

    def ensure_running(self, config_path: str | Path) -> bool:
        """Start a controller in the background unless one answers; True if this call started it."""
        if self.is_running():
            return False
        token = self.state_dir / TOKEN_FILE
        problem = token_problem(token) if token.exists() else None
        if problem is not None:  # the controller would refuse it: say why here, as bad input
            raise InputError(f"the API token file {token} {problem}; the controller does not start with it")
        logs = self.state_dir / "logs"
        private_dir(self.state_dir)
        private_dir(logs)
        command = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--config",
            str(Path(config_path).resolve()),
        ]
        fd = os.open(logs / "controller.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # a log an older safeship made readable by others
        with os.fdopen(fd, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and its terminal
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.is_running():
                return True
            if process.poll() is not None and not self.is_running():
                why = _last_line(logs / "controller.log")
                raise ControllerUnreachable(
                    f"the controller exited with code {process.returncode} while starting"
                    f"{': ' + why if why else ''} (log: {logs / 'controller.log'})"
                )
            time.sleep(0.1)
        raise ControllerUnreachable(
            f"the controller did not answer within {START_TIMEOUT:.0f}s; "
            f"see {logs / 'controller.log'}"
        )

    def stop(self) -> bool:
        """SIGTERM our controller (only if its PID still runs our server); True once it is gone."""
        info = self.info()
        if info is None:
            return False
        pid = int(info["pid"])
        if not is_controller(pid, self.state_dir):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not is_controller(pid, self.state_dir):
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------ resources

    def deploy(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/deployments", body)

    def get(self, deployment_id: str) -> dict[str, Any]:
        return self._call("GET", f"/deployments/{deployment_id}")

    def list(self, **filters: Any) -> Rows:
        params = {k: v for k, v in filters.items() if v is not None}
        found: Rows = self._call("GET", "/deployments", params=params)["deployments"]
        return found

    def cancel(self, deployment_id: str, by: str = "") -> dict[str, Any]:
        return self._call("POST", f"/deployments/{deployment_id}/cancel", {"by": by})

    def rollback(self, deployment_id: str, reason: str = "manual rollback", *, force: bool = False) -> dict[str, Any]:
        return self._call("POST", f"/deployments/{deployment_id}/rollback", {"reason": reason, "force": force})

    def history(self, service: str) -> dict[str, Any]:
        return self._call("GET", f"/services/{service}/history")

    def rollbacks(self, service: str | None = None) -> Rows:
        params = {"service": service} if service else {}
        found: Rows = self._call("GET", "/rollbacks", params=params)["rollbacks"]
        return found

    def environments(self) -> Rows:
        found: Rows = self._call("GET", "/environments")["environments"]
        return found

    def cleanup_environment(self, environment: str) -> dict[str, Any]:
        return self._call("POST", f"/environments/{environment}/cleanup")

    def approve(self, deployment_id: str, by: str = "") -> dict[str, Any]:
        return self._call("POST", f"/deployments/{deployment_id}/approve", {"by": by})

    def promote(self, deployment_id: str, by: str = "") -> dict[str, Any]:
        return self._call("POST", f"/deployments/{deployment_id}/promote", {"by": by})

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = self.base_url() + path
        headers = {"Authorization": f"Bearer {self.token()}"}
        try:
            response = httpx.request(
                method, url, json=body, params=params, headers=headers, timeout=self.timeout
            )
        except httpx.TransportError as exc:
            raise ControllerUnreachable(f"the controller at {url} does not answer: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        data: dict[str, Any] = response.json()
        return data


def _error(response: httpx.Response) -> SafeshipError:
    kind = None
    try:
        body = response.json()
        detail = str(body["detail"])
        kind = body.get("kind")
    except (ValueError, KeyError, TypeError, AttributeError):
        detail = response.text.strip() or response.reason_phrase
    status = response.status_code
    if status == 404:
        return NotFoundError(detail)
    if status == 409:
        return ConflictError(detail)
    if status == 401:
        return InputError(f"the controller refused the token: {detail}")
    if status < 500:
        return InputError(detail)
    if status == 503 and kind == "store":
        return StoreError(detail)
    if status == 503:
        return TemporaryError(f"the controller cannot do that right now: {detail}")
    return SafeshipError(f"the controller failed: {detail}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""
