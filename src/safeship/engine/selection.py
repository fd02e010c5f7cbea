"""Strategy selection: the seed's table (criticality x availability requirement), with its gaps
filled towards safety, then two fallbacks. The answer always carries a sentence saying why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from safeship.config.models import (
    AvailabilityRequirement as A,
)
from safeship.config.models import (
    Criticality as C,
)
from safeship.config.models import (
    DeploymentStrategy as S,
)
from safeship.config.models import (
    Environment,
    ServiceConfig,
    StrategiesConfig,
)

# The seed names three cells and sends everything else to recreate. Recreate means downtime, which a
# critical service in a highly available environment must never get, so the other cells fall to the
# nearest safer neighbour instead; the seed's own cells are kept as written (marked "seed").
TABLE: dict[tuple[C, A], tuple[S, str]] = {
    (C.CRITICAL, A.HIGH): (S.BLUE_GREEN, "seed"),
    (C.CRITICAL, A.MEDIUM): (S.CANARY, "filled"),
    (C.CRITICAL, A.LOW): (S.CANARY, "filled"),
    (C.HIGH, A.HIGH): (S.BLUE_GREEN, "filled"),
    (C.HIGH, A.MEDIUM): (S.CANARY, "seed"),
    (C.HIGH, A.LOW): (S.ROLLING, "filled"),
    (C.MEDIUM, A.HIGH): (S.CANARY, "filled"),
    (C.MEDIUM, A.MEDIUM): (S.ROLLING, "filled"),
    (C.MEDIUM, A.LOW): (S.ROLLING, "seed"),
    (C.LOW, A.HIGH): (S.ROLLING, "filled"),
    (C.LOW, A.MEDIUM): (S.ROLLING, "filled"),
    (C.LOW, A.LOW): (S.RECREATE, "seed"),
}

RECENT_WINDOW = 5  # deployments looked at for "recently rolled back"


@dataclass(frozen=True)
class Selection:
    strategy: S
    reason: str
    slow: bool = False  # a slower canary: longer steps, smaller first weight


@dataclass(frozen=True)
class Capacity:
    cpu_free: float  # cores left in the environment's quota, not counting this service
    memory_free_mb: float


def select_strategy(
    *,
    service_name: str,
    service: ServiceConfig,
    environment: Environment,
    strategies: StrategiesConfig,
    explicit: S | None,
    recent_outcomes: Sequence[str],
    capacity: Capacity | None,
) -> Selection:
    if explicit is not None:
        if not getattr(strategies, explicit.value).enabled:
            raise ValueError(f"strategy {explicit.value} is disabled in intelligent_deployment.strategies")
        return Selection(explicit, f"{explicit.value} was asked for explicitly (--strategy)")
    availability = environment.availability_requirement
    strategy, origin = TABLE[(service.criticality, availability)]
    cell = f"{service.criticality.value} service in a {availability.value}-availability environment"
    reason = f"{strategy.value}: {cell} ({'the seed' if origin == 'seed' else 'safeship'}'s table)"
    if strategy is S.BLUE_GREEN and capacity is not None:
        need_cpu = service.replicas * service.resources.cpu
        need_mem = service.replicas * service.resources.memory
        if need_cpu > capacity.cpu_free or need_mem > capacity.memory_free_mb:
            strategy = S.CANARY
            reason = (
                f"canary: blue-green needs a second full colour ({need_cpu:g} cpu, {need_mem:g}Mi) but "
                f"{environment.name}'s quota has {capacity.cpu_free:g} cpu and "
                f"{capacity.memory_free_mb:g}Mi left; {cell}"
            )
    rolled_back = [o for o in recent_outcomes[:RECENT_WINDOW] if o == "rolled_back"]
    if rolled_back and strategy is not S.BLUE_GREEN:
        return Selection(
            S.CANARY,
            f"slow canary: {len(rolled_back)} of {service_name}'s last "
            f"{min(len(recent_outcomes), RECENT_WINDOW)} deployments rolled back; "
            f"otherwise {reason}",
            slow=True,
        )
    for candidate in (strategy, S.CANARY, S.ROLLING, S.BLUE_GREEN, S.RECREATE):
        if getattr(strategies, candidate.value).enabled:
            if candidate is not strategy:
                reason = f"{candidate.value}: {strategy.value} is disabled; {reason}"
            return Selection(candidate, reason)
    raise ValueError("every strategy is disabled in intelligent_deployment.strategies")
