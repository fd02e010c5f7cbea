"""Typed configuration: the seed's Rust types and YAML block, plus `services:` and safeship's own knobs.

Every model forbids unknown fields, so a typo is an error naming the field, never a silent default.
Numbers are bounded where a plausible mistake would otherwise load: `true` is not a number
(YAML's booleans would otherwise pass as 1), floats must be finite, counts have an upper bound,
and durations are bounded (see durations.py).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from safeship.config.base import MAX_COUNT, Int, Model, Number
from safeship.config.durations import Duration, PositiveDuration, StepDuration
from safeship.config.hosts import ApiHosts, ListenAddress
from safeship.config.names import shown as show
from safeship.config.notifications import NotificationSinks
from safeship.config.pipeline import Pipeline
from safeship.config.quantities import Cpu, MemoryMb
from safeship.config.webhooks import WebhookGateConfig, check_gates

# ---------------------------------------------------------------- enums


class DeploymentStrategy(str, enum.Enum):
    BLUE_GREEN = "blue_green"
    CANARY = "canary"
    ROLLING = "rolling"
    RECREATE = "recreate"

    @classmethod
    def parse(cls, text: str) -> DeploymentStrategy:
        key = text.strip().lower().replace("-", "_").replace(" ", "_")
        key = {"bluegreen": "blue_green"}.get(key, key)
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown strategy {text!r}; known: {known}") from None


class EnvironmentType(str, enum.Enum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    TESTING = "testing"


class Criticality(str, enum.Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AvailabilityRequirement(str, enum.Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


# ---------------------------------------------------------------- strategies (seed block)


class BlueGreenConfig(Model):
    enabled: bool = True
    health_check_timeout: PositiveDuration = 300.0
    # The switch confirmation: after all traffic moves to the new colour, every one of its
    # instances must be ready and serving within this long, or the switch is undone (a rollback to
    # the old colour, still warm). Readiness before the switch is bounded by health_check_timeout.
    traffic_switch_timeout: PositiveDuration = 120.0
    # The old colour is kept warm through the monitoring window and this long after it, so that a
    # rollback is an instant switch back.
    scale_down_delay: Duration = 30.0
    post_switch_analysis: StepDuration = 60.0


class CanaryConfig(Model):
    enabled: bool = True
    traffic_percentages: list[Int] = Field(default_factory=lambda: [5, 10, 25, 50, 75, 100])
    step_duration: StepDuration = 120.0  # longest a step waits for evidence
    min_step_duration: Duration = Field(default=10.0, le=7 * 86400)  # shortest: even clear evidence waits this long
    # true (default): a step may advance as soon as the analysis policy has enough evidence that
    # the candidate is no worse (never before min_step_duration; safeship's policy also holds a
    # step while a test is suspicious, up to 2 x step_duration). false: every canary step waits its
    # full step_duration before advancing, whatever the evidence; a failure still rolls back at once.
    adaptive: bool = True

    @field_validator("traffic_percentages")
    @classmethod
    def _weights(cls, weights: list[int]) -> list[int]:
        if not weights:
            raise ValueError("must list at least one weight")
        for w in weights:
            if not 0 < w <= 100:
                raise ValueError(f"each weight must be in 1..100, got {show(w)}")
        if weights != sorted(weights) or len(set(weights)) != len(weights):
            raise ValueError(f"weights must strictly increase, got {show(weights)}")
        return weights if weights[-1] == 100 else [*weights, 100]


class RollingConfig(Model):
    enabled: bool = True
    max_unavailable: Int = Field(default=1, ge=0, le=MAX_COUNT)
    max_surge: Int = Field(default=1, ge=0, le=MAX_COUNT)
    step_analysis: StepDuration = 10.0
    # Every batch is judged at least this long, so that each new instance has served this long
    # before the next batch moves: a crash or leak that shows seconds after an instance starts
    # is caught while the old instances still take part of the traffic.
    min_instance_seconds: Duration = Field(default=20.0, le=7 * 86400)

    @model_validator(mode="after")
    def _progress_possible(self) -> RollingConfig:
        if self.max_unavailable + self.max_surge < 1:
            raise ValueError("max_unavailable and max_surge cannot both be 0: no progress is possible")
        return self


class RecreateConfig(Model):
    enabled: bool = True
    max_wait: Duration = Field(default=30.0, le=7 * 86400)  # requests queue this long in the gap instead of failing
    analysis: StepDuration = 60.0


class StrategiesConfig(Model):
    blue_green: BlueGreenConfig = Field(default_factory=BlueGreenConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    rolling: RollingConfig = Field(default_factory=RollingConfig)
    recreate: RecreateConfig = Field(default_factory=RecreateConfig)


# ---------------------------------------------------------------- health checks


class ProbeConfig(Model):
    type: Literal["http", "tcp", "exec"] = "http"
    path: str = "/health/ready"
    command: list[str] = Field(default_factory=list)
    timeout: PositiveDuration = 30.0
    interval: PositiveDuration = 10.0
    failure_threshold: Int = Field(default=3, ge=1, le=MAX_COUNT)
    success_threshold: Int = Field(default=1, ge=1, le=MAX_COUNT)
    initial_delay: Duration = 0.0

    @model_validator(mode="after")
    def _exec_needs_command(self) -> ProbeConfig:
        if self.type == "exec" and not self.command:
            raise ValueError("an exec probe needs a command")
        return self


def _liveness() -> ProbeConfig:
    return ProbeConfig(path="/health/live", timeout=30.0, interval=10.0)


def _readiness() -> ProbeConfig:
    return ProbeConfig(path="/health/ready", timeout=30.0, interval=5.0)


class HealthCheckConfiguration(Model):
    liveness: ProbeConfig = Field(default_factory=_liveness)
    readiness: ProbeConfig = Field(default_factory=_readiness)


# ---------------------------------------------------------------- rollback triggers


class HealthCheckFailureTrigger(Model):
    type: Literal["health_check_failure"]
    timeout: PositiveDuration = 120.0  # how long an instance may stay unready/dead before it counts


class ErrorRateThresholdTrigger(Model):
    type: Literal["error_rate_threshold"]
    threshold: Number = Field(gt=0, le=1)
    duration: PositiveDuration = 60.0


class ResponseTimeThresholdTrigger(Model):
    type: Literal["response_time_threshold"]
    threshold: PositiveDuration
    duration: PositiveDuration = 60.0
    statistic: Literal["mean", "p95", "p99"] = "mean"  # the seed uses the average


class CustomMetricTrigger(Model):
    type: Literal["custom_metric"]
    metric: str = Field(min_length=1)
    threshold: Number
    duration: PositiveDuration = 60.0


RollbackTrigger = Annotated[
    HealthCheckFailureTrigger | ErrorRateThresholdTrigger | ResponseTimeThresholdTrigger | CustomMetricTrigger,
    Field(discriminator="type"),
]


def _seed_triggers() -> list[Any]:
    return [
        HealthCheckFailureTrigger(type="health_check_failure", timeout=120.0),
        ErrorRateThresholdTrigger(type="error_rate_threshold", threshold=0.05, duration=60.0),
        ResponseTimeThresholdTrigger(type="response_time_threshold", threshold=5.0, duration=60.0),
    ]


class MonitoringConfig(Model):
    duration: Duration = 300.0  # the seed's 5-minute window after promotion
    interval: PositiveDuration = 30.0


class AnalysisConfig(Model):
    """safeship's sequential judge (see analysis/judge.py)."""

    alpha: Number = Field(default=0.01, gt=0, lt=0.5)  # chance of rolling back a release equal to baseline
    # candidate error rate may be this many times baseline
    error_tolerance: Number = Field(default=1.2, ge=1.0, le=1000.0)
    # The candidate's p95 and p99 may be this many times the control's (the version beside it, or
    # the replaced version's record) ...
    latency_tolerance: Number = Field(default=1.25, ge=1.0, le=1000.0)
    # ... or this many milliseconds more, whichever allows more: a 2 ms service may accept a
    # release 20 ms slower without a rollback.
    latency_tolerance_ms: Number = Field(default=0.0, ge=0.0, le=3_600_000.0)
    # Early promotion (safeship's policy): a canary or rolling step may end before its pacing
    # allows once the candidate is shown, side by side, within the tolerance on errors, p95 and
    # p99 (each with its own test at early_promotion_alpha). An error rate at or below
    # error_tolerance_abs counts as within tolerance whatever the baseline's: without it a
    # service that fails nothing could never show it. The rollback tests stay relative.
    early_promotion: bool = True
    early_promotion_alpha: Number = Field(default=0.05, gt=0, lt=0.5)
    error_tolerance_abs: Number = Field(default=0.001, ge=0.0, lt=1.0)
    # The longest time between the judge's looks. safeship's policy looks every second, or every
    # `interval` when that is shorter (every look is valid, so a look costs no alpha); looking
    # less often than every second would push gross-failure detection past its 15 s target. The
    # peer policies (seed, argo, flagger, kayenta) use their own documented intervals.
    interval: StepDuration = 5.0
    error_limit: Int = Field(default=4, ge=1, le=MAX_COUNT)  # consecutive provider errors before the analysis fails
    # The shortest time the canary spends before full traffic, so that a regression which starts
    # minutes after the candidate gets traffic is still caught while the baseline serves beside it.
    # None: the policy's own default (safeship: 300 s).
    ramp_time: StepDuration | None = None
    # How far back the version being replaced is measured before a deployment starts (at most: a
    # version that served for less is measured for as long as it served). Blue-green (after the
    # switch), recreate and every monitoring window judge the new version against that record,
    # since the two never serve side by side there; a day's record holds every hour of the day
    # and, for a quiet or bursty service, enough failures to know its rate.
    history: StepDuration = 86400.0
    # When only the candidate serves while the version it replaces is still warm (blue-green after
    # the switch; the monitoring window of blue-green and canary), the analysis compares it with
    # that version's record from before the deployment, and an incident that starts meanwhile (a
    # dependency down) looks like a regression. Before such a failure rolls back, traffic is split
    # confirm_percent (candidate) / the rest (the replaced version) for up to confirm_duration and
    # the two are compared side by side: only a candidate worse than the replaced version is rolled
    # back. 0 turns it off.
    confirm_duration: Duration = Field(default=60.0, le=3600)
    confirm_percent: Int = Field(default=50, ge=1, le=99)
    # A look that expects candidate requests (its weight is above 0 and the traffic beside it, or
    # the replaced version's record, says about 10 should have come) and sees none is blind.
    # hold (Argo's "inconclusive"): the step waits, never advances or promotes, until data comes
    # back; rollback: a blind candidate is rolled back.
    on_no_data: Literal["hold", "rollback"] = "hold"
    # A rollback labelled an incident (the restored version was raised just as much, so the
    # release was not at fault): deploy the same version again once the restored version is back
    # within its record (watched every 30 s for up to 30 minutes after the rollback).
    retry_after_incident: bool = False


class RollbackConfiguration(Model):
    auto_rollback: bool = Field(default=True, alias="auto_rollback")
    # Absent: the seed's three triggers. An empty list is refused (see _guarded).
    triggers: list[RollbackTrigger] = Field(default_factory=_seed_triggers)
    rollback_timeout: PositiveDuration = 300.0
    max_rollback_attempts: Int = Field(default=3, ge=1, le=100)
    stable_after: Duration = 3600.0  # the seed's 1 hour
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @field_validator("triggers")
    @classmethod
    def _guarded(cls, triggers: list[Any]) -> list[Any]:
        if not triggers:
            raise ValueError("an empty trigger list would leave every release unguarded (nothing could start "
                             "a rollback); remove the key to get the default triggers, or list the ones you want")
        return triggers


class IntelligentDeployment(Model):
    strategies: StrategiesConfig = Field(default_factory=StrategiesConfig)
    health_checks: HealthCheckConfiguration = Field(default_factory=HealthCheckConfiguration)
    rollback: RollbackConfiguration = Field(default_factory=RollbackConfiguration)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)


# ---------------------------------------------------------------- environments


class ResourceQuotas(Model):
    cpu: Cpu = 4.0
    memory: MemoryMb = 8192.0


class ResourceRequirements(Model):
    cpu: Cpu = 0.1
    memory: MemoryMb = 128.0


class SecurityPolicyRule(Model):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    apiGroups: list[str] = Field(default_factory=list)
    resources: list[str] = Field(default_factory=list)
    verbs: list[str] = Field(default_factory=list)
    resourceNames: list[str] = Field(default_factory=list)


class SecurityPolicy(Model):
    name: str
    type: str
    rules: list[SecurityPolicyRule] = Field(default_factory=list)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class FreezeWindowConfig(Model):
    """No deployments inside this window (weekday + time range in a time zone)."""

    name: str = "freeze"
    days: list[str] = Field(default_factory=lambda: ["daily"])
    start: str = "00:00"
    end: str = "23:59"
    timezone: str = "UTC"

    @field_validator("days")
    @classmethod
    def _days(cls, days: list[str]) -> list[str]:
        cleaned = [d.strip().lower()[:3] if d.strip().lower() != "daily" else "daily" for d in days]
        for day in cleaned:
            if day != "daily" and day not in _DAYS:
                raise ValueError(f"days must be mon..sun or daily, got {show(days)}")
        return cleaned

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        match = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", value)
        if match is None or int(match.group(1)) >= 24 or int(match.group(2)) >= 60:
            raise ValueError(f"expected a time of day as HH:MM, got {show(value)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as 'America', a long name
            raise ValueError(f"unknown time zone {show(value)}") from None
        return value


_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def _plugin_name(value: str | None) -> str | None:
    """A registry name (platform, router, traffic source): whether it is registered is checked by
    the command that uses it, since plug-ins may be registered at run time."""
    if value is not None and not _PLUGIN_NAME.fullmatch(value):
        raise ValueError(f"expected a lowercase name such as 'local' or 'gateway-api', got {show(value)}")
    return value


PluginName = Annotated[str, BeforeValidator(_plugin_name)]


class PrometheusSourceConfig(Model):
    """Where the Prometheus traffic source reads (`traffic_source: prometheus`).

    queries:   the query set: `generic` (http_requests_total / http_request_duration_seconds_bucket
               with a version label), `kubernetes` (the same series selected by the pods' own
               app.kubernetes.io labels), `istio` (istio_requests_total /
               istio_request_duration_milliseconds_bucket), `ingress-nginx` or `safeship` (the
               controller's own /metrics: safeship_requests_total and the rest);
    templates: overrides of single queries of that set, by name (see
               safeship.analysis.providers.prometheus for the names and placeholders);
    timeout:   for one query; a query that fails is a measurement error, never the end of a deployment.
    """

    url: str = Field(min_length=1)
    queries: Literal["generic", "kubernetes", "istio", "ingress-nginx", "safeship"] = "generic"
    templates: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveDuration = 5.0
    version_label: str = Field(default="version", min_length=1)


class GatewayRef(Model):
    """The Gateway an HTTPRoute attaches to (`router: gateway-api`), and what safeship's rule of
    each service's HTTPRoute claims: `hostnames` and `matches` (Gateway API HTTPRouteMatch objects,
    as Kubernetes writes them), where `{service}` is replaced by the service's name. The default,
    no hostnames and `PathPrefix /`, claims everything the listener gets."""

    name: str = Field(min_length=1)
    namespace: str = ""  # "": the environment's namespace
    section_name: str = ""
    hostnames: list[str] = Field(default_factory=list)
    matches: list[dict[str, Any]] = Field(default_factory=list)


class IstioSettings(Model):
    """How the istio router's VirtualService is bound (`router: istio`).

    gateways: the VirtualService's `gateways`: `mesh` (the sidecars) and `<namespace>/<name>` of
              the Istio Gateways whose ingress traffic must follow the weights; empty: the mesh only;
    hosts:    hostnames the VirtualService also claims (those the gateways serve), `{service}`
              replaced by the service's name;
    mode:     `sidecar` (the namespace is labelled `istio-injection: enabled`) or `ambient`
              (`istio.io/dataplane-mode: ambient`).
    """

    gateways: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    mode: Literal["sidecar", "ambient"] = "sidecar"


class Environment(Model):
    name: str = Field(min_length=1)
    type: EnvironmentType = EnvironmentType.DEVELOPMENT
    # Kubernetes: the kubeconfig context that reaches this environment's cluster ("" for the
    # current context) and the namespace its objects live in ("" for the environment's name).
    cluster: str = ""
    namespace: str = ""
    kubeconfig: str | None = None  # None: $KUBECONFIG, else ~/.kube/config, else in-cluster
    resource_quotas: ResourceQuotas = Field(default_factory=ResourceQuotas)
    availability: AvailabilityRequirement | None = None  # default follows the type
    # The registered platform that runs this environment's instances (local, sim, kubernetes...).
    platform: PluginName = "local"
    # Who steers traffic: None for the platform's own default (local: builtin; kubernetes:
    # replicas). `traffic_router` is accepted as another spelling.
    router: PluginName | None = Field(default=None, alias="traffic_router")
    # Who measures it: None for the platform's default (the router's own counters).
    traffic_source: PluginName | None = None
    prometheus: PrometheusSourceConfig | None = None
    gateway: GatewayRef | None = None  # router: gateway-api
    istio: IstioSettings = Field(default_factory=IstioSettings)  # router: istio
    ingress_namespace: str = "ingress-nginx"  # NetworkPolicy admits traffic from here
    # Kubernetes: NetworkPolicies also admit Prometheus' namespace (None: the `<namespace>` of
    # prometheus.url's `<name>.<namespace>.svc` host, else "monitoring"; "": none) and the gateway's
    # data plane (None: the Gateway's namespace for gateway-api, istio-system for istio; "": none).
    monitoring_namespace: str | None = None
    gateway_namespace: str | None = None
    load_balancer: bool = False  # Kubernetes: a Service of type LoadBalancer per service
    router_port_base: Int = Field(default=0, ge=0, le=65535)  # refused unless 0: see services.<name>.ports
    variables: dict[str, str] = Field(default_factory=dict)
    approval: Literal["none", "required"] = "none"
    freeze_windows: list[FreezeWindowConfig] = Field(default_factory=list)
    max_concurrent_deployments: Int | None = Field(default=None, ge=1, le=MAX_COUNT)
    config_maps: dict[str, dict[str, str]] = Field(default_factory=dict)  # name -> {key: value}
    run_as_user: str | None = None  # local platform: drop to this user when the controller is root

    @model_validator(mode="after")
    def _source_configured(self) -> Environment:
        if self.traffic_source == "prometheus" and self.prometheus is None:
            raise ValueError("traffic_source prometheus needs a prometheus: block with its url")
        if self.router == "gateway-api" and self.gateway is None:
            raise ValueError("router gateway-api needs a gateway: block naming the Gateway to attach to")
        return self

    @property
    def kube_namespace(self) -> str:
        return self.namespace or self.name

    @property
    def availability_requirement(self) -> AvailabilityRequirement:
        if self.availability is not None:
            return self.availability
        return {
            EnvironmentType.PRODUCTION: AvailabilityRequirement.HIGH,
            EnvironmentType.STAGING: AvailabilityRequirement.MEDIUM,
        }.get(self.type, AvailabilityRequirement.LOW)


class EnvironmentManagement(Model):
    environments: list[Environment] = Field(default_factory=list)
    security_policies: list[SecurityPolicy] = Field(default_factory=list)

    @field_validator("environments")
    @classmethod
    def _unique(cls, envs: list[Environment]) -> list[Environment]:
        seen: set[str] = set()
        for env in envs:
            if env.name in seen:
                raise ValueError(f"environment {env.name!r} is listed twice")
            seen.add(env.name)
        return envs


# ---------------------------------------------------------------- services


class SimProfile(Model):
    """How a version behaves in the sim world (`platform: sim` environments)."""

    error_rate: Number = Field(default=0.005, ge=0, le=1)
    latency_p50_ms: Number = Field(default=40.0, gt=0, le=3_600_000)
    latency_p99_ms: Number = Field(default=180.0, gt=0, le=3_600_000)
    ready: bool = True
    crash_after_s: Number | None = Field(default=None, gt=0, le=30 * 86400)
    onset_s: Number = Field(default=0.0, ge=0, le=30 * 86400)


class VolumeConfig(Model):
    """A persistent volume a service mounts (Kubernetes: a PersistentVolumeClaim per environment)."""

    name: str = Field(min_length=1)
    size: MemoryMb = 1024.0
    mount_path: str = Field(min_length=1)
    storage_class: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"


class PodConfig(Model):
    """Kubernetes: what a service's pods carry besides their container (`platform: kubernetes`;
    checked when the config loads by config/kubernetes.py, documented in docs/kubernetes.md).
    `affinity`, `tolerations` and `topology_spread_constraints` are written as Kubernetes writes
    them (camelCase keys) and copied into the pod spec."""

    service_account: str | None = None  # serviceAccountName; None: the namespace's `default`
    image_pull_secrets: list[str] = Field(default_factory=list)  # Secret names
    annotations: dict[str, str] = Field(default_factory=dict)
    affinity: dict[str, Any] | None = None
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # A constraint without labelSelector spreads the pods of its own version.
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list)
    # runAsUser; None: the environment's numeric run_as_user, else the image's USER (numeric)
    run_as_user: Int | None = Field(default=None, ge=0, le=2**31 - 1)
    # A preStop sleep, so that endpoints stop sending before the container gets SIGTERM; within
    # grace_period (terminationGracePeriodSeconds). 0: none.
    pre_stop_sleep: Duration = Field(default=5.0, le=3600)
    # A PodDisruptionBudget per version with this minAvailable (a count or "50%"); None: none.
    min_available: Int | str | None = None


class AutoscalingConfig(Model):
    """Kubernetes: a HorizontalPodAutoscaler per version, over that version's Deployment, made when
    the version is scaled up and deleted when it is scaled to 0 (docs/kubernetes.md)."""

    min_replicas: Int = Field(default=1, ge=1, le=MAX_COUNT)
    max_replicas: Int = Field(ge=1, le=MAX_COUNT)
    target_cpu: Int = Field(default=80, ge=1, le=1000)  # averageUtilization, % of the CPU request


class TlsConfig(Model):
    """`services.<name>.tls.<environment>`: the route's router terminates TLS with this certificate.

    cert_file:     PEM, the certificate then its intermediates (a full chain, as certbot writes it);
    key_file:      PEM, its private key; only its owner may read it (mode 0600, else the config is
                   refused). Relative paths are read from the config file's folder. When either
                   file changes on disk, the next connection gets the new pair and open connections
                   keep theirs; a pair that does not load (half written) is ignored until it does;
    redirect_http: a port on the route's listen address that answers every plain HTTP request with
                   a redirect to the same host and path over https (301 for GET and HEAD, 308
                   otherwise); None: none.
    """

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    redirect_http: Int | None = Field(default=None, ge=1, le=65535)


class ServiceConfig(Model):
    criticality: Criticality = Criticality.MEDIUM
    replicas: Int = Field(default=2, ge=1, le=MAX_COUNT)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)  # requests
    limits: ResourceRequirements | None = None  # None: the requests are also the limits
    # Kubernetes: the container image, with {version} replaced by the version deployed, and the
    # port the container serves on (probes and Services use it).
    image: str = ""
    container_port: Int = Field(default=8080, ge=1, le=65535)
    volumes: list[VolumeConfig] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    health_checks: HealthCheckConfiguration | None = None
    command: list[str] = Field(default_factory=list)  # local platform: {port}, {version}, ...
    versions: list[str] = Field(default_factory=list)  # known releases; empty: any version
    router_port: Int = Field(default=0, ge=0, le=65535)  # refused unless 0: see `ports` (config/ports.py)
    # The route's port per environment (0: any free port); an environment left out gets a port
    # hashed from the two names (config/ports.py), never one from the order of a list.
    ports: dict[str, Annotated[Int, Field(ge=0, le=65535)]] = Field(default_factory=dict)
    # Where the route listens per environment, as HOST:PORT or HOST ("0.0.0.0:443", "[::]:443");
    # a port written here is the route's port (then ports.<environment> must not be set too).
    # An environment left out listens on 127.0.0.1 only.
    listen: dict[str, ListenAddress] = Field(default_factory=dict)
    tls: dict[str, TlsConfig] = Field(default_factory=dict)  # per environment: see TlsConfig
    grace_period: Duration = Field(default=10.0, le=86400)
    rollback: RollbackConfiguration | None = None  # per-service override (rollback-manager --configure)
    simulate: dict[str, SimProfile] = Field(default_factory=dict)  # sim world: behaviour per version
    rps: Number = Field(default=100.0, gt=0, le=1_000_000)  # sim world: requests per second
    webhooks: list[WebhookGateConfig] = Field(default_factory=list)  # gates (see webhooks.py)
    pipeline: Pipeline = Field(default_factory=list)  # stages before the deploy (checked as a whole)
    pod: PodConfig = Field(default_factory=PodConfig)  # Kubernetes: the pod's own settings
    autoscaling: AutoscalingConfig | None = None  # Kubernetes: a HorizontalPodAutoscaler per version

    @field_validator("webhooks")
    @classmethod
    def _unique_gates(cls, value: list[WebhookGateConfig]) -> list[WebhookGateConfig]:
        check_gates(value)
        return value


class StoreConfig(Model):
    url: str = "sqlite:///.safeship/state.db"
    # Leases (docs/store.md): a controller claims each deployment it drives for lease_duration and
    # renews the claim every lease_renew_interval; another controller on the store takes a
    # deployment over only once its lease has expired.
    lease_duration: PositiveDuration = 15.0
    lease_renew_interval: PositiveDuration = 5.0

    @model_validator(mode="after")
    def _renew_within_duration(self) -> StoreConfig:
        if not self.lease_renew_interval < self.lease_duration:
            raise ValueError(
                f"lease_renew_interval ({self.lease_renew_interval:g}s) must be shorter than lease_duration "
                f"({self.lease_duration:g}s), or a lease expires before it is renewed")
        return self


class SafeshipConfig(Model):
    intelligent_deployment: IntelligentDeployment = Field(default_factory=IntelligentDeployment)
    environment_management: EnvironmentManagement = Field(default_factory=EnvironmentManagement)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    store: StoreConfig = Field(default_factory=StoreConfig)
    state_dir: str = ".safeship"
    # The local platform's router runs in a process of its own, so that routes keep serving while
    # the controller restarts; false runs it inside the controller.
    router_process: bool = True
    notifications: NotificationSinks = Field(default_factory=list)
    # Host names the controller's API and dashboard answer to besides 127.0.0.1, localhost, ::1 and
    # the host it listens on (config/hosts.py); any other Host header is refused with 400.
    api_hosts: ApiHosts = Field(default_factory=list)

    def environment(self, name: str) -> Environment | None:
        return next((e for e in self.environment_management.environments if e.name == name), None)

    def health_checks_for(self, service: str) -> HealthCheckConfiguration:
        own = self.services[service].health_checks
        return own if own is not None else self.intelligent_deployment.health_checks

    def rollback_for(self, service: str, request: DeploymentRequest | None = None) -> RollbackConfiguration:
        """The rollback settings in force: the deployment request's own `rollback_config`, else
        the service's (rollback-manager --configure), else intelligent_deployment.rollback."""
        if request is not None and request.rollback_config is not None:
            return request.rollback_config
        own = self.services[service].rollback if service in self.services else None
        return own if own is not None else self.intelligent_deployment.rollback

    def service_for(self, service: str, request: DeploymentRequest | None = None) -> ServiceConfig:
        """The service's settings for one deployment: `request.configuration` laid over
        services.<name> (see DeploymentConfiguration). Replicas are not laid over here: the engine
        takes them from the request itself."""
        own = self.services[service]
        given = request.configuration if request is not None else None
        if given is None:
            return own
        update: dict[str, Any] = {}
        if "resources" in given.model_fields_set:
            wanted = given.resources
            update["resources"] = own.resources.model_copy(
                update={name: getattr(wanted, name) for name in wanted.model_fields_set})
        if "health_checks" in given.model_fields_set:
            update["health_checks"] = HealthCheckConfiguration.model_validate(
                _merged(self.health_checks_for(service).model_dump(),
                        given.health_checks.model_dump(exclude_unset=True)))
        if given.environment_variables:
            update["env"] = {**own.env, **given.environment_variables}
        return own.model_copy(update=update) if update else own


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` laid over `base`, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in given.items():
        below = merged.get(key)
        merged[key] = _merged(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


# ---------------------------------------------------------------- the seed's request types


class DeploymentConfiguration(Model):
    """Settings for this deployment's instances only, laid over services.<name>: `resources` and
    `health_checks` field by field (what the request does not set stays the service's), and
    `environment_variables` added to the service's env (the request wins on a clash). `secrets`
    is refused when not empty: secrets are read per service from secrets/<environment>/, so set
    them under services.<name>.secrets in safeship.yaml."""

    replicas: Int = Field(default=1, ge=1, le=MAX_COUNT)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    health_checks: HealthCheckConfiguration = Field(default_factory=HealthCheckConfiguration)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)


class DeploymentRequest(Model):
    service_name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    environment: str = Field(min_length=1)
    deployment_strategy: DeploymentStrategy | None = None  # None: safeship selects and says why
    configuration: DeploymentConfiguration | None = None  # None: from the service's config
    # This deployment's rollback settings (triggers, auto_rollback, timeouts, monitoring window);
    # None: the service's (rollback-manager --configure) or intelligent_deployment.rollback.
    rollback_config: RollbackConfiguration | None = None
    requested_by: str = ""
    override_freeze: str | None = None  # the reason, recorded with the deployment

    def stored(self) -> dict[str, Any]:
        """The request as the deployment keeps it: `configuration` holds only what was given, so
        that the service's own settings fill the rest when the deployment's instances start."""
        data = self.model_dump(mode="json")
        if self.configuration is not None:
            data["configuration"] = given = self.configuration.model_dump(mode="json", exclude_unset=True)
            if "memory" in given.get("resources", {}):  # a bare number reads back as bytes
                given["resources"]["memory"] = self.configuration.resources.memory * 2**20
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any] | None) -> DeploymentRequest | None:
        """A stored request (see `stored`), or None when there is none or it no longer parses."""
        if not data:
            return None
        try:
            return cls.model_validate(data)
        except ValueError:
            return None
