"""Every step kind a strategy can plan has exactly one executor in the engine's registry, and every
typed step kind is one a strategy or a rollback uses."""

from __future__ import annotations

import typing

from safeship.clock import VirtualClock
from safeship.config.models import DeploymentStrategy, SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.context import World
from safeship.engine.steps import StepRunner
from safeship.platforms.sim import SimPlatform
from safeship.routing.sim import SimRouter
from safeship.simworld import SimWorld
from safeship.strategies import STRATEGIES, PlanInput
from safeship.strategies.base import Step


def _runner() -> StepRunner:
    sim = SimWorld(Scenario(name="contract", expect="promote"), VirtualClock())
    world = World(SimPlatform(sim), SimRouter(sim), VirtualClock())
    return StepRunner(SafeshipConfig(), world, policy_for=lambda name: None)  # type: ignore[arg-type,return-value]


def _typed_kinds() -> set[str]:
    kinds = set()
    for member in typing.get_args(Step):
        (kind,) = typing.get_args(typing.get_type_hints(member)["kind"])
        kinds.add(kind)
    return kinds


def test_every_typed_step_kind_has_an_executor() -> None:
    assert _typed_kinds() == set(_runner().executors)


def test_every_planned_step_has_an_executor() -> None:
    settings = SafeshipConfig().intelligent_deployment
    executors = set(_runner().executors)
    for strategy in DeploymentStrategy:
        for baseline in (None, "v1"):
            given = PlanInput(service="svc", candidate="v2", baseline=baseline, replicas=3, settings=settings,
                              policy_weights=[10, 50, 100], readiness_timeout=60.0)
            kinds = {step["kind"] for step in STRATEGIES[strategy].plan(given)}
            assert kinds <= executors, (strategy, kinds - executors)
