"""A running controller ticks each deployment on the record its previous tick left, but only while
the stored row is still that one: a change written by anyone else (another process's engine on the
same store, which does not wake this controller) is read by the next tick."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from safeship.api.controller import Controller
from safeship.api.store_setup import open_store
from safeship.config.loader import load_config
from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.routing.base import RouteKey
from safeship.store import StableVersion

BENCH = Path(__file__).resolve().parents[3] / "bench" / "controller_load.py"
SERVICE = "svc-0000"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("controller_load_rereads", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def wait_for_phase(controller: Controller, deployment_id: str, phases: set[str], seconds: float) -> str:
    deadline = time.monotonic() + seconds
    phase = controller.store.get_deployment(deployment_id).phase
    while phase not in phases and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        phase = controller.store.get_deployment(deployment_id).phase
    return phase


async def test_an_approval_written_by_another_engine_is_acted_on_without_a_wake(tmp_path: Path) -> None:
    bench = load_bench()
    bench.register_plugins()
    state = tmp_path / "state"
    path = tmp_path / "safeship.yaml"
    path.write_text(bench.CONFIG.format(state_dir=state, environment=bench.ENVIRONMENT, cpu=10, memory=10_000,
                                        services=f"  {SERVICE}: {{replicas: 2}}"))
    config = load_config(path)
    environments = config.environment_management.environments
    environments[0] = environments[0].model_copy(update={"platform": bench.PLATFORM, "approval": "required"})
    bench.Worlds.current = worlds = bench.Worlds([SERVICE])
    worlds.install_baselines(2)
    store = open_store(config, path)
    store.record_stable(StableVersion(SERVICE, bench.ENVIRONMENT, bench.BASELINE, None, time.time() - 86_400, None,
                                      True))
    controller = Controller(config, state_dir=state, store=store)

    async def gauges(route: RouteKey) -> Mapping[str, Mapping[str, float]]:
        return dict(worlds.routers[route.service].gauges(route))

    controller.engine.world.gauges = gauges  # the simulated instances have no /metrics page
    try:
        await controller.start()
        record = controller.submit(DeploymentRequest(service_name=SERVICE, version=bench.CANDIDATE,
                                                     environment=bench.ENVIRONMENT,
                                                     deployment_strategy=DeploymentStrategy.CANARY))
        assert await wait_for_phase(controller, record.id, {"awaiting_approval"}, 15.0) == "awaiting_approval"
        await asyncio.sleep(1.5)  # the controller has ticked the awaiting record since
        # Approved through the engine, as another process on the same store would: the store's row
        # changes, and nothing tells this controller's task.
        controller.engine.approve(record.id, by="another process")
        moved = await wait_for_phase(controller, record.id, {"progressing", "monitoring", "succeeded"}, 15.0)
        assert moved in {"progressing", "monitoring", "succeeded"}, moved
        events = [e.kind for e in controller.store.events(record.id)]
        assert "instance_started" in events
    finally:
        await controller.stop()
        store.close()
        bench.Worlds.current = None
        bench.unregister_plugins()
        sys.modules.pop("controller_load_rereads", None)
