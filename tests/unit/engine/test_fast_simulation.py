"""A simulation's shortcuts change no outcome. The fast path (a deferred in-memory store, which
writes a deployment's rows when the database is next touched, and watching ticks that are not
built whole) must decide exactly as the ordinary one (a store that writes every transition at
once, every tick built whole): the same decision, reason, times and counts, the same events
and the same final row, for the same scenarios and seeds, for every policy."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario, load_scenario
from safeship.engine.engine import DeploymentEngine
from safeship.engine.simulate import run_simulation
from safeship.store import Store

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"
POLICIES = ("safeship", "seed", "flagger", "argo", "kayenta")
CANARY = {"name": "canary-30min", "expect": "promote", "duration_s": 1800, "traffic": {"rps": 100}}
ERRORS_8X = {**CANARY, "name": "canary-30min-8x-errors", "expect": "rollback", "candidate": {"error_rate": 0.04}}
FILES = ("crash-after-warmup", "bg-good-during-incident", "late-onset-errors", "memory-growth", "recreate-good")


def run(scenario: Scenario, policy: str, seed: int, *, fast: bool,
        monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[tuple[Any, ...]], dict[str, Any]]:
    """The result, the events and the final row, with their random ids (new_id) left out."""
    with monkeypatch.context() as patch:
        patch.setattr(DeploymentEngine, "shortcut_watching", fast)
        store = Store("sqlite://", deferred=fast)
        result = asyncio.run(run_simulation(scenario, policy=policy, policy_for=get_policy, seed=seed, store=store))
    (row,) = store.list_deployments()
    events = [(e.at, e.kind, e.message, _without_ids(dict(e.data))) for e in store.events(row.id)]
    final = _without_ids({**row.__dict__, "id": None})
    return result, events, final


def _without_ids(data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(re.sub(r"(deploy|rollback)-[0-9a-f]{10}", r"\1-id", json.dumps(data)))
    return loaded


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spec", [CANARY, ERRORS_8X], ids=lambda s: s["name"])
def test_the_fast_path_decides_as_the_ordinary_one(policy: str, spec: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario.model_validate(spec)
    for seed in (1, 2):
        fast = run(scenario, policy, seed, fast=True, monkeypatch=monkeypatch)
        ordinary = run(scenario, policy, seed, fast=False, monkeypatch=monkeypatch)
        assert fast[0] == ordinary[0]
        assert fast[1] == ordinary[1]
        assert fast[2] == ordinary[2]


@pytest.mark.parametrize("name", FILES)
def test_the_fast_path_decides_as_the_ordinary_one_on_scenario_files(name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    for policy in ("safeship", "seed"):
        fast = run(scenario, policy, scenario.seed, fast=True, monkeypatch=monkeypatch)
        ordinary = run(scenario, policy, scenario.seed, fast=False, monkeypatch=monkeypatch)
        assert fast == ordinary, (name, policy)


def test_watching_ticks_are_not_built_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import safeship.engine.engine as engine_module

    built: list[float] = []

    class CountedTick(engine_module.Tick):
        def __post_init__(self) -> None:
            built.append(self.now)
            super().__post_init__()

    monkeypatch.setattr(engine_module, "Tick", CountedTick)
    scenario = Scenario.model_validate(CANARY)
    counts = []
    for fast in (True, False):
        built.clear()
        run(scenario, "seed", 1, fast=fast, monkeypatch=monkeypatch)
        counts.append(len(built))
    # the seed policy's canary ends in a 300 s monitoring window that looks every 30 s
    assert counts[0] < 40 < 300 < counts[1]
