"""`services.<name>.pipeline:` the stages a release passes before it is deployed.

    services:
      user-service:
        pipeline:
          - {name: test, command: [python, -m, pytest, -q, tests], timeout: 5m}
          - name: build
            command: [python, build.py, --version, "{version}", --out, "{run_dir}/release.tar.gz"]
            artifact: "{run_dir}/release.tar.gz"

Placeholders in `command`, `env` values and `artifact`: `{version}` (the version the run builds)
and `{run_dir}` (the run's own folder, `<state_dir>/pipelines/<run id>/`, where its logs are).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from safeship.config.base import Model
from safeship.config.durations import PositiveDuration

PLACEHOLDERS = ("version", "run_dir")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_placeholders(text: str) -> str:
    unknown = [name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS]
    if unknown:
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise ValueError(f"{text!r} uses unknown placeholder {{{unknown[0]}}} (known: {known})")
    return text


def fill(text: str, values: dict[str, str]) -> str:
    """`text` with each placeholder replaced by its value (checked when the config was loaded)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


class PipelineStage(Model):
    """One stage: a command (an argument list, run without a shell) with a timeout, a working
    directory (relative to the config file's folder) and environment variables added to the
    environment it inherits. A stage with `artifact` builds the release: the file it names (after
    the placeholders are replaced; relative to the stage's working directory) is hashed and
    registered as the version deployed."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    command: list[str] = Field(min_length=1)
    timeout: PositiveDuration = Field(default=600.0, le=86400)
    cwd: str = Field(default=".", min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    artifact: str | None = Field(default=None, min_length=1)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the program (the command's first argument) must not be empty")
        for arg in value:
            _check_placeholders(arg)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _)")
            _check_placeholders(text)
        return value

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        return None if value is None else _check_placeholders(value)


def check_stages(stages: Sequence[PipelineStage]) -> None:
    """Stage names are unique and at most one stage builds the artifact; ValueError otherwise."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage name {stage.name!r} is used twice; each stage needs its own name")
        seen.add(stage.name)
    building = [s.name for s in stages if s.artifact is not None]
    if len(building) > 1:
        raise ValueError(f"stages {', '.join(building)} all name an artifact; one stage builds the release")


def _checked(stages: list[PipelineStage]) -> list[PipelineStage]:
    check_stages(stages)
    return stages


# `services.<name>.pipeline`'s type, checked as a whole when the config is loaded.
Pipeline = Annotated[list[PipelineStage], AfterValidator(_checked)]
