"""The simulated demo: the same three releases as `make demo`, on the sim world in virtual time."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from safeship.analysis.policies import get_policy
from safeship.config.models import DeploymentRequest, EnvironmentType, SafeshipConfig, ServiceConfig, SimProfile
from safeship.config.models import Environment as EnvironmentModel
from safeship.engine.simulate import sim_engine
from safeship.routing.base import RouteKey
from safeship.store import Store

RELEASES = [
    ("v1.2.0", SimProfile(error_rate=0.002, latency_p50_ms=20, latency_p99_ms=90), "good"),
    ("v1.3.0", SimProfile(error_rate=0.08, latency_p50_ms=20, latency_p99_ms=90), "8% errors"),
    ("v1.4.0", SimProfile(error_rate=0.002, latency_p50_ms=17, latency_p99_ms=80), "good and slightly faster"),
]


def demo_config() -> SafeshipConfig:
    config = SafeshipConfig()
    config.environment_management.environments = [
        EnvironmentModel(name="production", type=EnvironmentType.PRODUCTION, platform="sim", availability="medium")
    ]
    config.services = {
        "user-service": ServiceConfig(criticality="high", replicas=3, rps=200,
                                      simulate={v: p for v, p, _ in RELEASES})
    }
    config.intelligent_deployment.rollback.monitoring.duration = 60
    return config


async def run(console: Console) -> list[dict[str, Any]]:
    config = demo_config()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'state.db'}")
        start = time.time()
        for version, _profile, behaviour in RELEASES:
            engine, clock = await sim_engine(config, store, service="user-service", environment="production",
                                             candidate=version, policy_for=get_policy, start=start)
            record = engine.submit(DeploymentRequest(service_name="user-service", version=version,
                                                     environment="production"))
            console.print(f"deploying user-service {version} ({behaviour}) - {record.strategy_reason}")
            final = await engine.run(record.id)
            counters = await engine.world.router.counters(RouteKey("user-service", "production"))
            cand = counters.get(version)
            rows.append({
                "version": version, "behaviour": behaviour, "strategy": final.strategy,
                "why": final.strategy_reason, "phase": final.phase,
                "decided_after_s": (final.decided_at or clock.now()) - final.created_at,
                "duration_s": (final.finished_at or clock.now()) - final.created_at,
                "candidate_requests": cand.requests if cand else 0,
                "candidate_failed": cand.failed if cand else 0,
                "failed_requests": sum(c.failed for c in counters.values()),
                "reason": final.reason or "",
            })
            start = clock.now() + 1
        store.close()
    return rows


def summary_table(rows: list[dict[str, Any]], *, unit: str) -> Table:
    table = Table(title="safeship demo summary")
    for column in ("release", "strategy", "decision", f"decided ({unit})", f"took ({unit})",
                   "candidate requests", "candidate failed", "all failed"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"{r['version']} ({r['behaviour']})", r["strategy"], r["phase"],
                      f"{r['decided_after_s']:.0f}", f"{r['duration_s']:.0f}", str(r["candidate_requests"]),
                      str(r["candidate_failed"]), str(r["failed_requests"]))
    return table


def explain(console: Console, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(f"[bold]{r['version']}[/bold] strategy: {r['why']}")
        console.print(f"        outcome: {r['reason']}")


def main() -> int:
    console = Console()
    console.print("[bold]safeship demo on the simulated world[/bold] (virtual time)")
    rows = asyncio.run(run(console))
    console.print(summary_table(rows, unit="virtual s"))
    explain(console, rows)
    ok = [r["phase"] for r in rows] == ["succeeded", "rolled_back", "succeeded"]
    console.print("[green]as expected[/green]" if ok else "[red]unexpected outcome[/red]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
