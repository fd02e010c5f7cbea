"""`services.<name>.webhooks:` gates a deployment calls at fixed points, as Flagger's webhooks do.

Each gate POSTs the deployment's state as JSON to `url` and reads the answer's status code:

- `confirm-rollout`, `confirm-traffic-increase`, `confirm-promotion`: a 2xx lets the deployment go
  on; anything else holds it there, and the gate is asked again every `interval` until it answers
  2xx (or the deployment is cancelled or rolled back).
- `pre-rollout`: a 2xx lets it go on; anything else, after `retries` more attempts `backoff` apart
  (doubling), fails the deployment as a failed analysis would.
- `post-rollout`: told once the deployment ended; its answer changes nothing.
- `rollback`: asked every `interval` during analysis and while a confirm gate holds; a 2xx rolls
  the deployment back.

See docs/webhooks.md for where each runs in a plan and what the body holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from safeship.config.base import Int, Model
from safeship.config.durations import Duration, PositiveDuration
from safeship.config.secret_files import read_secret_file

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

CONFIRM_TYPES = frozenset({"confirm-rollout", "confirm-traffic-increase", "confirm-promotion"})
"""Gates whose non-2xx answer holds the deployment (and which are asked again every interval)."""
POSITIONAL_TYPES = CONFIRM_TYPES | {"pre-rollout"}
"""Gates that are steps of the plan; post-rollout and rollback are asked by the engine itself."""


class WebhookGateConfig(Model):
    """A POST of the deployment's state to `url`; a 2xx answer lets the deployment go on."""

    name: str = Field(min_length=1, max_length=63)
    type: GateType
    url: str = Field(min_length=1, max_length=2048)
    timeout: PositiveDuration = 10.0  # one attempt, connection to last byte
    retries: Int = Field(default=2, ge=0, le=100)  # more attempts after a failed one (pre-rollout, post-rollout)
    backoff: Duration = 1.0  # before the first retry; doubles with each one
    interval: PositiveDuration = 10.0  # a held confirm gate, and a rollback gate, are asked this often
    metadata: dict[str, str] = Field(default_factory=dict)  # sent as is in the body
    # A file (relative to the config file's folder) whose content signs each request, as a webhook
    # notification's `secret_file` does: `X-Safeship-Signature: t=<unix seconds>,v1=<hex HMAC>`.
    secret_file: str | None = Field(default=None, min_length=1)
    _secret: bytes | None = PrivateAttr(default=None)  # read by the loader (config/secret_files.py)

    def signing_secret(self) -> bytes | None:
        """The secret that signs this gate's requests: the one the loader read, or, for a config
        built without it, the file read now (relative to the working folder); None without one."""
        if self.secret_file is not None and self._secret is None:
            self._secret = read_secret_file(self.secret_file, Path.cwd(), "webhook gate", f"{self.name}.secret_file")
        return self._secret

    def load_secret(self, config_dir: Path, source: str, field: str) -> None:
        if self.secret_file is not None:
            self._secret = read_secret_file(self.secret_file, config_dir, source, field)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"a gate's url must start with http:// or https://, got {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError(f"a gate's name must be printable text without surrounding blanks, got {value!r}")
        return value


def check_gates(gates: Sequence[WebhookGateConfig]) -> None:
    """Gate names are unique within a service; ValueError naming the name used twice otherwise."""
    seen: set[str] = set()
    for gate in gates:
        if gate.name in seen:
            raise ValueError(f"gate name {gate.name!r} is used twice; each gate needs its own name")
        seen.add(gate.name)
