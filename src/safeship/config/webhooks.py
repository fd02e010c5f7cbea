"""`services.<name>.webhooks:` gates a deployment calls at fixed points, as Flagger's webhooks do."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from safeship.config.base import Int, Model
from safeship.config.durations import Duration, PositiveDuration

GATE_TYPES = (
    "confirm-rollout",
    "pre-rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
)

GateType = Literal[
    "confirm-rollout",
    "pre-rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
]


class WebhookGateConfig(Model):
    """A POST of the deployment's state to `url`; a 2xx answer lets the deployment go on."""

    name: str = Field(min_length=1, max_length=63)
    type: GateType
    url: str = Field(min_length=1)
    timeout: PositiveDuration = 10.0
    retries: Int = Field(default=2, ge=0, le=100)
    backoff: Duration = 1.0
    metadata: dict[str, str] = Field(default_factory=dict)
