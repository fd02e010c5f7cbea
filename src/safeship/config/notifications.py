"""`notifications:`: where people are told what deployments do (webhook, apprise, command, log).

`docs/notifications.md` shows every sink type with an example."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

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
    "cancelled",
)

# The fields each type reads; a field of another type is refused, so a typo does not pass silently.
_TYPE_FIELDS = {
    "webhook": {"url", "secret_file", "headers"},
    "apprise": {"urls"},
    "command": {"command"},
    "log": set(),
}
_COMMON_FIELDS = {"name", "type", "events", "timeout", "retries", "backoff", "since"}


class NotificationSinkConfig(Model):
    """One sink. `type` decides which of the other fields it needs:

    - webhook: `url` (http or https), optionally `secret_file` (a file, relative to the config
      file's folder, whose content signs each body) and `headers` (added to each request);
    - apprise: `urls`, any Apprise URLs;
    - command: `command`, an argument list run without a shell, the event as JSON on stdin;
    - log: nothing more.

    Every type takes `events` (only these event kinds; all when left out), `timeout` (the longest
    one delivery may take), `retries` (tries after the first failed one) and `backoff` (the wait
    before the first retry, doubling each time, at most a minute), and `since`: where a sink new
    to this store starts, `now` (the default: the events from when the controller or command that
    first runs with it starts) or `start` (every event the store holds, the backlog included)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    type: Literal["webhook", "apprise", "command", "log"]
    url: str | None = None
    secret_file: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    urls: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    events: list[str] | None = None  # None: every event kind
    timeout: PositiveDuration = 5.0
    retries: Int = Field(default=5, ge=0, le=100)
    backoff: Duration = 1.0
    since: Literal["now", "start"] = "now"

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list would tell nothing; leave events out to be told every event")
        for kind in value or []:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event {kind!r}; known: {', '.join(EVENT_KINDS)}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"url {value!r} must start with http:// or https://")
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not key or any(c in key for c in " :\r\n") or any(c in text for c in "\r\n"):
                raise ValueError(f"header {key!r} must be one token and its value one line")
            if key.lower() in ("content-type", "idempotency-key", "x-safeship-signature", "x-safeship-event"):
                raise ValueError(f"header {key!r} is set by safeship itself")
        return value

    @field_validator("command")
    @classmethod
    def _program_named(cls, value: list[str]) -> list[str]:
        if value and not value[0]:
            raise ValueError("the command's first item (the program) is empty")
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> NotificationSinkConfig:
        if self.type == "webhook" and not self.url:
            raise ValueError(f"sink {self.name!r} of type webhook needs a url")
        if self.type == "apprise" and not self.urls:
            raise ValueError(f"sink {self.name!r} of type apprise needs urls")
        if self.type == "command" and not self.command:
            raise ValueError(f"sink {self.name!r} of type command needs a command")
        foreign = sorted(self.model_fields_set - _COMMON_FIELDS - _TYPE_FIELDS[self.type])
        if foreign:
            raise ValueError(f"sink {self.name!r} of type {self.type} does not take {', '.join(foreign)}")
        return self


def _unique_names(sinks: list[NotificationSinkConfig]) -> list[NotificationSinkConfig]:
    seen: set[str] = set()
    for sink in sinks:
        if sink.name in seen:
            raise ValueError(f"two sinks are named {sink.name!r}; each sink's name keys its place in the "
                             "events, so names must be unique")
        seen.add(sink.name)
    return sinks


def unique_sink_names(sinks: list[NotificationSinkConfig]) -> None:
    """Raise ValueError when two sinks share a name."""
    _unique_names(sinks)


# The type of `SafeshipConfig.notifications`: a list of sinks with unique names.
NotificationSinks = Annotated[list[NotificationSinkConfig], AfterValidator(_unique_names)]
