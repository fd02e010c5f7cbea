"""bench/controller_load.py's core, small: one controller, 20 concurrent canaries on simulated
services for a few seconds, its dashboard asked from another process. What a user would see:
every deployment was ticked and moved on (or ended), the store was written, and the overview
answered 200 listing all 20 services."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from safeship import platforms, routing, traffic

BENCH = Path(__file__).resolve().parents[3] / "bench" / "controller_load.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("controller_load_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def test_twenty_deployments_move_and_the_overview_lists_them_all(tmp_path: Path) -> None:
    bench = load_bench()
    try:
        figures = await bench.run_load(bench.Options(n=20, duration=4.0, dashboard_requests=3), tmp_path)
    finally:
        sys.modules.pop("controller_load_bench", None)
    outcomes = figures["outcomes"]
    assert outcomes["not_advanced"] == 0, outcomes
    assert outcomes["ended"] + outcomes["advanced"] == 20, outcomes
    assert figures["ticked_deployments"] == 20
    assert figures["ticks"] >= 20
    assert figures["store_commits"] > 0 and figures["store_statements"] > 0
    dashboard = figures["dashboard"]
    assert dashboard["error"] is None, dashboard
    assert dashboard["requests"] == 3
    assert dashboard["ok"] == 3 and dashboard["listed_all"] == 3, dashboard
    # the bench's plug-ins are gone from the registries once it returns
    assert bench.PLATFORM not in platforms.PLATFORMS
    assert bench.ROUTER not in routing.ROUTERS
    assert bench.TRAFFIC not in traffic.TRAFFIC_SOURCES
