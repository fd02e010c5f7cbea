"""The Kubernetes objects of an environment, built as plain dicts (no client, no cluster).

Pure functions: `environments.kubernetes` applies what these build for `environment-manager
--prepare`, and `--render` prints it. `environment_objects` returns them in apply order:

1. the Namespace, with Pod Security Admission labels (see below) and, for router istio, the
   mesh's label (`istio-injection: enabled`, or `istio.io/dataplane-mode: ambient` with
   `istio.mode: ambient`);
2. a ResourceQuota `safeship-quota` (requests.* and limits.* from `resource_quotas`) and a
   LimitRange `safeship-limits` (default requests and limits per container, so that every pod
   counts against the quota even when it names no resources);
3. the deployer's ServiceAccount, Role and RoleBinding, all `safeship-deployer`;
4. NetworkPolicies: `safeship-default-deny-ingress`, then `safeship-allow-same-namespace`,
   `safeship-allow-ingress` (from `ingress_namespace` and the gateway's data plane,
   `gateway_namespace`: by default the Gateway's namespace for gateway-api, `istio-system` for
   istio), `safeship-allow-monitoring` (from Prometheus' namespace, `monitoring_namespace`: by
   default the one in `prometheus.url`'s `<name>.<namespace>.svc` host, else `monitoring`) and,
   with `load_balancer: true`, `safeship-allow-load-balancer` (the pods' `http` port from any
   source: a LoadBalancer's traffic comes from outside the cluster);
5. ConfigMaps from `config_maps`, one per map;
6. Secrets: one per service that lists `secrets`, named as `kube.objects.secret_name` says, one key
   per secret. The values come from the caller (read from `secrets/<environment>/`); without them
   every value is `<redacted>`, which is what `--render` prints. A value is never logged here;
7. PersistentVolumeClaims for the services' `volumes`;
8. with `load_balancer: true`, a Service `<service>-lb` of type LoadBalancer per service, over the
   service's ready pods on port 80.

Every object is labelled `app.kubernetes.io/managed-by: safeship` (what `--cleanup` deletes by)
and `safeship.io/environment: <environment>`.

**Pod security.** The seed names a PodSecurityPolicy. PodSecurityPolicy was removed in Kubernetes
1.25; its successor is Pod Security Admission, which enforces one of three levels per namespace
through labels, plus RBAC Roles for what a user may do. safeship maps the seed's policies onto
them:

- a policy of type `PodSecurityPolicy` (or `PodSecurity`, `psa`, `pod-security`) sets the level
  `pod-security.kubernetes.io/enforce` of every environment: the first of `privileged`,
  `baseline` or `restricted` named in its rules' `resourceNames`, else in its `name`, else
  `restricted`. Its rules themselves (`use` on `podsecuritypolicies`) have no meaning any more and
  are not copied into a Role;
- without such a policy the level follows the environment's type: `restricted` for production and
  staging, `baseline` for development and testing;
- `audit` and `warn` are always `restricted`, so that what a stricter level would refuse is
  reported even where it is not enforced. Every `-version` label is `latest`;
- policies of type `Role` or `RBAC` (any case) add their rules (apiGroups, resources, verbs,
  resourceNames) to the deployer's Role, beside what safeship itself needs (`deployer_rules`).
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from safeship.config.kubernetes import pod_security_level
from safeship.config.models import Environment, ResourceRequirements, SafeshipConfig
from safeship.errors import InputError
from safeship.kube.netpol import Peer, admits
from safeship.kube.objects import (
    ENVIRONMENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    PORT_NAME,
    cpu_quantity,
    labels,
    memory_quantity,
    pvc_name,
    router_of,
    secret_name,
    selector,
    slug,
)

Obj = dict[str, Any]

REDACTED = "<redacted>"
QUOTA_NAME = "safeship-quota"
LIMIT_RANGE_NAME = "safeship-limits"
DEPLOYER = "safeship-deployer"  # the ServiceAccount, Role and RoleBinding
DENY_POLICY = "safeship-default-deny-ingress"
SAME_NAMESPACE_POLICY = "safeship-allow-same-namespace"
INGRESS_POLICY = "safeship-allow-ingress"
MONITORING_POLICY = "safeship-allow-monitoring"
LOAD_BALANCER_POLICY = "safeship-allow-load-balancer"
DEFAULT_MONITORING_NAMESPACE = "monitoring"
ISTIO_NAMESPACE = "istio-system"
LOAD_BALANCER_PORT = 80

PSA_PREFIX = "pod-security.kubernetes.io/"
PSA_VERSION = "latest"
_RBAC_TYPES = {"role", "rbac", "clusterrole"}
_NAMESPACE_NAME = "kubernetes.io/metadata.name"  # set by the API server on every Namespace

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")



# ---------------------------------------------------------------- names and labels


def environment_labels(environment: Environment) -> dict[str, str]:
    """The labels of every object the environment manager applies."""
    return {MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: MANAGED_BY, ENVIRONMENT_LABEL: slug(environment.name)}


def managed_selector(environment: Environment) -> dict[str, str]:
    """The labels that pick out what safeship applied for `environment` (what cleanup deletes)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, ENVIRONMENT_LABEL: slug(environment.name)}


def namespace_of(environment: Environment) -> str:
    """The environment's namespace; InputError unless it is a DNS-1123 label."""
    name = environment.kube_namespace
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise InputError(f"environment {environment.name!r}: namespace {name!r} is not a Kubernetes namespace "
                         "name (a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters)")
    return name


def load_balancer_name(service: str) -> str:
    return slug(f"{service}-lb")


def _metadata(name: str, environment: Environment, extra_labels: Mapping[str, str] | None = None,
              *, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name}
    if namespaced:
        meta["namespace"] = namespace_of(environment)
    meta["labels"] = {**environment_labels(environment), **(extra_labels or {})}
    return meta


# ---------------------------------------------------------------- pod security and RBAC


def namespace(config: SafeshipConfig, environment: Environment) -> Obj:
    level = pod_security_level(config, environment)
    psa = {
        f"{PSA_PREFIX}enforce": level,
        f"{PSA_PREFIX}enforce-version": PSA_VERSION,
        f"{PSA_PREFIX}audit": "restricted",
        f"{PSA_PREFIX}audit-version": PSA_VERSION,
        f"{PSA_PREFIX}warn": "restricted",
        f"{PSA_PREFIX}warn-version": PSA_VERSION,
    }
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _metadata(namespace_of(environment), environment, {**psa, **mesh_labels(environment)},
                                  namespaced=False)}


ISTIO_INJECTION_LABEL = "istio-injection"
ISTIO_DATAPLANE_LABEL = "istio.io/dataplane-mode"


ISTIO_CNI = "istio-cni-node"  # the DaemonSet of the Istio CNI node agent
ISTIO_CNI_NAMESPACES = (ISTIO_NAMESPACE, "kube-system")


def mesh_problem(config: SafeshipConfig, environment: Environment, namespace_obj: Mapping[str, Any],
                 cni: bool) -> str | None:
    """Why the environment's pods would not be in the Istio mesh, or None when they would be
    (router istio only). `cni`: the Istio CNI node agent runs. Sidecar injection adds the
    `istio-init` container, which needs NET_ADMIN and NET_RAW: the `baseline` and `restricted` Pod
    Security levels refuse it unless the Istio CNI agent sets up the redirection instead."""
    if router_of(environment) != "istio":
        return None
    name = namespace_of(environment)
    labels = (namespace_obj.get("metadata") or {}).get("labels") or {}
    if environment.istio.mode == "ambient":
        if labels.get(ISTIO_DATAPLANE_LABEL) != "ambient":
            return (f"namespace {name} lacks the label {ISTIO_DATAPLANE_LABEL}=ambient, so its pods are not in the "
                    "ambient mesh and the VirtualService's weights do not apply to them")
        return None
    if labels.get(ISTIO_INJECTION_LABEL) != "enabled" and not labels.get("istio.io/rev"):
        return (f"namespace {name} has neither {ISTIO_INJECTION_LABEL}=enabled nor istio.io/rev, so its pods get no "
                "sidecar and the VirtualService's weights do not apply to traffic from the mesh")
    level = pod_security_level(config, environment)
    if level != "privileged" and not cni:
        return (f"namespace {name} enforces the {level!r} Pod Security level, which refuses the istio-init "
                f"container sidecar injection adds (NET_ADMIN, NET_RAW), and no Istio CNI agent ({ISTIO_CNI} in "
                f"{' or '.join(ISTIO_CNI_NAMESPACES)}) runs; install Istio with its CNI agent, or use "
                "istio.mode: ambient")
    return None


def mesh_labels(environment: Environment) -> dict[str, str]:
    """The namespace labels that put its pods in the Istio mesh (router istio): sidecar injection,
    or the ambient data plane."""
    if router_of(environment) != "istio":
        return {}
    if environment.istio.mode == "ambient":
        return {ISTIO_DATAPLANE_LABEL: "ambient"}
    return {ISTIO_INJECTION_LABEL: "enabled"}


def deployer_rules(environment: Environment, config: SafeshipConfig | None = None) -> list[Obj]:
    """The least the deployment engine needs in the namespace, call by call (every call goes
    through `kube.client`; `create` then `patch` is how its `apply` works):

    - Deployments: `get` (platform start and scale, replicas router), `list` (platform instances
      and adopt, the Prometheus source naming versions), `create` (a new version), `patch` (its
      replicas; the replicas router's counts);
    - pods: `list` (instances and their readiness), `delete` (stopping one instance);
    - Services `<service>` and `<service>-canary`: `get`, `create`, `patch` (their selectors);
    - PodDisruptionBudgets: `create`, `patch` (applied with a new version's Deployment);
    - with a service's `autoscaling` (in `config`): HorizontalPodAutoscalers, `create`, `patch`
      (applied while a version has pods) and `delete` (when it is scaled to 0);
    - the router's objects: HTTPRoutes (`get`, `create`, `patch`, `delete`), or VirtualServices
      (the same) and DestinationRules (`delete`: earlier versions of the router made them).

    Nothing is watched, and nothing else is read: no ReplicaSets, events, logs or endpoints."""
    rules: list[Obj] = [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "create", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create", "patch"]},
    ]
    if config is not None and any(s.autoscaling is not None for s in config.services.values()):
        rules.append({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                      "verbs": ["create", "patch", "delete"]})
    router = router_of(environment)
    if router == "gateway-api":
        rules.append({"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
                      "verbs": ["get", "create", "patch", "delete"]})
    elif router == "istio":
        rules.append({"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
                      "verbs": ["get", "create", "patch", "delete"]})
        rules.append({"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"], "verbs": ["delete"]})
    return rules


def deployer_user(environment: Environment) -> str:
    """The user name Kubernetes gives the deployer's ServiceAccount (what access reviews ask about)."""
    return f"system:serviceaccount:{namespace_of(environment)}:{DEPLOYER}"


def policy_rules(config: SafeshipConfig) -> list[Obj]:
    """The rules of the seed's policies of type Role/RBAC, as Role rules."""
    rules: list[Obj] = []
    for index, policy in enumerate(config.environment_management.security_policies):
        if policy.type.strip().lower() not in _RBAC_TYPES:
            continue
        for number, rule in enumerate(policy.rules):
            if not rule.verbs or not rule.resources:
                raise InputError(f"environment_management.security_policies[{index}] ({policy.name!r}): rule "
                                 f"{number} needs verbs and resources to become a Role rule")
            converted: Obj = {"apiGroups": list(rule.apiGroups) or [""], "resources": list(rule.resources),
                              "verbs": list(rule.verbs)}
            if rule.resourceNames:
                converted["resourceNames"] = list(rule.resourceNames)
            rules.append(converted)
    return rules


def service_account(environment: Environment) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(DEPLOYER, environment)}


def role(config: SafeshipConfig, environment: Environment) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _metadata(DEPLOYER, environment),
            "rules": deployer_rules(environment, config) + policy_rules(config)}


def role_binding(environment: Environment) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(DEPLOYER, environment),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": DEPLOYER},
        "subjects": [{"kind": "ServiceAccount", "name": DEPLOYER, "namespace": namespace_of(environment)}],
    }


# ---------------------------------------------------------------- quota and limits


def resource_quota(environment: Environment) -> Obj:
    quota = environment.resource_quotas
    cpu, memory = cpu_quantity(quota.cpu), memory_quantity(quota.memory)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _metadata(QUOTA_NAME, environment),
        "spec": {"hard": {"requests.cpu": cpu, "requests.memory": memory,
                          "limits.cpu": cpu, "limits.memory": memory}},
    }


def limit_range(environment: Environment) -> Obj:
    """Defaults for a container that names no resources: safeship's own default requests, as
    requests and as limits; the quota is the most one container may ask for."""
    default = ResourceRequirements()
    values = {"cpu": cpu_quantity(default.cpu), "memory": memory_quantity(default.memory)}
    limit: Obj = {"type": "Container", "default": dict(values), "defaultRequest": dict(values)}
    quota = environment.resource_quotas
    if quota.cpu >= default.cpu and quota.memory >= default.memory:
        limit["max"] = {"cpu": cpu_quantity(quota.cpu), "memory": memory_quantity(quota.memory)}
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": _metadata(LIMIT_RANGE_NAME, environment),
            "spec": {"limits": [limit]}}


# ---------------------------------------------------------------- network policies


def monitoring_namespace(environment: Environment) -> str:
    """The namespace Prometheus scrapes from: `monitoring_namespace`, else the namespace in
    `prometheus.url`'s host (`prometheus.<namespace>.svc`), else `monitoring` ("" when set so)."""
    if environment.monitoring_namespace is not None:
        return environment.monitoring_namespace
    if environment.prometheus is not None:
        host = urllib.parse.urlsplit(environment.prometheus.url.strip()).hostname or ""
        parts = host.split(".")
        if len(parts) >= 3 and parts[2] == "svc":
            return parts[1]
    return DEFAULT_MONITORING_NAMESPACE


def gateway_namespace(environment: Environment) -> str:
    """The namespace of the gateway's data plane (the proxies that send ingress traffic to the
    pods): `gateway_namespace`, else the Gateway's (gateway-api) or `istio-system` (istio)."""
    if environment.gateway_namespace is not None:
        return environment.gateway_namespace
    router = router_of(environment)
    if router == "gateway-api" and environment.gateway is not None:
        return environment.gateway.namespace or namespace_of(environment)
    if router == "istio":
        return ISTIO_NAMESPACE
    return ""


def network_policies(environment: Environment) -> list[Obj]:
    """Default-deny ingress; then the namespace's own pods, the ingress and gateway data-plane
    namespaces, Prometheus' namespace and, with `load_balancer`, the services' port from anywhere
    (a LoadBalancer's traffic comes from outside the cluster)."""
    everything: Obj = {}
    sources = [environment.ingress_namespace, gateway_namespace(environment)]
    gateway = environment.gateway
    if router_of(environment) == "gateway-api" and gateway is not None and gateway.namespace:
        sources.append(gateway.namespace)
    sources = [s for i, s in enumerate(sources) if s and s not in sources[:i]]
    monitoring = monitoring_namespace(environment)
    for source in [*sources, monitoring]:
        if source and (len(source) > 63 or not _DNS_LABEL.fullmatch(source)):
            raise InputError(f"environment {environment.name!r}: {source!r} is not a namespace name, so no "
                             "NetworkPolicy can admit traffic from it (ingress_namespace, gateway_namespace, "
                             "gateway.namespace, monitoring_namespace)")

    def policy(name: str, ingress: list[Obj] | None, pods: Obj | None = None) -> Obj:
        spec: Obj = {"podSelector": dict(pods or everything), "policyTypes": ["Ingress"]}
        if ingress is not None:
            spec["ingress"] = ingress
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": _metadata(name, environment), "spec": spec}

    def from_namespaces(names: list[str]) -> list[Obj]:
        return [{"namespaceSelector": {"matchLabels": {_NAMESPACE_NAME: name}}} for name in names]

    result = [
        policy(DENY_POLICY, None),
        policy(SAME_NAMESPACE_POLICY, [{"from": [{"podSelector": {}}]}]),
    ]
    if sources:
        result.append(policy(INGRESS_POLICY, [{"from": from_namespaces(sources)}]))
    if monitoring and monitoring not in sources:
        result.append(policy(MONITORING_POLICY, [{"from": from_namespaces([monitoring])}]))
    if environment.load_balancer:
        result.append(policy(LOAD_BALANCER_POLICY,
                             [{"ports": [{"port": PORT_NAME, "protocol": "TCP"}]}],  # no `from`: every source
                             {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY}}))
    return result


def implied_flows(environment: Environment) -> list[tuple[str, Peer]]:
    """The traffic the config implies into the namespace's pods, as (what, source): the ingress
    controller, the gateway's data plane, Prometheus, and a load balancer's clients."""
    def from_namespace(name: str) -> Peer:
        return Peer(namespace=name, namespace_labels={_NAMESPACE_NAME: name})

    flows: list[tuple[str, Peer]] = []
    seen: set[str] = set()
    for what, name in (("the ingress controller", environment.ingress_namespace),
                       ("the gateway", gateway_namespace(environment)),
                       ("Prometheus", monitoring_namespace(environment))):
        if name and name not in seen:
            seen.add(name)
            flows.append((f"{what} (namespace {name})", from_namespace(name)))
    if environment.load_balancer:
        flows.append(("the load balancer's clients (outside the cluster)", Peer(outside=True)))
    return flows


def blocked_flows(config: SafeshipConfig, environment: Environment, policies: Sequence[Mapping[str, Any]],
                  namespace_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """One sentence per implied flow (`implied_flows`) that the namespace's NetworkPolicies would
    block, naming the policies that isolate the pods; `namespace_labels` holds the source
    namespaces' labels as the cluster has them (a namespace missing there has only its name label)."""
    problems: list[str] = []
    namespace = namespace_of(environment)
    for what, source in implied_flows(environment):
        if not source.outside and source.namespace in namespace_labels:
            source = Peer(namespace=source.namespace, namespace_labels=namespace_labels[source.namespace])
        for service, settings in config.services.items():
            pods = {**selector(service), **labels(service, "any", environment.name)}
            allowed, isolating = admits(policies, namespace, pods, source, settings.container_port, PORT_NAME)
            if not allowed:
                problems.append(f"{what} cannot reach {service}'s pods on port {settings.container_port}: "
                                f"NetworkPolicy {', '.join(sorted(isolating))} isolate them and none admits it")
    return problems


# ---------------------------------------------------------------- config maps, secrets, volumes


def config_maps(environment: Environment) -> list[Obj]:
    result = []
    for name, values in environment.config_maps.items():
        where = f"environment {environment.name!r}: config_maps.{name}"
        if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            raise InputError(f"{where}: {name!r} is not a Kubernetes object name (a DNS-1123 subdomain: "
                             "lowercase letters, digits, '-' and '.')")
        for key in values:
            if len(key) > 253 or not _DATA_KEY.fullmatch(key) or key in (".", ".."):
                raise InputError(f"{where}: key {key!r} is not a ConfigMap key (letters, digits, '-', '_' and '.')")
        result.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, environment),
                       "data": dict(values)})
    return result


def secret_keys(config: SafeshipConfig) -> dict[str, list[str]]:
    """Each service that lists secrets, with its secret names (sorted, once each)."""
    return {service: sorted(set(settings.secrets)) for service, settings in config.services.items()
            if settings.secrets}


def secrets(config: SafeshipConfig, environment: Environment, values: Mapping[str, str] | None) -> list[Obj]:
    """One Secret per service that lists secrets. `values` by secret name; None shows every value
    as `<redacted>` (for --render), in `stringData` so that the object stays valid."""
    result = []
    for service, names in secret_keys(config).items():
        obj: Obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": _metadata(secret_name(service), environment, {NAME_LABEL: service})}
        if values is None:
            obj["stringData"] = dict.fromkeys(names, REDACTED)
        else:
            missing = [n for n in names if n not in values]
            if missing:
                raise InputError(f"environment {environment.name!r}: no value for secret {missing[0]!r} of {service}")
            obj["data"] = {n: base64.b64encode(values[n].encode("utf-8")).decode("ascii") for n in names}
        result.append(obj)
    return result


def persistent_volume_claims(config: SafeshipConfig, environment: Environment) -> list[Obj]:
    result = []
    for service, settings in config.services.items():
        for volume in settings.volumes:
            spec: Obj = {"accessModes": [volume.access_mode],
                         "resources": {"requests": {"storage": memory_quantity(volume.size)}}}
            if volume.storage_class is not None:
                spec["storageClassName"] = volume.storage_class
            result.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": _metadata(pvc_name(service, volume.name), environment, {NAME_LABEL: service}),
                           "spec": spec})
    return result


def load_balancers(config: SafeshipConfig, environment: Environment) -> list[Obj]:
    """With `load_balancer: true`, a LoadBalancer Service per service over its pods (every
    version's ready pods: traffic through it follows the replicas, not a router's weights)."""
    if not environment.load_balancer:
        return []
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _metadata(load_balancer_name(service), environment, {NAME_LABEL: service}),
         "spec": {"type": "LoadBalancer", "selector": selector(service),
                  "ports": [{"name": PORT_NAME, "port": LOAD_BALANCER_PORT, "targetPort": PORT_NAME,
                             "protocol": "TCP"}]}}
        for service in config.services
    ]


# ---------------------------------------------------------------- all of them


def environment_objects(config: SafeshipConfig, environment: Environment, *,
                        secret_values: Mapping[str, str] | None = None) -> list[Obj]:
    """Every object `--prepare` applies for `environment`, in apply order (see the module
    docstring). `secret_values` maps secret names to their values; None redacts them (`--render`)."""
    return [
        namespace(config, environment),
        resource_quota(environment),
        limit_range(environment),
        service_account(environment),
        role(config, environment),
        role_binding(environment),
        *network_policies(environment),
        *config_maps(environment),
        *secrets(config, environment, secret_values),
        *persistent_volume_claims(config, environment),
        *load_balancers(config, environment),
    ]


# ---------------------------------------------------------------- --render


def manifests(objects: list[Obj]) -> str:
    """`objects` as multi-document YAML, in order, keys in the order they were built."""
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, allow_unicode=True)


def require_kubernetes(environment: Environment, config_path: str) -> None:
    """InputError unless `environment` runs on Kubernetes (what --render renders for)."""
    if environment.platform != "kubernetes":
        raise InputError(f"{config_path}: --render prints Kubernetes manifests, and environment "
                         f"{environment.name!r} uses platform {environment.platform!r}, not kubernetes; "
                         "nothing was rendered")
