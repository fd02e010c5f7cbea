"""Deployment strategies, one module each, found through one explicit registry."""

from __future__ import annotations

from safeship.config.models import DeploymentStrategy
from safeship.strategies.base import (
    AnalyzeStep,
    HoldStep,
    MonitorStep,
    PauseStep,
    PlanInput,
    PromoteStep,
    ScaleStep,
    Step,
    Strategy,
    WaitReadyStep,
    WeightsStep,
)
from safeship.strategies.blue_green import BlueGreenStrategy
from safeship.strategies.canary import CanaryStrategy
from safeship.strategies.recreate import RecreateStrategy
from safeship.strategies.rolling import RollingStrategy

STRATEGIES: dict[DeploymentStrategy, Strategy] = {
    DeploymentStrategy.BLUE_GREEN: BlueGreenStrategy(),
    DeploymentStrategy.CANARY: CanaryStrategy(),
    DeploymentStrategy.ROLLING: RollingStrategy(),
    DeploymentStrategy.RECREATE: RecreateStrategy(),
}

__all__ = [
    "STRATEGIES",
    "AnalyzeStep",
    "HoldStep",
    "MonitorStep",
    "PauseStep",
    "PlanInput",
    "PromoteStep",
    "ScaleStep",
    "Step",
    "Strategy",
    "WaitReadyStep",
    "WeightsStep",
]
