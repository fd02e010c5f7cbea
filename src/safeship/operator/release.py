"""The `Release` custom resource (safeship.dev/v1alpha1): what a team commits to have safeship
roll a service out inside the cluster.

    apiVersion: safeship.dev/v1alpha1
    kind: Release
    metadata: {name: user-service, namespace: prod}
    spec:
      service: user-service          # the service's name (its Deployments, Services, routes)
      image: registry.example/user-service:{version}
      version: v1.3.0                # a change of image or version starts a deployment
      strategy: canary               # optional: safeship selects and says why
      replicas: 3
      analysis: {error_tolerance: 1.5}          # optional: laid over the operator's analysis
      strategies: {canary: {traffic_percentages: [10, 50, 100]}}

`spec` has the shape of a service in `safeship.yaml` (`services.<name>`: replicas, resources,
limits, container_port, env, secrets, health_checks, pod, autoscaling, volumes, rollback,
criticality), plus `service`, `image`, `version`, `environment`, `strategy`, and the per-release
overrides of `intelligent_deployment` (`analysis`, `strategies`). Every field is one of the
models in `safeship.config.models`: the CRD's schema is generated from these classes
(`safeship.operator.crd`), so the cluster and safeship refuse the same things.

`status` is written by the operator only, through the status subresource (`ReleaseStatus`).
Commands go through annotations (`kubectl annotate release user-service
safeship.dev/approve=ok`): the operator acts once per annotation value and records the value it
handled in `status.handled`, so a re-applied manifest or a restart never repeats one.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field, field_validator

from safeship.config.base import MAX_COUNT, Int, Model
from safeship.config.durations import Duration
from safeship.config.models import (
    AnalysisConfig,
    AutoscalingConfig,
    Criticality,
    DeploymentStrategy,
    HealthCheckConfiguration,
    PodConfig,
    ResourceRequirements,
    RollbackConfiguration,
    StrategiesConfig,
    VolumeConfig,
)
from safeship.config.names import name_problem

GROUP = "safeship.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Release"
PLURAL = "releases"
SINGULAR = "release"
SHORT_NAMES = ["rel"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# Commands: `kubectl annotate release <name> safeship.dev/<command>=<any value>`; a new value is a
# new command (the operator records the value it handled in status.handled).
APPROVE = f"{GROUP}/approve"
PROMOTE = f"{GROUP}/promote"
ABORT = f"{GROUP}/abort"
ROLLBACK = f"{GROUP}/rollback"
COMMANDS = (APPROVE, PROMOTE, ABORT, ROLLBACK)

# What the operator puts on the objects it makes for a Release, besides the ownerReference.
RELEASE_LABEL = f"{GROUP}/release"

CONDITION_TYPES = ("Progressing", "Healthy", "Paused", "RolledBack")


def _name(kind: Literal["service", "version"]) -> Any:
    def check(value: str) -> str:
        problem = name_problem(kind, value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return check


class ReleaseSpec(Model):
    """What to run: the service's settings as in `services.<name>`, and the version to roll out."""

    service: str = Field(min_length=1, max_length=63)
    image: str = Field(min_length=1)  # `{version}` is replaced by `version`
    version: str = Field(min_length=1, max_length=128)
    # The operator's environment (its safeship.yaml) whose cluster settings apply; its namespace
    # is the Release's own. None: the operator's default environment.
    environment: str | None = Field(default=None, min_length=1, max_length=63)
    strategy: DeploymentStrategy | None = None  # None: safeship selects and says why
    # services.<name>, the fields that mean something in a cluster
    criticality: Criticality = Criticality.MEDIUM
    replicas: Int = Field(default=2, ge=1, le=MAX_COUNT)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    limits: ResourceRequirements | None = None
    container_port: Int = Field(default=8080, ge=1, le=65535)
    volumes: list[VolumeConfig] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    health_checks: HealthCheckConfiguration | None = None
    grace_period: Duration = Field(default=10.0, le=86400)
    rollback: RollbackConfiguration | None = None
    pod: PodConfig = Field(default_factory=PodConfig)
    autoscaling: AutoscalingConfig | None = None
    # intelligent_deployment.<...> for this release only, laid over the operator's own
    analysis: AnalysisConfig | None = None
    strategies: StrategiesConfig | None = None

    _service = field_validator("service")(_name("service"))
    _version = field_validator("version")(_name("version"))

    def rollout_key(self) -> tuple[str, str]:
        """What starts a deployment when it changes: the image and the version."""
        return (self.image, self.version)

    def resolved_image(self) -> str:
        """The image the pods run: `image` with `{version}` replaced by `version`."""
        return self.image.replace("{version}", self.version)

    def revision(self) -> str:
        """The name the engine gives this image of `version` when another image of the same
        version already has its objects (a digest bumped, the version not): semver build metadata,
        `<version>+img.<8 hex of the image>` (`.img.<hex>` after a version that has a `+`)."""
        digest = hashlib.sha256(self.resolved_image().encode()).hexdigest()[:8]
        return f"{self.version}{'.' if '+' in self.version else '+'}img.{digest}"


class Condition(Model):
    """A Kubernetes condition (metav1.Condition)."""

    type: Literal["Progressing", "Healthy", "Paused", "RolledBack"]
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    lastTransitionTime: str  # RFC 3339
    observedGeneration: Int = Field(default=0, ge=0)


class ReleaseStatus(Model):
    """What the operator reports; written only by the Lease holder, through /status."""

    observedGeneration: Int = Field(default=0, ge=0)
    # pending, awaiting_approval, preparing, progressing, monitoring, rolling_back, succeeded,
    # rolled_back, failed, cancelled (the deployment's phase), or "" before the first one
    phase: str = ""
    deploymentId: str = ""
    step: str = ""  # "3/9 analyze (25%)": the step running, of the plan
    stepIndex: Int = Field(default=0, ge=0)
    steps: Int = Field(default=0, ge=0)
    weights: dict[str, Int] = Field(default_factory=dict)  # version -> percent of traffic
    candidateWeight: Int = Field(default=0, ge=0, le=100)  # the printer column
    stableVersion: str = ""
    candidate: str = ""  # the version being rolled out, "" when none
    strategy: str = ""
    strategyReason: str = ""
    message: str = ""  # the last decision's sentence (the judge's, or why it stopped)
    # The rollout key (image and version) the status describes: a new one starts a deployment.
    image: str = ""
    version: str = ""
    # The annotation value of each command the operator has acted on (safeship.dev/approve -> "x").
    handled: dict[str, str] = Field(default_factory=dict)
    # The Lease's leaseTransitions when the holder wrote this status: a fencing token.
    leaderEpoch: Int = Field(default=0, ge=0)
    leader: str = ""  # the holderIdentity that wrote it
    conditions: list[Condition] = Field(default_factory=list)


class Release(Model):
    """A whole Release object as the operator reads it."""

    apiVersion: Literal["safeship.dev/v1alpha1"] = "safeship.dev/v1alpha1"
    kind: Literal["Release"] = "Release"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ReleaseSpec
    status: ReleaseStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def generation(self) -> int:
        value = self.metadata.get("generation", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))

    @property
    def annotations(self) -> dict[str, str]:
        found = self.metadata.get("annotations") or {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def owner_reference(release: Release | dict[str, Any]) -> dict[str, Any]:
    """The ownerReference that ties an object to its Release (deleting the Release deletes it)."""
    metadata = release.metadata if isinstance(release, Release) else (release.get("metadata") or {})
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": str(metadata.get("name", "")),
        "uid": str(metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }
