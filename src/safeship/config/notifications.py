"""`notifications:`: where people are told what deployments do (webhook, apprise, command, log)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from safeship.config.base import Int, Model
from safeship.config.durations import Duration, PositiveDuration

# The events a sink may be told about; `events:` filters on these names.
EVENT_KINDS = (
    "started",
    "step_advanced",
    "awaiting_approval",
    "promoted",
    "rollback_started",
    "rolled_back",
    "failed",
    "succeeded",
)


class NotificationSinkConfig(Model):
    """One sink. `type` decides which of the other fields it needs:

    - webhook: `url` (and optionally `secret_file`, whose content signs each body);
    - apprise: `urls`, any Apprise URLs;
    - command: `command`, an argument list run without a shell, the event as JSON on stdin;
    - log: nothing more."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    type: Literal["webhook", "apprise", "command", "log"]
    url: str | None = None
    secret_file: str | None = None
    urls: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    events: list[str] | None = None  # None: every event kind
    timeout: PositiveDuration = 5.0
    retries: Int = Field(default=5, ge=0, le=100)
    backoff: Duration = 1.0

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str] | None) -> list[str] | None:
        for kind in value or []:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event {kind!r}; known: {', '.join(EVENT_KINDS)}")
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> NotificationSinkConfig:
        if self.type == "webhook" and not self.url:
            raise ValueError(f"sink {self.name!r} of type webhook needs a url")
        if self.type == "apprise" and not self.urls:
            raise ValueError(f"sink {self.name!r} of type apprise needs urls")
        if self.type == "command" and not self.command:
            raise ValueError(f"sink {self.name!r} of type command needs a command")
        return self
