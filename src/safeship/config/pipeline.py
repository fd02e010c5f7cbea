"""`services.<name>.pipeline:` the stages a release passes before it is deployed."""

from __future__ import annotations

from pydantic import Field

from safeship.config.base import Model
from safeship.config.durations import PositiveDuration


class PipelineStage(Model):
    """One stage: a command (an argument list, run without a shell) with a timeout, a working
    directory (relative to the config file's folder) and environment variables. A stage with
    `artifact` builds the release: the file it names (after `{version}` is replaced) is hashed and
    registered as the version deployed."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    command: list[str] = Field(min_length=1)
    timeout: PositiveDuration = 600.0
    cwd: str = "."
    env: dict[str, str] = Field(default_factory=dict)
    artifact: str | None = None
