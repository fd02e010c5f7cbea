from __future__ import annotations

import pytest

from safeship.config.models import (
    AvailabilityRequirement,
    Criticality,
    DeploymentStrategy,
    Environment,
    EnvironmentType,
    ServiceConfig,
    StrategiesConfig,
)
from safeship.engine.selection import TABLE, Capacity, select_strategy


def pick(criticality: str, env_type: str = "production", *, recent: tuple[str, ...] = (),
         capacity: Capacity | None = None, explicit: DeploymentStrategy | None = None,
         strategies: StrategiesConfig | None = None):
    return select_strategy(
        service_name="user-service",
        service=ServiceConfig(criticality=Criticality(criticality), replicas=4),
        environment=Environment(name="production", type=EnvironmentType(env_type)),
        strategies=strategies or StrategiesConfig(),
        explicit=explicit,
        recent_outcomes=list(recent),
        capacity=capacity,
    )


@pytest.mark.parametrize(("criticality", "env_type", "expected"), [
    ("critical", "production", DeploymentStrategy.BLUE_GREEN),  # seed: (Critical, High)
    ("high", "staging", DeploymentStrategy.CANARY),  # seed: (High, Medium)
    ("medium", "development", DeploymentStrategy.ROLLING),  # seed: (Medium, Low)
    ("low", "development", DeploymentStrategy.RECREATE),  # seed: the rest
    ("critical", "staging", DeploymentStrategy.CANARY),  # filled towards safety, never recreate
])
def test_seed_table(criticality: str, env_type: str, expected: DeploymentStrategy) -> None:
    chosen = pick(criticality, env_type)
    assert chosen.strategy is expected
    assert criticality in chosen.reason


def test_table_never_recreates_a_critical_or_high_service() -> None:
    for (criticality, _availability), (strategy, _origin) in TABLE.items():
        if criticality in (Criticality.CRITICAL, Criticality.HIGH):
            assert strategy is not DeploymentStrategy.RECREATE
    assert len(TABLE) == len(Criticality) * len(AvailabilityRequirement)


def test_explicit_strategy_wins() -> None:
    chosen = pick("critical", explicit=DeploymentStrategy.ROLLING)
    assert chosen.strategy is DeploymentStrategy.ROLLING and "explicitly" in chosen.reason


def test_blue_green_over_quota_falls_back_to_canary() -> None:
    chosen = pick("critical", capacity=Capacity(cpu_free=0.2, memory_free_mb=10_000))
    assert chosen.strategy is DeploymentStrategy.CANARY
    assert "quota" in chosen.reason and "0.2 cpu" in chosen.reason


def test_recent_rollbacks_give_a_slow_canary() -> None:
    chosen = pick("medium", "development", recent=("rolled_back", "succeeded"))
    assert chosen.strategy is DeploymentStrategy.CANARY and chosen.slow
    assert "1 of user-service's last 2 deployments rolled back" in chosen.reason


def test_disabled_strategy_is_skipped_with_a_reason() -> None:
    strategies = StrategiesConfig()
    strategies.blue_green.enabled = False
    chosen = pick("critical", strategies=strategies)
    assert chosen.strategy is DeploymentStrategy.CANARY and "disabled" in chosen.reason
