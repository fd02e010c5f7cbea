"""`make demo`: the local controller, the example service, real traffic, one bad and one good release.

1. start the controller (real processes, the builtin router, real HTTP probes);
2. deploy user-service v1.2.0;
3. send a bounded open-loop load (100 req/s) to the router;
4. deploy v1.3.0 (8% errors): rolled back on its own;
5. deploy v1.4.0 (good, a little faster): promoted;
6. print a summary, then stop everything it started, and what to try next.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from safeship.api.client import ControllerClient
from safeship.cli.output import ProgressPrinter, console, styled
from safeship.loadgen import LoadGenerator, failed
from safeship.routing.remote import stop_daemon
from safeship.store import Store

REPO = Path(__file__).resolve().parents[2]
SERVICE, ENVIRONMENT = "user-service", "production"
ROUTE = f"{ENVIRONMENT}/{SERVICE}"
FINAL = {"succeeded", "rolled_back", "failed", "cancelled"}
RELEASES = [("v1.3.0", "8% errors"), ("v1.4.0", "good, a little faster")]



def follow(client: ControllerClient, deployment_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
    started, printer = time.time(), ProgressPrinter()
    while time.time() - started < timeout:
        data = client.get(deployment_id)
        printer.update(data, time.time() - started)
        if data["phase"] in FINAL:
            return data
        time.sleep(0.5)
    raise TimeoutError(f"{deployment_id} did not finish within {timeout:.0f}s")


def deploy(client: ControllerClient, version: str) -> dict[str, Any]:
    created = client.deploy({"service_name": SERVICE, "version": version, "environment": ENVIRONMENT})
    console.print(styled(f"deploy {SERVICE} {version}", "bold"), f"({created['id']}): {created['strategy_reason']}")
    return follow(client, str(created["id"]))


def stop_everything(client: ControllerClient, state_dir: Path) -> None:
    """Stop the controller and its router daemon, then every service process (PIDs from the ledger)."""
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        stop_daemon(state_dir)
    deadline = time.time() + 15
    while client.is_running() and time.time() < deadline:
        time.sleep(0.2)
    database = state_dir / "state.db"
    if not database.exists():
        return
    store = Store(f"sqlite:///{database}")
    try:
        pids = [pid for r in store.load_instances() if isinstance(pid := r.get("pid"), int)]
    finally:
        store.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        if sig is signal.SIGTERM:
            time.sleep(2.0)


def summary(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="safeship demo: what users saw")
    for column in ("release", "strategy", "decision", "decided after", "took", "candidate served",
                   "failed requests", "of requests"):
        table.add_column(column, justify="right" if column not in ("release", "strategy", "decision") else "left")
    for r in rows:
        table.add_row(f"{r['version']} ({r['behaviour']})", r["strategy"], r["phase"], f"{r['decided']:.1f}s",
                      f"{r['took']:.1f}s", str(r["candidate_served"]), str(r["failed"]), str(r["requests"]))
    return table


def run(workdir: Path) -> list[dict[str, Any]]:
    config = workdir / "safeship.yaml"
    shutil.copy(REPO / "examples" / "demo.yaml", config)
    state_dir = workdir / ".safeship"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.chdir(REPO)  # the service command is `python -m examples.user_service`
    client = ControllerClient(state_dir)
    rows: list[dict[str, Any]] = []
    try:
        client.ensure_running(config)
        console.print(f"controller running (pid {client.info()['pid']}), state in {state_dir}")  # type: ignore[index]
        first = deploy(client, "v1.2.0")
        if first["phase"] != "succeeded":
            raise RuntimeError(f"v1.2.0 did not start: {first['reason']}")
        port = client.routes()[ROUTE]
        console.print(f"sending 100 req/s to the router at 127.0.0.1:{port}")
        with LoadGenerator("127.0.0.1", port, rate=100, max_s=150) as load:
            time.sleep(2.0)
            for version, behaviour in RELEASES:
                started = time.time()
                data = deploy(client, version)
                ended = time.time()
                seen = load.window(started, ended)
                rows.append({
                    "version": version, "behaviour": behaviour, "strategy": data["strategy"],
                    "why": data["strategy_reason"], "phase": data["phase"], "reason": data.get("reason") or "",
                    "decided": (data.get("decided_at") or ended) - data["created_at"],
                    "took": (data.get("finished_at") or ended) - data["created_at"],
                    "candidate_served": sum(1 for o in seen if o.version == version),
                    "failed": failed(seen), "requests": len(seen),
                })
                time.sleep(1.0)
    finally:
        stop_everything(client, state_dir)
    return rows


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="safeship-demo-"))
    began = time.time()
    try:
        rows = run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(summary(rows))
    for r in rows:
        console.print(styled(r["version"], "bold"), f"strategy: {r['why']}")
        console.print(f"        outcome: {r['reason']}")
    expected = [("v1.3.0", "rolled_back"), ("v1.4.0", "succeeded")]
    ok = [(r["version"], r["phase"]) for r in rows] == expected
    verdict = styled("as expected", "green") if ok else styled("unexpected", "red")
    console.print(verdict, f"in {time.time() - began:.0f}s; everything the demo started has been stopped")
    for line in NEXT:
        console.print(f"next: {line}")
    return 0 if ok else 1


# What to try after the demo, in the order a newcomer would: each is a real command (README).
NEXT = (
    'export PATH="$PWD/.venv/bin:$PATH"   # the commands below, in this shell',
    "safeship init                         # a commented starter safeship.yaml in this folder",
    "environment-manager --validate --environment development",
    "deployment-engine --deploy --service web --version v1.0.0 --environment development",
    "safeship server --reload              # after editing safeship.yaml: no restart needed",
    "make demo-sim                         # the same releases on a simulated world, in seconds",
)


if __name__ == "__main__":
    sys.exit(main())
