"""The Kubernetes objects of a service's workload, built as plain dicts (no client, no cluster).

Pure functions: the Kubernetes platform and its routers apply what these build, and `--render`
prints it. Naming and labelling rules, in one place:

- every object carries `app.kubernetes.io/name: <service>`, `app.kubernetes.io/managed-by:
  safeship`, `app.kubernetes.io/part-of: safeship` and `safeship.io/environment: <environment>`;
  objects of one version add `app.kubernetes.io/version: <version label>`;
- a version's Deployment (and its PodDisruptionBudget) is `<service>-<version, cleaned>-<hash>`
  (DNS-1123, `user-service-v1-3-0-af3ff44c`), the hash being 8 hex digits of the exact service
  and version, so that no two versions or services share one (`v1.3.0` and `v1-3-0`; `api` at
  `v2-1` and `api-v2` at `1`);
  its pods are selected by the service and version labels, and the exact version is kept in the
  `safeship.io/version` annotation (a label value cannot hold every version: `+` and more than 63
  characters). A version label or slug that had to differ from the version carries a hash of the
  exact version too, so that each maps one version only;
- Services: `<service>` (stable / active), `<service>-canary` (the second backend of the
  gateway-api HTTPRoute) and `<service>-preview` (the new colour of a blue-green deployment);
- secrets reach the pods as `secretKeyRef`s into the Secret `secret_name(service)` (the
  environment manager writes it from the secret files), never as values;
- volumes mount the PersistentVolumeClaim `pvc_name(service, volume)`;
- HTTPRoute `<service>` (Gateway API v1) splits between `<service>` and `<service>-canary`, and
  so does the Istio VirtualService `<service>`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safeship.config.kubernetes import LABEL_MAX as _LABEL_MAX
from safeship.config.kubernetes import digest as _digest
from safeship.config.kubernetes import version_label, version_slug
from safeship.config.models import (
    DeploymentStrategy,
    Environment,
    HealthCheckFailureTrigger,
    ProbeConfig,
    SafeshipConfig,
    ServiceConfig,
)

Obj = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "app.kubernetes.io/version"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
ENVIRONMENT_LABEL = "safeship.io/environment"
MANAGED_BY = "safeship"
VERSION_ANNOTATION = "safeship.io/version"
# When safeship last scaled a Deployment up from 0 (RFC 3339): a progress deadline reported before
# then belongs to an earlier attempt of the version.
SCALED_UP_ANNOTATION = "safeship.io/scaled-up-at"

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API = "gateway.networking.k8s.io/v1"
ISTIO_API = "networking.istio.io/v1"
ROUTERS = ("replicas", "gateway-api", "istio")  # the cluster routers these objects serve
DEFAULT_ROUTER = "replicas"
CONTAINER = "app"  # the container's name in every pod
PORT_NAME = "http"



# ---------------------------------------------------------------- names and labels


def slug(text: str, limit: int = _LABEL_MAX) -> str:
    """`text` as a DNS-1123 label of at most `limit` characters: lowercase, every run of other
    characters replaced by `-`, no `-` at either end; cut to length with a short hash of the whole
    text, so that two long names that share a prefix stay apart."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
    if len(cleaned) <= limit:
        return cleaned
    head = cleaned[: limit - 9].rstrip("-")
    return f"{head}-{_digest(text)}"


def labels(service: str, version: str | None = None, environment: str | None = None) -> dict[str, str]:
    """The labels of every object safeship applies for `service` (and `version`, when the object
    belongs to one version; `environment`, when known)."""
    result = {NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: MANAGED_BY}
    if environment is not None:
        result[ENVIRONMENT_LABEL] = slug(environment)
    if version is not None:
        result[VERSION_LABEL] = version_label(version)
    return result


def selector(service: str, version: str | None = None) -> dict[str, str]:
    """The pod selector of `service` (of one version, when given)."""
    result = {NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY}
    if version is not None:
        result[VERSION_LABEL] = version_label(version)
    return result


def deployment_name(service: str, version: str) -> str:
    """`<service>-<version slug>-<hash of service and version>`, a DNS-1123 label of at most 63
    characters; two different (service, version) pairs never share it (up to the 32-bit hash)."""
    head = slug(f"{service}-{version}", _LABEL_MAX - 9)
    return f"{head}-{_digest(f'{service}/{version}')}"


def stable_service_name(service: str) -> str:
    return service


def canary_service_name(service: str) -> str:
    return slug(f"{service}-canary")


def preview_service_name(service: str) -> str:
    return slug(f"{service}-preview")


def secret_name(service: str) -> str:
    """The Secret holding `service`'s secret values, one key per `services.<name>.secrets` entry."""
    return service


def pvc_name(service: str, volume: str) -> str:
    """The PersistentVolumeClaim of one of `service`'s volumes."""
    return slug(f"{service}-{volume}")


def subset_name(version: str) -> str:
    """The Istio DestinationRule subset of `version` (its slug: one per version)."""
    return version_slug(version)


def _metadata(name: str, namespace: str, object_labels: Mapping[str, str],
              annotations: Mapping[str, str] | None = None, owner: Mapping[str, Any] | None = None) -> Obj:
    """An object's metadata; `owner` (an ownerReference, such as the Release an operator rolls
    out) makes Kubernetes' garbage collector delete the object with its owner."""
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(object_labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


# ---------------------------------------------------------------- quantities


def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes quantity in millicores (`0.1` -> `100m`); at least `1m`."""
    return f"{max(1, round(cores * 1000))}m"


def memory_quantity(megabytes: float) -> str:
    """MiB as a Kubernetes quantity (`128` -> `128Mi`); at least `1Mi`."""
    return f"{max(1, math.ceil(megabytes))}Mi"


def _seconds(value: float, minimum: int = 1) -> int:
    return max(minimum, math.ceil(value))


# ---------------------------------------------------------------- pods


def probe(config: ProbeConfig, port: int, *, liveness: bool) -> Obj:
    """A container probe from one of the seed's health checks. Kubernetes requires
    successThreshold 1 for liveness probes."""
    result: Obj
    if config.type == "http":
        result = {"httpGet": {"path": config.path or "/", "port": port}}
    elif config.type == "tcp":
        result = {"tcpSocket": {"port": port}}
    else:
        result = {"exec": {"command": list(config.command)}}
    result.update(
        periodSeconds=_seconds(config.interval),
        timeoutSeconds=_seconds(config.timeout),
        failureThreshold=config.failure_threshold,
        successThreshold=1 if liveness else config.success_threshold,
        initialDelaySeconds=_seconds(config.initial_delay, minimum=0),
    )
    return result


def _env(config: SafeshipConfig, environment: Environment, service: str, version: str) -> list[Obj]:
    settings = config.services[service]
    plain = dict(environment.variables)
    plain.update(settings.env)
    plain.update({"SAFESHIP_SERVICE": service, "SAFESHIP_ENVIRONMENT": environment.name, "SAFESHIP_VERSION": version})
    result: list[Obj] = [{"name": name, "value": value} for name, value in sorted(plain.items())]
    result += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(service), "key": name}}}
        for name in sorted(set(settings.secrets)) if name not in plain
    ]
    return result


def image_for(settings: ServiceConfig, service: str, version: str) -> str:
    """The service's image with `{version}` replaced; without an `image`, `<service>:<version>`."""
    template = settings.image or f"{service}:{{version}}"
    return template.replace("{version}", version)


def container(config: SafeshipConfig, environment: Environment, service: str, version: str) -> Obj:
    settings = config.services[service]
    health = config.health_checks_for(service)
    port = settings.container_port
    limits = settings.limits or settings.resources
    result: Obj = {
        "name": CONTAINER,
        "image": image_for(settings, service, version),
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "env": _env(config, environment, service, version),
        "resources": {
            "requests": {"cpu": cpu_quantity(settings.resources.cpu),
                         "memory": memory_quantity(settings.resources.memory)},
            "limits": {"cpu": cpu_quantity(limits.cpu), "memory": memory_quantity(limits.memory)},
        },
        "readinessProbe": probe(health.readiness, port, liveness=False),
        "livenessProbe": probe(health.liveness, port, liveness=True),
        # What Pod Security Admission's "restricted" level (the seed's policy) asks of a container.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if settings.command:
        # `{port}` and `{version}` as the local platform fills them; other placeholders stay.
        result["args"] = [part.replace("{port}", str(port)).replace("{version}", version) for part in settings.command]
    if settings.volumes:
        result["volumeMounts"] = [{"name": slug(v.name), "mountPath": v.mount_path} for v in settings.volumes]
    if settings.pod.pre_stop_sleep > 0:
        # Endpoints, kube-proxy and routers learn of a terminating pod a little after the kubelet
        # does: the container keeps serving this long before it gets SIGTERM.
        result["lifecycle"] = {"preStop": {"sleep": {"seconds": _seconds(settings.pod.pre_stop_sleep)}}}
    return result


def pod_template(config: SafeshipConfig, environment: Environment, service: str, version: str) -> Obj:
    settings = config.services[service]
    spec: Obj = {
        "containers": [container(config, environment, service, version)],
        "terminationGracePeriodSeconds": _seconds(settings.grace_period, minimum=0),
    }
    # "restricted" also asks the pod to run as non-root under the runtime's default seccomp profile.
    # runAsNonRoot alone needs a numeric USER in the image (the kubelet cannot tell whether a user
    # name is root), so the UID is written whenever the config gives one.
    security: Obj = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    uid = settings.pod.run_as_user
    if uid is None and environment.run_as_user is not None and environment.run_as_user.isdigit():
        uid = int(environment.run_as_user)
    if uid is not None:
        security.update(runAsUser=uid, runAsNonRoot=uid != 0)
    spec["securityContext"] = security
    if settings.volumes:
        spec["volumes"] = [
            {"name": slug(v.name), "persistentVolumeClaim": {"claimName": pvc_name(service, v.name)}}
            for v in settings.volumes
        ]
    pod = settings.pod
    if pod.service_account:
        spec["serviceAccountName"] = pod.service_account
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in pod.image_pull_secrets]
    if pod.affinity:
        spec["affinity"] = copy.deepcopy(pod.affinity)
    if pod.tolerations:
        spec["tolerations"] = copy.deepcopy(pod.tolerations)
    if pod.topology_spread_constraints:
        spec["topologySpreadConstraints"] = [
            {"labelSelector": {"matchLabels": selector(service, version)}, **copy.deepcopy(constraint)}
            for constraint in pod.topology_spread_constraints
        ]
    return {
        "metadata": {"labels": labels(service, version, environment.name),
                     "annotations": {**pod.annotations, VERSION_ANNOTATION: version}},
        "spec": spec,
    }


def progress_deadline(config: SafeshipConfig, service: str) -> int:
    """`progressDeadlineSeconds`: the readiness time a deployment allows (the
    health_check_failure trigger's timeout, else blue_green.health_check_timeout)."""
    triggers = config.rollback_for(service).triggers
    found = [t.timeout for t in triggers if isinstance(t, HealthCheckFailureTrigger)]
    timeout = found[0] if found else config.intelligent_deployment.strategies.blue_green.health_check_timeout
    return _seconds(timeout)


def deployment(config: SafeshipConfig, environment: Environment, service: str, version: str, *,
               replicas: int, strategy: DeploymentStrategy | str = DeploymentStrategy.ROLLING,
               owner: Mapping[str, Any] | None = None) -> Obj:
    """The Deployment of one version: `replicas` pods of the service's template. Its own update
    strategy is Recreate for the recreate strategy, else RollingUpdate with the configured
    max_surge / max_unavailable."""
    kind = _strategy(strategy)
    rolling = config.intelligent_deployment.strategies.rolling
    update: Obj = ({"type": "Recreate"} if kind is DeploymentStrategy.RECREATE else
                   {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": rolling.max_surge, "maxUnavailable": rolling.max_unavailable}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(deployment_name(service, version), environment.kube_namespace,
                              labels(service, version, environment.name), {VERSION_ANNOTATION: version}, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(service, version)},
            "template": pod_template(config, environment, service, version),
            "strategy": update,
            "progressDeadlineSeconds": progress_deadline(config, service),
            "revisionHistoryLimit": 5,
        },
    }


def disruption_budget(config: SafeshipConfig, environment: Environment, service: str, version: str, *,
                      owner: Mapping[str, Any] | None = None) -> Obj | None:
    """The PodDisruptionBudget of one version (named as its Deployment, over its pods), with
    `services.<name>.pod.min_available`; None when that is not set."""
    wanted = config.services[service].pod.min_available
    if wanted is None:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(deployment_name(service, version), environment.kube_namespace,
                              labels(service, version, environment.name), {VERSION_ANNOTATION: version}, owner),
        "spec": {"minAvailable": wanted, "selector": {"matchLabels": selector(service, version)}},
    }


def autoscaler(config: SafeshipConfig, environment: Environment, service: str, version: str, *,
               owner: Mapping[str, Any] | None = None) -> Obj | None:
    """The HorizontalPodAutoscaler of one version (named as its Deployment, targeting it), from
    `services.<name>.autoscaling`; None when that is not set. Each version has its own, since each
    has its own Deployment: the platform applies it while the version has pods and deletes it when
    the version is scaled to 0."""
    scaling = config.services[service].autoscaling
    if scaling is None:
        return None
    name = deployment_name(service, version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, environment.kube_namespace, labels(service, version, environment.name),
                              {VERSION_ANNOTATION: version}, owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu}}}],
        },
    }


# ---------------------------------------------------------------- Services


def service_object(config: SafeshipConfig, environment: Environment, service: str, name: str,
                   version: str | None, *, owner: Mapping[str, Any] | None = None) -> Obj:
    """A ClusterIP Service `name` over the pods of `service` (of `version` only, when given)."""
    port = config.services[service].container_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, environment.kube_namespace, labels(service, None, environment.name),
                              {VERSION_ANNOTATION: version} if version is not None else None, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(service, version),
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


# ---------------------------------------------------------------- routers' objects


DEFAULT_MATCHES: tuple[Obj, ...] = ({"path": {"type": "PathPrefix", "value": "/"}},)


def _filled(value: Any, service: str) -> Any:
    """`value` with `{service}` replaced in every string inside it."""
    if isinstance(value, str):
        return value.replace("{service}", service)
    if isinstance(value, Mapping):
        return {k: _filled(v, service) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, service) for v in value]
    return value


def route_hostnames(environment: Environment, service: str) -> list[str]:
    """The hostnames of `service`'s HTTPRoute: `gateway.hostnames`, `{service}` filled in."""
    gateway = environment.gateway
    return [_filled(h, service) for h in gateway.hostnames] if gateway is not None else []


def route_matches(environment: Environment, service: str) -> list[Obj]:
    """The matches of safeship's rule: `gateway.matches`, `{service}` filled in (default `PathPrefix /`)."""
    gateway = environment.gateway
    given = gateway.matches if gateway is not None and gateway.matches else DEFAULT_MATCHES
    return [_filled(copy.deepcopy(dict(m)), service) for m in given]


def route_rule(config: SafeshipConfig, environment: Environment, service: str, *, stable_weight: int,
               canary_weight: int) -> Obj:
    """safeship's rule of `service`'s HTTPRoute: the configured matches, to `<service>` and
    `<service>-canary` with their weights."""
    port = config.services[service].container_port
    refs = [
        {"group": "", "kind": "Service", "name": stable_service_name(service), "port": port, "weight": stable_weight},
        {"group": "", "kind": "Service", "name": canary_service_name(service), "port": port, "weight": canary_weight},
    ]
    return {"matches": route_matches(environment, service), "backendRefs": refs}


def is_own_rule(rule: Mapping[str, Any], service: str) -> bool:
    """Whether an HTTPRoute rule is safeship's: its backends are `<service>` and `<service>-canary`
    (a rule added by hand names other backends, or none)."""
    names = {str(ref.get("name")) for ref in rule.get("backendRefs") or [] if ref.get("kind", "Service") == "Service"}
    return names == {stable_service_name(service), canary_service_name(service)}


def http_route(config: SafeshipConfig, environment: Environment, service: str, *, stable_weight: int,
               canary_weight: int, owner: Mapping[str, Any] | None = None) -> Obj:
    """The HTTPRoute `<service>`: attached to `environment.gateway`, with its hostnames, and one
    rule (safeship's, `route_rule`) splitting between the stable and the canary Service by weight.
    Once it exists, the router changes only that rule (`merged_rules`): rules and filters added by
    hand stay."""
    gateway = environment.gateway
    if gateway is None:
        raise ValueError(f"environment {environment.name!r} names no gateway for its HTTPRoute")
    parent: Obj = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    spec: Obj = {"parentRefs": [parent]}
    hostnames = route_hostnames(environment, service)
    if hostnames:
        spec["hostnames"] = hostnames
    spec["rules"] = [route_rule(config, environment, service, stable_weight=stable_weight,
                                canary_weight=canary_weight)]
    return {
        "apiVersion": HTTPROUTE_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(service, environment.kube_namespace, labels(service, None, environment.name),
                              owner=owner),
        "spec": spec,
    }


def merged_rules(current: Sequence[Mapping[str, Any]], own: Mapping[str, Any], service: str) -> list[Obj]:
    """The rules of an HTTPRoute after safeship's rule changes to `own`: the first rule that is
    safeship's (`is_own_rule`) gets `own`'s matches and backends' weights, keeping every other key
    of it and of its backends (filters, timeouts); further copies of it are dropped; every other
    rule stays as it is, in its place. Without one, `own` is added last."""
    result: list[Obj] = []
    placed = False
    wanted = {str(ref["name"]): ref for ref in own["backendRefs"]}
    for rule in current:
        if not is_own_rule(rule, service):
            result.append(copy.deepcopy(dict(rule)))
            continue
        if placed:
            continue
        merged = copy.deepcopy(dict(rule))
        merged["matches"] = copy.deepcopy(own["matches"])
        refs = []
        for ref in rule.get("backendRefs") or []:
            kept = copy.deepcopy(dict(ref))
            if str(ref.get("name")) in wanted:
                kept.update(copy.deepcopy(wanted[str(ref.get("name"))]))
            refs.append(kept)
        merged["backendRefs"] = refs
        result.append(merged)
        placed = True
    if not placed:
        result.append(copy.deepcopy(dict(own)))
    return result


def destination_rule(environment: Environment, service: str, versions: Sequence[str]) -> Obj:
    """An Istio DestinationRule `<service>` with one subset per version, selected by its version
    label: not applied by the istio router (its VirtualService weighs per-version Services), kept
    for a mesh policy that wants subsets."""
    seen: dict[str, str] = {}
    for version in versions:
        seen.setdefault(subset_name(version), version)
    return {
        "apiVersion": ISTIO_API,
        "kind": "DestinationRule",
        "metadata": _metadata(service, environment.kube_namespace, labels(service, None, environment.name)),
        "spec": {
            "host": stable_service_name(service),
            "subsets": [{"name": name, "labels": {VERSION_LABEL: version_label(version)}}
                        for name, version in seen.items()],
        },
    }


ISTIO_ROUTE_NAME = "safeship"  # the VirtualService's HTTP route safeship writes


def virtual_service(config: SafeshipConfig, environment: Environment, service: str, *, stable_weight: int,
                    canary_weight: int, owner: Mapping[str, Any] | None = None) -> Obj:
    """The Istio VirtualService `<service>`: one HTTP route (`safeship`) weighing the stable and
    the canary Service (percent, summing to 100), bound to `istio.gateways` (the mesh when none)
    for the hosts `<service>` and `istio.hosts`."""
    port = config.services[service].container_port
    routes = [
        {"destination": {"host": name, "port": {"number": port}}, "weight": int(weight)}
        for name, weight in ((stable_service_name(service), stable_weight),
                             (canary_service_name(service), canary_weight))
    ]
    settings = environment.istio
    hosts = list(dict.fromkeys([stable_service_name(service),
                                *(h.replace("{service}", service) for h in settings.hosts)]))
    spec: Obj = {"hosts": hosts}
    if settings.gateways:
        spec["gateways"] = list(settings.gateways)
    spec["http"] = [{"name": ISTIO_ROUTE_NAME, "route": routes}]
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": _metadata(service, environment.kube_namespace, labels(service, None, environment.name),
                              owner=owner),
        "spec": spec,
    }


# ---------------------------------------------------------------- one deploy


def router_of(environment: Environment) -> str:
    """The cluster router the environment uses (`replicas` unless it names one)."""
    return environment.router or DEFAULT_ROUTER


def _strategy(strategy: DeploymentStrategy | str) -> DeploymentStrategy:
    return strategy if isinstance(strategy, DeploymentStrategy) else DeploymentStrategy.parse(strategy)


def first_replicas(config: SafeshipConfig, service: str, strategy: DeploymentStrategy, replicas: int,
                   previous: str | None) -> int:
    """How many pods the new version's Deployment starts with: a canary beside a running version
    starts with the share of its first step, every other deploy with all its replicas."""
    if strategy is DeploymentStrategy.CANARY and previous is not None:
        first = config.intelligent_deployment.strategies.canary.traffic_percentages[0]
        return replicas if first >= 100 else max(1, math.ceil(replicas * first / 100))
    return replicas


def workload_objects(config: SafeshipConfig, environment: Environment, service: str, version: str,
                     strategy: DeploymentStrategy | str, *, previous: str | None = None,
                     replicas: int | None = None) -> list[Obj]:
    """Every object a deploy of `version` with `strategy` applies at its start, in apply order:
    the Services, the new version's Deployment (and PodDisruptionBudget), then the router's
    objects with all traffic still on `previous` (or on `version` for a first deployment).
    `previous` is the version being replaced; its own Deployment already runs and is not applied
    again.

    By router (`environment.router`):
    - `replicas` (default): `<service>` selects every version's pods (traffic follows the ready
      pods); for blue-green it selects the active colour only, and `<service>-preview` the new one;
    - `gateway-api`: `<service>` (stable) and `<service>-canary` each select one version, and the
      HTTPRoute splits between them (`<service>-preview` too for blue-green);
    - `istio`: as gateway-api, with a VirtualService weighing the two Services
      (`<service>-preview` too for blue-green).
    """
    if service not in config.services:
        raise ValueError(f"service {service!r} is not configured")
    kind = _strategy(strategy)
    router = router_of(environment)
    count = config.services[service].replicas if replicas is None else replicas
    active = previous if previous is not None else version
    objects: list[Obj] = []

    if router in ("gateway-api", "istio"):
        objects.append(service_object(config, environment, service, stable_service_name(service), active))
        objects.append(service_object(config, environment, service, canary_service_name(service), version))
    elif router == "replicas" and kind is DeploymentStrategy.BLUE_GREEN:
        objects.append(service_object(config, environment, service, stable_service_name(service), active))
    else:
        objects.append(service_object(config, environment, service, stable_service_name(service), None))
    if kind is DeploymentStrategy.BLUE_GREEN:
        objects.append(service_object(config, environment, service, preview_service_name(service), version))

    objects.append(deployment(config, environment, service, version,
                              replicas=first_replicas(config, service, kind, count, previous), strategy=kind))
    budget = disruption_budget(config, environment, service, version)
    if budget is not None:
        objects.append(budget)
    scaler = autoscaler(config, environment, service, version)
    if scaler is not None:
        objects.append(scaler)

    if router == "gateway-api":
        objects.append(http_route(config, environment, service, stable_weight=100, canary_weight=0))
    elif router == "istio":
        objects.append(virtual_service(config, environment, service, stable_weight=100, canary_weight=0))
    return objects


# ---------------------------------------------------------------- reading what the cluster reports


def object_version(obj: Mapping[str, Any]) -> str | None:
    """The exact version an object (a pod, a Deployment, a Service that selects one version)
    belongs to: its `safeship.io/version` annotation, else its version label or selector."""
    meta = obj.get("metadata") or {}
    found = (meta.get("annotations") or {}).get(VERSION_ANNOTATION)
    if isinstance(found, str) and found:
        return found
    label = (meta.get("labels") or {}).get(VERSION_LABEL)
    if isinstance(label, str) and label:
        return label
    chosen = ((obj.get("spec") or {}).get("selector") or {})
    value = chosen.get(VERSION_LABEL) if isinstance(chosen, Mapping) else None
    return value if isinstance(value, str) and value else None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def pod_terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """A pod that Services send traffic to: condition Ready True and not terminating."""
    if pod_terminating(pod):
        return False
    ready = _condition(pod.get("status") or {}, "Ready")
    return ready is not None and ready.get("status") == "True"


PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
FAILED_CREATE = "FailedCreate"  # the ReplicaFailure condition's reason: the API server refused a pod
# Refusals no retry of the same pod template gets past (Pod Security admission; a quota asking for
# a request the template does not name), unlike an exceeded quota.
PERMANENT_REFUSALS = ("violates PodSecurity", "failed quota:")


@dataclass(frozen=True)
class Rollout:
    """A Deployment's progress as its controller reports it.

    observed: the controller has seen the current spec (observedGeneration >= generation);
    complete: observed, and every wanted pod is updated and available;
    failed:   the Progressing condition says ProgressDeadlineExceeded (Kubernetes stops there and
              rolls nothing back: safeship decides), or the ReplicaFailure condition says the API
              server refused its pods for good (Pod Security, a quota's "must specify": no retry
              admits that template); `reason` says which. An exceeded quota is only `refusal`
              until the deadline, since a quota may free up;
    """

    wanted: int
    updated: int
    ready: int
    available: int
    observed: bool
    complete: bool
    failed: bool
    message: str = ""
    failed_at: str = ""  # the Progressing condition's lastUpdateTime (else lastTransitionTime) when failed
    reason: str = ""  # PROGRESS_DEADLINE_EXCEEDED or FAILED_CREATE when failed
    refusal: str = ""  # "FailedCreate: <the API server's message>" while pods are refused (ReplicaFailure)


def rollout(deployment_obj: Mapping[str, Any]) -> Rollout:
    """Read a Deployment's progress from observedGeneration, updatedReplicas, availableReplicas
    and the Progressing condition."""
    meta = deployment_obj.get("metadata") or {}
    spec = deployment_obj.get("spec") or {}
    status = deployment_obj.get("status") or {}
    wanted = int(spec.get("replicas", 1) or 0)
    generation = int(meta.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0) >= generation and "observedGeneration" in status
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    progressing = _condition(status, "Progressing")
    failed = bool(progressing is not None and progressing.get("status") == "False"
                  and progressing.get("reason") == PROGRESS_DEADLINE_EXCEEDED)
    message = str(progressing.get("message") or "") if progressing is not None else ""
    failed_at = ""
    if failed and progressing is not None:
        failed_at = str(progressing.get("lastUpdateTime") or progressing.get("lastTransitionTime") or "")
    reason = PROGRESS_DEADLINE_EXCEEDED if failed else ""
    refused = _condition(status, "ReplicaFailure")
    refusal = ""
    if refused is not None and refused.get("status") == "True" and wanted > total:
        refusal = f"{refused.get('reason') or FAILED_CREATE}: {refused.get('message') or ''}"
        # Kubernetes keeps retrying (ReplicaFailure is no verdict; the progress deadline is): a quota
        # may free up. A pod template that Pod Security refuses, or that names no request a quota
        # asks for, never gets in: that is failed now.
        text = str(refused.get("message") or "")
        if not failed and any(words in text for words in PERMANENT_REFUSALS):
            failed, reason, message = True, FAILED_CREATE, refusal
            failed_at = str(refused.get("lastUpdateTime") or refused.get("lastTransitionTime") or "")
    complete = observed and updated >= wanted and available >= wanted and total <= wanted and not failed
    return Rollout(wanted, updated, ready, available, observed, complete, failed, message, failed_at, reason,
                   refusal)
