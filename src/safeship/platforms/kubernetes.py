"""The Kubernetes platform: one Deployment per version of a service, in one environment's namespace.

- `scale(service, environment, version, n)` applies the version's Deployment
  (`safeship.kube.objects.deployment`, named `<service>-<version slug>`, with the resource
  requests, probes and environment variables the deployment request lays over the service's
  config, from the engine's instance spec) with `replicas: n` and returns at once; Kubernetes
  starts and stops the pods, and `instances` shows how far it got.
- `instances` lists the service's pods as `Instance`s: id `<environment>/<service>/<pod>`, host
  the pod IP, port the service's `container_port`, the state from the pod's conditions and
  container statuses, `restarts` from the restart counts, and `last_failure` naming what a kubelet
  reports (`CrashLoopBackOff`, `ImagePullBackOff`, `OOMKilled`), or `ProgressDeadlineExceeded`
  when the Deployment's Progressing condition says so. The engine reads restarts and failed states
  as HealthCheckFailure evidence.
- Kubernetes never rolls back on its own when a deadline passes; safeship does. Every version keeps
  its own Deployment and pod template, so a rollback scales the previous version's Deployment up
  again: its template is the previous one, untouched, as `kubectl rollout undo` would restore it.
  For that, a version's pod template is fixed when its Deployment is created: later scales patch
  `spec.replicas` only (a config change reaches the cluster with the next version deployed).
- Pods outlive the controller: `adopt` returns the pods already there, and nothing is kept in the
  instance ledger (the cluster is the record).
- Traits: `runs_in_controller` (the controller drives deployments in real time), not
  `runs_commands`, default router `replicas` (weights become replica ratios), traffic source
  `prometheus`, and `per_environment`: a platform object serves one environment (its cluster
  context and namespace), so the controller builds one per environment from
  `PlatformSetup.environment`.

`lightkube` is imported only through `safeship.kube.client`, inside methods, so users of the local
platform never need it. API errors arrive translated (`TemporaryError` / `PermanentError`).

API calls made here (all through `KubeClient`): GET and POST of apps/v1 Deployments; PATCH (JSON
merge patch of `spec.replicas` only) of apps/v1 Deployments; POST (or merge patch) of policy/v1
PodDisruptionBudgets and autoscaling/v2 HorizontalPodAutoscalers; LIST of apps/v1 Deployments and
v1 Pods by label; DELETE of v1 Pods (`stop`) and of a version's HorizontalPodAutoscaler (scaled to 0).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from safeship.clock import Clock, RealClock
from safeship.config.models import Environment, ProbeConfig, SafeshipConfig
from safeship.errors import InputError
from safeship.kube import objects
from safeship.platforms.base import (
    Instance,
    InstanceSpec,
    InstanceState,
    LeavingHook,
    Platform,
    PlatformSetup,
    ProbeSpec,
    SpecTemplate,
    StartedHook,
    StoppedHook,
)

if TYPE_CHECKING:
    from safeship.kube.client import KubeClient

log = logging.getLogger(__name__)

CRASH_LOOP = "CrashLoopBackOff"
IMAGE_PULL = "ImagePullBackOff"
OOM_KILLED = "OOMKilled"
_IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_START_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def _timestamp(text: object) -> float:
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _probe_config(spec: ProbeSpec) -> ProbeConfig:
    kind = spec.kind if spec.kind in ("http", "tcp", "exec") else "http"
    return ProbeConfig.model_validate({
        "type": kind, "path": spec.path, "command": list(spec.command), "timeout": spec.timeout,
        "interval": spec.interval, "failure_threshold": spec.failure_threshold,
        "success_threshold": spec.success_threshold, "initial_delay": spec.initial_delay})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_state(pod: Mapping[str, Any]) -> tuple[InstanceState, int, str | None]:
    """(state, restarts, last failure) of a pod, as its kubelet reports them."""
    status = pod.get("status") or {}
    containers = [c for c in status.get("containerStatuses") or [] if isinstance(c, Mapping)]
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    failure: str | None = None
    waiting_reasons = [str(((c.get("state") or {}).get("waiting") or {}).get("reason") or "") for c in containers]
    terminated_reasons = [
        str(((c.get("lastState") or {}).get("terminated") or {}).get("reason") or "") for c in containers
    ] + [str(((c.get("state") or {}).get("terminated") or {}).get("reason") or "") for c in containers]
    if OOM_KILLED in terminated_reasons:
        failure = OOM_KILLED
    elif CRASH_LOOP in waiting_reasons:
        failure = CRASH_LOOP
    if objects.pod_terminating(pod):  # on its way out: no longer an instance, whatever it shows
        return InstanceState.STOPPED, restarts, failure
    if any(reason in _IMAGE_REASONS for reason in waiting_reasons):
        return InstanceState.FAILED, restarts, IMAGE_PULL
    start_error = next((r for r in waiting_reasons if r in _START_REASONS), None)
    if start_error is not None:
        return InstanceState.FAILED, restarts, start_error
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        return InstanceState.FAILED, restarts, failure or str(status.get("reason") or f"pod {str(phase).lower()}")
    if CRASH_LOOP in waiting_reasons:
        return InstanceState.RESTARTING, restarts, failure
    if objects.pod_ready(pod):
        return InstanceState.READY, restarts, failure
    if phase == "Running":
        return InstanceState.UNREADY, restarts, failure
    return InstanceState.STARTING, restarts, failure


class KubernetesPlatform:
    """`Platform` on a Kubernetes cluster: one Deployment per version (see the module docstring)."""

    runs_in_controller: ClassVar[bool] = True
    runs_commands: ClassVar[bool] = False
    router: ClassVar[str] = "replicas"
    traffic: ClassVar[str] = "prometheus"
    # One platform object per environment: the controller builds it from `PlatformSetup.environment`.
    per_environment: ClassVar[bool] = True

    @classmethod
    def create(cls, setup: PlatformSetup) -> Platform:
        if setup.config is None or setup.environment is None:
            raise InputError("the kubernetes platform serves one environment: its setup must carry the config "
                             "and the environment")
        return cls(setup.config, setup.environment, clock=setup.clock)

    def __init__(self, config: SafeshipConfig, environment: Environment, *, client: KubeClient | None = None,
                 clock: Clock | None = None, owner: Mapping[str, Any] | None = None) -> None:
        self.config = config
        # An ownerReference put on every object made here (the operator's Release): deleting the
        # owner deletes them. None: no owner (the controller outside the cluster).
        self.owner = dict(owner) if owner is not None else None
        self.environment = environment
        self.namespace = environment.kube_namespace
        self._client = client
        self._own_client = client is None
        self._clock: Clock = clock if clock is not None else RealClock()

    async def kube(self) -> KubeClient:
        """The environment's API client, built on first use."""
        if self._client is None:
            from safeship.kube.client import KubeClient

            self._client = KubeClient.for_environment(self.environment)
        return self._client

    def _mine(self, service: str, environment: str) -> bool:
        return environment == self.environment.name and service in self.config.services

    def _check(self, service: str, environment: str) -> None:
        if environment != self.environment.name:
            raise InputError(f"environment: this kubernetes platform serves {self.environment.name!r}, "
                             f"not {environment!r}")
        if service not in self.config.services:
            raise InputError(f"service: {service!r} is not configured")

    # ------------------------------------------------------------ Platform protocol

    async def start(self, spec: InstanceSpec) -> Instance:
        """Kubernetes starts pods through the version's Deployment: grow it to hold index `spec.index`."""
        self._check(spec.service, spec.environment)
        kube = await self.kube()
        current = await kube.get("apps/v1", "Deployment", objects.deployment_name(spec.service, spec.version),
                                 self.namespace)
        replicas = int(((current or {}).get("spec") or {}).get("replicas") or 0)
        await self.scale(spec.service, spec.environment, spec.version, max(replicas, spec.index + 1),
                         lambda index: spec, drain=0.0)
        return self._placeholder(spec.service, spec.version, spec.index)

    async def stop(self, instance: Instance, *, drain: float) -> None:
        """Wait `drain` seconds (the caller's router has drained the instance), then delete its pod
        (its Deployment replaces it unless scaled down first); the pod then has its preStop sleep
        and termination grace period. A pod that is not there is a no-op."""
        if instance.environment != self.environment.name:
            return
        pod = instance.id.rsplit("/", 1)[-1]
        if "#" in pod:  # a placeholder for a pod not yet created
            return
        if drain > 0:
            await self._clock.sleep(drain)
        kube = await self.kube()
        await kube.delete("v1", "Pod", pod, self.namespace)

    async def instances(self, service: str, environment: str) -> list[Instance]:
        if not self._mine(service, environment):
            return []
        kube = await self.kube()
        pods = await kube.list("v1", "Pod", self.namespace, labels=objects.selector(service))
        deployments = await kube.list("apps/v1", "Deployment", self.namespace, labels=objects.selector(service))
        return self._instances(service, pods, deployments)

    def _instances(self, service: str, pods: Sequence[Mapping[str, Any]],
                   deployments: Sequence[Mapping[str, Any]]) -> list[Instance]:
        port = self.config.services[service].container_port
        failed: dict[str, str] = {}  # version -> the Deployment's failure message
        refused: dict[str, str] = {}  # version -> why the API server refused its pods (ReplicaFailure)
        wanted: dict[str, int] = {}
        for item in deployments:
            version = objects.object_version(item)
            if version is None:
                continue
            progress = objects.rollout(item)
            wanted[version] = progress.wanted
            scaled_up = _timestamp(((item.get("metadata") or {}).get("annotations") or {}).get(
                objects.SCALED_UP_ANNOTATION))
            if progress.failed and (not scaled_up or _timestamp(progress.failed_at) >= scaled_up):
                failed[version] = progress.message
                if progress.reason == objects.FAILED_CREATE:
                    refused[version] = progress.message
                elif progress.refusal:  # the deadline passed while the API server refused its pods
                    refused[version] = f"{objects.PROGRESS_DEADLINE_EXCEEDED}; {progress.refusal}"
        by_version: dict[str, list[Mapping[str, Any]]] = {}
        for pod in pods:
            version = objects.object_version(pod)
            if version is not None:
                by_version.setdefault(version, []).append(pod)
        result: list[Instance] = []
        for version in sorted(set(by_version) | set(failed)):
            listed = sorted(by_version.get(version, []), key=lambda p: (
                objects.pod_terminating(p), str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                str((p.get("metadata") or {}).get("name") or "")))
            for index, pod in enumerate(listed):
                state, restarts, failure = pod_state(pod)
                if version in failed and state in (InstanceState.STARTING, InstanceState.UNREADY):
                    state, failure = InstanceState.FAILED, failure or objects.PROGRESS_DEADLINE_EXCEEDED
                meta = pod.get("metadata") or {}
                status = pod.get("status") or {}
                result.append(Instance(
                    id=f"{self.environment.name}/{service}/{meta.get('name')}",
                    service=service,
                    environment=self.environment.name,
                    version=version,
                    index=index,
                    host=str(status.get("podIP") or ""),
                    port=port,
                    state=state,
                    started_at=_timestamp(status.get("startTime") or meta.get("creationTimestamp")),
                    restarts=restarts,
                    last_failure=failure,
                ))
            if version in failed and wanted.get(version, 0) > 0 and not any(
                    i.version == version and not i.ready for i in result):
                # No pod shows it (none could be created): the Deployment itself is the evidence.
                name = objects.deployment_name(service, version)
                result.append(Instance(
                    id=f"{self.environment.name}/{service}/{name}", service=service,
                    environment=self.environment.name, version=version, index=len(listed),
                    port=port, state=InstanceState.FAILED,
                    last_failure=refused.get(version, objects.PROGRESS_DEADLINE_EXCEEDED),
                ))
        return result

    async def scale(
        self,
        service: str,
        environment: str,
        version: str,
        replicas: int,
        template: SpecTemplate,
        *,
        drain: float,
        on_leaving: LeavingHook | None = None,
        on_started: StartedHook | None = None,
        on_stopped: StoppedHook | None = None,
    ) -> None:
        """Apply the version's Deployment with `replicas` and return; Kubernetes converges it.
        Scaling down calls `on_leaving` (the router drains the leaving pods), waits `drain` seconds for
        their in-flight requests, then lowers the count; each pod then has its preStop sleep and
        termination grace period. Scaling down keeps the Deployment (at 0 replicas it is the
        template a rollback scales up). A new Deployment comes with its PodDisruptionBudget when
        `pod.min_available` is set. With `autoscaling`, the version's HorizontalPodAutoscaler is
        applied while it has pods and deleted before it is scaled to 0."""
        self._check(service, environment)
        if replicas < 0:
            raise InputError(f"replicas: must be 0 or more, got {replicas}")
        kube = await self.kube()
        name = objects.deployment_name(service, version)
        current = await kube.get("apps/v1", "Deployment", name, self.namespace)
        if current is None and replicas == 0:
            return
        before = int(((current or {}).get("spec") or {}).get("replicas") or 0)
        if replicas < before and on_leaving is not None:
            every = await self.instances(service, environment)
            staying = [i for i in every if i.version == version and i.ready][:replicas]
            await on_leaving(staying)
        if replicas < before and drain > 0:
            await self._clock.sleep(drain)
        scaler = objects.autoscaler(self.config, self.environment, service, version, owner=self.owner)
        if scaler is not None and replicas == 0:
            # the version leaves: its autoscaler goes first, so that nothing scales it up again
            await kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", name, self.namespace)
        if current is None:
            desired = objects.deployment(self.config, self.environment, service, version, replicas=replicas,
                                         owner=self.owner)
            await kube.create(self._with_request_settings(desired, service, template(0)))
            budget = objects.disruption_budget(self.config, self.environment, service, version, owner=self.owner)
            if budget is not None:
                await kube.apply(budget)
        elif before != replicas:
            # Only the count changes: the pod template stays the one the version was deployed with.
            patch: dict[str, Any] = {"spec": {"replicas": replicas}}
            if before == 0:  # a new attempt: a progress deadline passed before now is not its own
                patch["metadata"] = {"annotations": {objects.SCALED_UP_ANNOTATION: _now()}}
            await kube.patch("apps/v1", "Deployment", name, patch, self.namespace)
        if scaler is not None and replicas > 0:
            await kube.apply(scaler)  # from here the autoscaler keeps the count within its bounds
        for index in range(before, replicas):
            if on_started is not None:
                on_started(self._placeholder(service, version, index))
        for index in range(replicas, before):
            if on_stopped is not None:
                on_stopped(self._placeholder(service, version, index, InstanceState.STOPPED))

    def _with_request_settings(self, desired: dict[str, Any], service: str, spec: InstanceSpec) -> dict[str, Any]:
        """The Deployment with what the deployment request lays over the service's config (the
        engine's instance spec): resource requests, probes and plain environment variables. Secret
        values in the spec are never used: secrets stay references into the service's Secret."""
        settings = self.config.services[service]
        (container,) = desired["spec"]["template"]["spec"]["containers"]
        requests = {"cpu": objects.cpu_quantity(spec.cpu), "memory": objects.memory_quantity(spec.memory_mb)}
        limits = settings.limits
        container["resources"] = {"requests": requests, "limits": requests if limits is None else {
            "cpu": objects.cpu_quantity(max(limits.cpu, spec.cpu)),
            "memory": objects.memory_quantity(max(limits.memory, spec.memory_mb)),
        }}
        port = settings.container_port
        container["readinessProbe"] = objects.probe(_probe_config(spec.readiness), port, liveness=False)
        container["livenessProbe"] = objects.probe(_probe_config(spec.liveness), port, liveness=True)
        plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        plain.update(spec.env)
        refs = [e for e in container["env"] if "valueFrom" in e and e["name"] not in plain]
        container["env"] = [{"name": k, "value": v} for k, v in sorted(plain.items())] + refs
        return desired

    def _placeholder(self, service: str, version: str, index: int,
                     state: InstanceState = InstanceState.STARTING) -> Instance:
        """An instance Kubernetes has been asked for but that has no pod name yet."""
        name = objects.deployment_name(service, version)
        return Instance(id=f"{self.environment.name}/{service}/{name}#{index}", service=service,
                        environment=self.environment.name, version=version, index=index,
                        port=self.config.services[service].container_port, state=state)

    async def adopt(self) -> list[Instance]:
        """The pods already running for the configured services: they outlive any controller."""
        kube = await self.kube()
        pods = await kube.list("v1", "Pod", self.namespace,
                               labels={objects.MANAGED_BY_LABEL: objects.MANAGED_BY})
        deployments = await kube.list("apps/v1", "Deployment", self.namespace,
                                      labels={objects.MANAGED_BY_LABEL: objects.MANAGED_BY})
        adopted: list[Instance] = []
        for service in self.config.services:
            mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(objects.NAME_LABEL)
                    == service]
            theirs = [d for d in deployments
                      if ((d.get("metadata") or {}).get("labels") or {}).get(objects.NAME_LABEL) == service]
            adopted += [i for i in self._instances(service, mine, theirs) if not i.stopped]
        return adopted

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.close()
            self._client = None
