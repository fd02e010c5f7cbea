"""Prepare, validate and clean up an environment on a Kubernetes cluster (seed §3).

`environments.manager.EnvironmentManager` hands an environment whose platform is `kubernetes` to
`KubernetesEnvironment`; the three verbs answer with the same `Check` list as on the local
platform, and a machinery failure (the cluster cannot be reached, the server refuses) is a failed
check naming it, never a traceback.

- **prepare** applies `kube.environment.environment_objects` in order: the Namespace first (created
  with safeship's labels; one that exists and that safeship did not create only gets the Pod
  Security Admission labels it lacks: its owner's are kept, and the check says so), then the
  quota, limits, RBAC, network policies, config maps, secrets (values read from
  `secrets/<environment>/`, sent to the cluster only: never printed, logged or stored), volume
  claims and load balancers. Each is created, or merge-patched when it exists. The store
  records what was applied (kinds and names, never a value).
- **validate** checks that the cluster answers, that the namespace is Active (a Terminating one is
  a warning that says so, and nothing more is checked), that its
  NetworkPolicies let in the traffic the config implies (the ingress controller, the gateway,
  Prometheus, a load balancer: `kube.environment.blocked_flows`), for router istio that its pods
  would join the mesh (`kube.environment.mesh_problem`), that every
  ResourceQuota leaves room for the next deployment at its peak, with `autoscaling` that the
  resource metrics API is Available, that the deployer's ServiceAccount
  (`system:serviceaccount:<namespace>:safeship-deployer`) may do what a deployment does (one
  SubjectAccessReview per verb and resource of `deployer_rules`, asked by the kubeconfig's user,
  which needs `create` on subjectaccessreviews), and that the secret files are there and private.
- **cleanup** deletes, kind by kind, what carries `app.kubernetes.io/managed-by: safeship` and the
  environment's label in the namespace, then the namespace itself when safeship created it. The
  history (deployments, events, rollbacks) stays in the store; only the prepared state is dropped.

Kubernetes API calls made here (all through `kube.client.KubeClient`):

    prepare   GET namespaces/{ns}; POST namespaces, or PATCH namespaces/{ns} (merge patch:
              labels only); for every other object POST, and on 409 AlreadyExists PATCH (merge patch)
              resourcequotas, limitranges, serviceaccounts, roles, rolebindings, networkpolicies,
              configmaps, secrets, persistentvolumeclaims, services
    validate  GET namespaces/{ns} (and the source namespaces); GET (list) networkpolicies,
              resourcequotas; GET daemonsets/istio-cni-node (istio); GET apiservices/v1beta1.metrics.k8s.io
              (with autoscaling); POST subjectaccessreviews
    cleanup   GET (list, labelSelector) and DELETE (propagationPolicy=Background) of
              httproutes | virtualservices + destinationrules, horizontalpodautoscalers,
              poddisruptionbudgets, deployments, replicasets, pods, services,
              persistentvolumeclaims, configmaps, secrets, networkpolicies,
              rolebindings, roles, serviceaccounts, limitranges, resourcequotas; GET and DELETE
              namespaces/{ns} when safeship created it
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safeship.config.models import Environment, EnvironmentType, SafeshipConfig, ServiceConfig
from safeship.config.quantities import parse_cpu, parse_memory_mb
from safeship.environments.manager import Check
from safeship.environments.secrets import load_secrets, register, secrets_dir
from safeship.errors import ConfigError, ConflictError, PermanentError, SafeshipError, TemporaryError
from safeship.kube.environment import (
    DEPLOYER,
    ISTIO_CNI,
    ISTIO_CNI_NAMESPACES,
    PSA_PREFIX,
    blocked_flows,
    deployer_rules,
    deployer_user,
    environment_objects,
    implied_flows,
    managed_selector,
    mesh_problem,
    namespace_of,
)
from safeship.kube.objects import MANAGED_BY, MANAGED_BY_LABEL, router_of
from safeship.store import Store

if TYPE_CHECKING:
    from safeship.kube.client import KubeClient

_T = TypeVar("_T")

# What cleanup deletes, in this order: traffic first, then workloads, then the environment's own
# objects; RBAC last, so that a cleanup interrupted half-way can still be run again.
_ROUTER_KINDS = {
    "gateway-api": [("gateway.networking.k8s.io/v1", "HTTPRoute")],
    "istio": [("networking.istio.io/v1", "VirtualService"), ("networking.istio.io/v1", "DestinationRule")],
}
METRICS_API = "v1beta1.metrics.k8s.io"  # the resource metrics API (metrics-server) autoscalers read
_CLEANUP_KINDS = [
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("v1", "ServiceAccount"),
    ("v1", "LimitRange"),
    ("v1", "ResourceQuota"),
]


ClientFactory = Callable[[Environment], "KubeClient"]


def _default_client(environment: Environment) -> KubeClient:
    from safeship.kube.client import KubeClient

    return KubeClient.for_environment(environment)


@dataclass(frozen=True)
class Peak:
    """What the next deployment of one service needs beyond what serves now, and in all."""

    service: str
    strategy: str
    extra_pods: int
    cpu: float  # cores requested per pod
    memory: float  # MiB requested per pod
    limit_cpu: float
    limit_memory: float


def peak_of(config: SafeshipConfig, service: str, settings: ServiceConfig) -> Peak:
    """The most pods the next deployment of `service` adds at once, over the strategies enabled:
    blue-green and canary (at its last step) run a second full set of replicas, rolling adds its
    surge, recreate adds none."""
    strategies = config.intelligent_deployment.strategies
    options = []
    if strategies.blue_green.enabled:
        options.append((settings.replicas, "blue-green"))
    if strategies.canary.enabled:
        options.append((settings.replicas, "canary"))
    if strategies.rolling.enabled:
        options.append((min(strategies.rolling.max_surge, settings.replicas), "rolling"))
    if strategies.recreate.enabled:
        options.append((0, "recreate"))
    extra, strategy = max(options, key=lambda option: option[0], default=(0, "none"))
    limits = settings.limits or settings.resources
    return Peak(service, strategy, extra, settings.resources.cpu, settings.resources.memory,
                limits.cpu, limits.memory)


class KubernetesEnvironment:
    """prepare / validate / cleanup of one environment on its cluster (see the module docstring)."""

    def __init__(self, config: SafeshipConfig, environment: Environment, *, root: Path, store: Store,
                 client_factory: ClientFactory | None = None) -> None:
        self.config = config
        self.environment = environment
        self.root = root  # the config file's folder: secrets/<environment>/ lives here
        self.store = store
        self.client_factory = client_factory or _default_client

    @property
    def name(self) -> str:
        return self.environment.name

    def secret_names(self) -> list[str]:
        return sorted({n for service in self.config.services.values() for n in service.secrets})

    async def _client(self, checks: list[Check]) -> KubeClient | None:
        try:
            return self.client_factory(self.environment)
        except SafeshipError as exc:
            checks.append(Check("cluster", False, str(exc)))
            return None

    # ------------------------------------------------------------ prepare

    async def prepare(self) -> list[Check]:
        namespace = namespace_of(self.environment)
        values = load_secrets(self.root, self.name, self.secret_names())  # missing or unsafe: refused now
        register(values.values())
        objects = environment_objects(self.config, self.environment, secret_values=values)
        checks: list[Check] = []
        applied: list[list[str]] = []
        kube = await self._client(checks)
        if kube is None:
            return checks
        async with kube:
            for obj in objects:
                kind, obj_name = obj["kind"], obj["metadata"]["name"]
                try:
                    if kind == "Namespace":
                        detail = await self._prepare_namespace(kube, obj)
                    else:
                        await kube.apply(obj)
                        detail = _applied_detail(obj)
                except (TemporaryError, PermanentError) as exc:
                    checks.append(Check(f"{kind} {obj_name}", False, str(exc)))
                    left = len(objects) - len(applied) - 1
                    checks.append(Check("prepare", False, f"stopped: {left} more objects not applied; "
                                        "run --prepare again once the cause is fixed"))
                    return checks
                applied.append([kind, obj_name])
                checks.append(Check(f"{kind} {obj_name}", True, detail))
        self.store.save_environment_state(self.name, {
            "platform": "kubernetes",
            "cluster": self.environment.cluster,
            "namespace": namespace,
            "objects": applied,
            "secrets": sorted(values),
        }, time.time())
        checks.append(Check("store", True, f"prepared state of {self.name} recorded ({len(applied)} objects)"))
        return checks

    async def _prepare_namespace(self, kube: KubeClient, obj: dict[str, Any]) -> str:
        """Create the namespace; one that exists keeps its own labels and gets the Pod Security
        labels, plus safeship's only when safeship created it."""
        name = obj["metadata"]["name"]
        existing = await kube.get("v1", "Namespace", name)
        if existing is None:
            await kube.create(obj)
            return f"created, Pod Security level {_psa(obj)}"
        if (existing.get("status") or {}).get("phase") == "Terminating":
            raise PermanentError(f"namespace {name} is Terminating (being deleted; its finalizers hold it until it "
                                 "is empty), and nothing can be created in it: run --prepare again once it is gone")
        labels = dict(obj["metadata"]["labels"])
        current = dict((existing.get("metadata") or {}).get("labels") or {})
        ours = current.get(MANAGED_BY_LABEL) == MANAGED_BY
        if ours:
            await kube.patch("v1", "Namespace", name, {"metadata": {"labels": labels}})
            return f"exists (created by safeship), Pod Security level {_psa(obj)}"
        # Not ours: its owner's Pod Security labels stay; only the missing ones are added.
        psa = {k: v for k, v in labels.items() if k.startswith(PSA_PREFIX)}
        missing = {k: v for k, v in psa.items() if k not in current}
        kept = sorted(k for k, v in psa.items() if k in current and current[k] != v)
        if missing:
            await kube.patch("v1", "Namespace", name, {"metadata": {"labels": missing}})
        level = current.get(PSA_PREFIX + "enforce", _psa(obj))
        detail = f"exists (not created by safeship), Pod Security level {level}"
        if kept:
            detail += "; its own " + ", ".join(f"{k}={current[k]}" for k in kept) + " kept (the config asks for " + \
                ", ".join(f"{k}={psa[k]}" for k in kept) + ")"
        return detail

    # ------------------------------------------------------------ validate

    async def validate(self) -> list[Check]:
        namespace = namespace_of(self.environment)
        checks: list[Check] = []
        kube = await self._client(checks)
        if kube is not None:
            async with kube:
                if await self._namespace_checks(kube, namespace, checks):
                    checks.append(await self._quota_check(kube, namespace))
                    if any(s.autoscaling is not None for s in self.config.services.values()):
                        checks.append(await self._metrics_check(kube))
                    checks.extend(await self._permission_checks(kube, namespace))
        checks.append(self._secrets_check())
        return checks

    async def _namespace_checks(self, kube: KubeClient, namespace: str, checks: list[Check]) -> bool:
        """The cluster answers and the namespace is Active; False when nothing more can be checked."""
        where = f"context {self.environment.cluster or '(current)'}"
        try:
            found = await kube.get("v1", "Namespace", namespace)
        except TemporaryError as exc:
            checks.append(Check("cluster", False, f"{where}: {exc}"))
            return False
        except PermanentError as exc:
            checks.append(Check("cluster", True, f"{where} answers"))
            checks.append(Check("namespace", False, str(exc)))
            return False
        checks.append(Check("cluster", True, f"{where} answers"))
        if found is None:
            checks.append(Check("namespace", False, f"{namespace} does not exist; run environment-manager "
                                f"--prepare --environment {self.name}"))
            return False
        phase = (found.get("status") or {}).get("phase")
        if phase == "Terminating":
            checks.append(Check("namespace", True, f"{namespace} is Terminating (being deleted; its finalizers "
                                "hold it until it is empty): nothing more checked; run environment-manager "
                                f"--prepare --environment {self.name} once it is gone", warning=True))
            return False
        checks.append(Check("namespace", phase == "Active", f"{namespace} is {phase or 'without a phase'}"))
        if phase == "Active" and router_of(self.environment) == "istio":
            checks.append(await self._mesh_check(kube, found))
        if phase == "Active":
            checks.append(await self._reachability_check(kube, namespace))
        return phase == "Active"

    async def _reachability_check(self, kube: KubeClient, namespace: str) -> Check:
        """The namespace's NetworkPolicies let in what the config implies (kube.environment.blocked_flows)."""
        try:
            policies = await kube.list("networking.k8s.io/v1", "NetworkPolicy", namespace=namespace)
            sources: dict[str, dict[str, str]] = {}
            for _, peer in implied_flows(self.environment):
                if peer.namespace and peer.namespace not in sources:
                    found = await kube.get("v1", "Namespace", peer.namespace)
                    if found is not None:
                        sources[peer.namespace] = dict((found.get("metadata") or {}).get("labels") or {})
        except (TemporaryError, PermanentError) as exc:
            return Check("reachability", False, str(exc))
        problems = blocked_flows(self.config, self.environment, policies, sources)
        if problems:
            return Check("reachability", False, "; ".join(problems))
        flows = ", ".join(what for what, _ in implied_flows(self.environment)) or "nothing outside the namespace"
        return Check("reachability", True, f"NetworkPolicies admit {flows}")

    async def _mesh_check(self, kube: KubeClient, namespace_obj: dict[str, Any]) -> Check:
        """The pods would be in the Istio mesh (kube.environment.mesh_problem)."""
        cni = False
        for where in ISTIO_CNI_NAMESPACES:
            try:
                cni = cni or await kube.get("apps/v1", "DaemonSet", ISTIO_CNI, where) is not None
            except (TemporaryError, PermanentError):
                continue  # not readable there: counted as absent, and the message says what to do
        problem = mesh_problem(self.config, self.environment, namespace_obj, cni)
        mode = self.environment.istio.mode
        return Check("mesh", problem is None, problem or f"pods join the Istio mesh ({mode})")

    async def _quota_check(self, kube: KubeClient, namespace: str) -> Check:
        try:
            quotas = await kube.list("v1", "ResourceQuota", namespace=namespace)
        except (TemporaryError, PermanentError) as exc:
            return Check("quota", False, str(exc))
        if not quotas:
            return Check("quota", True, f"no ResourceQuota in {namespace}: nothing limits the next deployment")
        peaks = [peak_of(self.config, name, settings) for name, settings in self.config.services.items()]
        if not peaks:
            return Check("quota", True, "no services configured")
        problems: list[str] = []
        notes: list[str] = []
        for quota in quotas:
            problems += _quota_problems(quota, peaks, self.config, notes)
        hungriest = max(peaks, key=lambda p: p.extra_pods * p.cpu)
        peak = (f"the next deployment at its peak ({hungriest.service}, {hungriest.strategy}: "
                f"{hungriest.extra_pods} more pods of {hungriest.cpu:g} cpu / {hungriest.memory:g}Mi)")
        if problems:
            return Check("quota", False, f"no room for {peak}: " + "; ".join(problems))
        detail = f"room for {peak} in {len(quotas)} ResourceQuota(s)"
        return Check("quota", True, detail + (f" ({'; '.join(notes)})" if notes else ""))

    async def _metrics_check(self, kube: KubeClient) -> Check:
        """With `autoscaling`, the resource metrics API the autoscalers read CPU from is served
        (metrics-server registers APIService v1beta1.metrics.k8s.io) and Available."""
        try:
            found = await kube.get("apiregistration.k8s.io/v1", "APIService", METRICS_API)
        except (TemporaryError, PermanentError) as exc:
            return Check("metrics", False, str(exc))
        if found is None:
            return Check("metrics", False, f"no APIService {METRICS_API}: the autoscalers would have no CPU "
                         "metrics to scale on; install metrics-server")
        available = next((c for c in (found.get("status") or {}).get("conditions") or []
                          if c.get("type") == "Available"), None)
        if available is None or available.get("status") != "True":
            why = (available or {}).get("message") or (available or {}).get("reason") or "no Available condition"
            return Check("metrics", False, f"APIService {METRICS_API} is not Available ({why}): the autoscalers "
                         "would have no CPU metrics to scale on")
        return Check("metrics", True, f"APIService {METRICS_API} is Available: the autoscalers can read CPU")

    async def _permission_checks(self, kube: KubeClient, namespace: str) -> list[Check]:
        """Every verb of the deployer's Role, asked of the cluster for the deployer's ServiceAccount
        (SubjectAccessReview): one check naming whatever it may not do."""
        user = deployer_user(self.environment)
        account = f"ServiceAccount {namespace}/{DEPLOYER}"
        denied: list[str] = []
        asked = 0
        try:
            for rule in deployer_rules(self.environment, self.config):
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        label = f"{resource}.{group}" if group else resource
                        for verb in rule["verbs"]:
                            asked += 1
                            if not await kube.can_i(verb, resource, group=group, namespace=namespace, user=user):
                                denied.append(f"{verb} {label}")
        except (TemporaryError, PermanentError) as exc:
            return [Check("permissions", False, f"cannot ask what {account} may do: {exc}")]
        if denied:
            return [Check("permissions", False, f"{account} may not {', '.join(denied)} in {namespace}; run "
                          f"environment-manager --prepare --environment {self.name} to apply its Role and RoleBinding")]
        return [Check("permissions", True, f"{account} may do all {asked} things a deployment needs in {namespace}")]

    def _secrets_check(self) -> Check:
        wanted = self.secret_names()
        try:
            found = load_secrets(self.root, self.name, wanted)
        except ConfigError as exc:
            return Check("secrets", False, str(exc))
        return Check("secrets", True, f"{len(found)} of {len(wanted)} present and private in "
                     f"{secrets_dir(self.root, self.name)}")

    # ------------------------------------------------------------ cleanup

    async def cleanup(self, *, force: bool) -> list[Check]:
        namespace = namespace_of(self.environment)
        if self.environment.type is EnvironmentType.PRODUCTION and not force:
            raise ConflictError(f"environment {self.name!r} is production: cleanup needs --force")
        active = self.store.list_deployments(environment=self.name, active_only=True, limit=10)
        if active:
            names = ", ".join(f"{d.service} {d.version} ({d.id})" for d in active)
            raise ConflictError(f"environment {self.name!r} has deployments in progress ({names}); cancel them "
                                "with `deployment-engine --cancel` first")
        checks: list[Check] = []
        kube = await self._client(checks)
        if kube is None:
            return checks
        selector = managed_selector(self.environment)
        kinds = _ROUTER_KINDS.get(router_of(self.environment), []) + _CLEANUP_KINDS
        async with kube:
            for api_version, kind in kinds:
                try:
                    found = await kube.list(api_version, kind, namespace=namespace, labels=selector)
                    for obj in found:
                        await kube.delete(api_version, kind, obj["metadata"]["name"], namespace=namespace)
                except (TemporaryError, PermanentError) as exc:
                    checks.append(Check(f"{kind} objects", False, str(exc)))
                    checks.append(Check("cleanup", False, "stopped; run --cleanup again once the cause is fixed"))
                    return checks
                if found:
                    names = ", ".join(sorted(o["metadata"]["name"] for o in found))
                    checks.append(Check(f"{kind} objects", True, f"{len(found)} deleted ({names})"))
            checks.append(await _cleanup_namespace(kube, namespace))
        self.store.forget_environment(self.name)
        checks.append(Check("store", True, f"prepared state of {self.name} dropped"))
        checks.append(Check("history", True, f"deployments, rollbacks and events of {self.name} kept"))
        return checks


async def _cleanup_namespace(kube: KubeClient, namespace: str) -> Check:
    try:
        found = await kube.get("v1", "Namespace", namespace)
        if found is None:
            return Check("namespace", True, f"{namespace} is not there")
        labels = (found.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            return Check("namespace", True, f"{namespace} kept: safeship did not create it")
        await kube.delete("v1", "Namespace", namespace)
    except (TemporaryError, PermanentError) as exc:
        return Check("namespace", False, str(exc))
    return Check("namespace", True, f"{namespace} deleted (safeship created it)")


def _psa(namespace: dict[str, Any]) -> str:
    return str(namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce", "unset"))


def _applied_detail(obj: dict[str, Any]) -> str:
    if obj["kind"] == "Secret":  # key names only: a value is never shown
        keys = sorted(obj.get("data") or obj.get("stringData") or {})
        return f"applied ({len(keys)} keys: {', '.join(keys)})"
    if obj["kind"] == "ConfigMap":
        return f"applied ({len(obj.get('data') or {})} keys)"
    return "applied"


_QUOTA_RESOURCES = {
    "requests.cpu": ("cpu", parse_cpu),
    "cpu": ("cpu", parse_cpu),
    "requests.memory": ("memory", parse_memory_mb),
    "memory": ("memory", parse_memory_mb),
    "limits.cpu": ("limit_cpu", parse_cpu),
    "limits.memory": ("limit_memory", parse_memory_mb),
}


def _quota_problems(quota: dict[str, Any], peaks: list[Peak], config: SafeshipConfig, notes: list[str]) -> list[str]:
    """What one ResourceQuota cannot hold: what is used now (its status, else every service at
    full replicas) plus the hungriest next deployment."""
    name = quota.get("metadata", {}).get("name", "?")
    status = quota.get("status") or {}
    hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
    used = status.get("used")
    if used is None:
        notes.append(f"{name} reports no usage yet: every service counted at full replicas")
    problems: list[str] = []
    for resource, (field, parse) in _QUOTA_RESOURCES.items():
        if resource not in hard:
            continue
        try:
            limit = parse(hard[resource])
            if used is not None:
                now = parse(used.get(resource, 0))
            else:
                now = sum(config.services[p.service].replicas * getattr(p, field) for p in peaks)
        except ValueError as exc:
            problems.append(f"{name} {resource}: {exc}")
            continue
        need = max(p.extra_pods * getattr(p, field) for p in peaks)
        if now + need > limit + 1e-9:
            unit = "" if "cpu" in resource else "Mi"
            problems.append(f"{name} {resource}: {_shown(now)}{unit} used + {_shown(need)}{unit} needed > "
                            f"{_shown(limit)}{unit}")
    return problems


def _shown(value: float) -> str:
    return f"{value:g}" if math.isfinite(value) else str(value)


# ---------------------------------------------------------------- sync entry points


def run(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run one of the async verbs to its end from synchronous code (the command line)."""
    async def main() -> _T:
        return await work()

    return asyncio.run(main())
