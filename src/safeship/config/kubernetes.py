"""What a config must hold where an environment runs on Kubernetes (`platform: kubernetes`),
checked when the config loads, so that a deploy never meets it as a refusal of the API server or
of Pod Security Admission half-way through. Each refusal is one sentence naming the field:

- service names are DNS-1035 labels (a Service name starts with a letter; k8s.io/apimachinery
  `IsDNS1035Label`), since each service is a Service of that name;
- `run_as_user` of such an environment is a numeric UID (a pod names no user by name), and 0 (root)
  is refused where the environment's Pod Security level is `restricted`, which refuses
  `runAsUser: 0`; so is `services.<name>.pod.run_as_user: 0`;
- a `ReadWriteOnce` or `ReadWriteOncePod` volume is refused while canary, blue-green or rolling is
  enabled: they run two versions at once, and the second version's pods cannot mount the one claim
  the first holds (on another node, or at all for ReadWriteOncePod);
- `pod.pre_stop_sleep` is shorter than `grace_period` (the sleep counts against
  terminationGracePeriodSeconds); `pod.min_available` is a count or a percentage; the names in
  `pod` are Kubernetes names; `affinity`, `tolerations` and `topology_spread_constraints` use
  the keys Kubernetes knows.

`pod_security_level` is here (not in safeship.kube) because the config needs it to load.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from safeship.config.models import Environment, EnvironmentType, PodConfig, SafeshipConfig, SecurityPolicy
from safeship.config.names import shown as show
from safeship.errors import ConfigError

PSA_LEVELS = ("privileged", "baseline", "restricted")
PSA_TYPES = {"podsecuritypolicy", "podsecurity", "psa", "pod-security", "pod_security"}
SHARED_STRATEGIES = ("canary", "blue_green", "rolling")  # strategies that run two versions at once
SINGLE_NODE_MODES = {"ReadWriteOnce": "ReadWriteOnce lets the pods of one node only",
                     "ReadWriteOncePod": "ReadWriteOncePod lets one pod only"}

_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PERCENT = re.compile(r"[0-9]{1,3}%")
_KEYS: dict[str, set[str]] = {
    "affinity": {"nodeAffinity", "podAffinity", "podAntiAffinity"},
    "tolerations": {"key", "operator", "value", "effect", "tolerationSeconds"},
    "topology_spread_constraints": {"labelSelector", "matchLabelKeys", "maxSkew", "minDomains",
                                    "nodeAffinityPolicy", "nodeTaintsPolicy", "topologyKey",
                                    "whenUnsatisfiable"},
}
_SPREAD_REQUIRED = ("maxSkew", "topologyKey", "whenUnsatisfiable")



# ---------------------------------------------------------------- version labels
# Here, not in safeship.kube.objects (which uses them), because the config checks at load time
# that no two of a service's known versions share a label or a subset.

LABEL_MAX = 63


def digest(text: str) -> str:
    """8 hex digits of SHA-256 of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# What a hashed value ends with: a version that ends so itself is hashed too, so that it can never
# be taken for another version's hashed form.
_HASHED = re.compile(r"-[0-9a-f]{8}$")


def is_hashed(value: str) -> bool:
    """Whether a version label or slug carries a hash (so is not the version itself): a version
    that is its own label never ends in `-<8 hex digits>`, since such a version is hashed too."""
    return bool(_HASHED.search(value))


def version_label(version: str) -> str:
    """The value of `app.kubernetes.io/version` for `version`: a label value (at most 63 of
    `[A-Za-z0-9._-]`, alphanumeric at both ends). A version that is such a value is its own label;
    any other (`+`, more than 63 characters) is cleaned (`+` becomes `_`), cut, and given a hash of
    the exact version, so that no two versions share a label. The exact version is in the
    `safeship.io/version` annotation."""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", version)
    value = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value) or "x"
    if value == version and len(value) <= LABEL_MAX and not _HASHED.search(value):
        return value
    head = re.sub(r"[^A-Za-z0-9]+$", "", value[: LABEL_MAX - 9]) or "x"
    return f"{head}-{digest(version)}"


def version_slug(version: str) -> str:
    """`version` as a DNS-1123 label, one per version: the version itself when it is one (`v2`,
    `1-4-0`), else lowercased with every run of other characters made `-`, cut, and given a hash of
    the exact version (`v1.3.0` -> `v1-3-0-<hash>`, apart from `v1-3-0`)."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-") or "x"
    if cleaned == version and len(cleaned) <= LABEL_MAX and not _HASHED.search(cleaned):
        return cleaned
    head = cleaned[: LABEL_MAX - 9].rstrip("-") or "x"
    return f"{head}-{digest(version)}"


def pod_security_level(config: SafeshipConfig, environment: Environment) -> str:
    """The Pod Security Admission level enforced in `environment`: the level a policy of type
    PodSecurityPolicy names (its rules' resourceNames, else its name, else `restricted`); without
    one, `restricted` for production and staging and `baseline` otherwise."""
    for policy in config.environment_management.security_policies:
        if policy.type.strip().lower() in PSA_TYPES:
            return _level_of(policy)
    if environment.type in (EnvironmentType.PRODUCTION, EnvironmentType.STAGING):
        return "restricted"
    return "baseline"


def _level_of(policy: SecurityPolicy) -> str:
    for rule in policy.rules:
        for name in rule.resourceNames:
            if name.strip().lower() in PSA_LEVELS:
                return name.strip().lower()
    for level in PSA_LEVELS:
        if level in policy.name.lower():
            return level
    return "restricted"


def check_kubernetes(config: SafeshipConfig, source: str) -> None:
    """ConfigError (one sentence naming the field) for what a cluster would refuse; a config with
    no `platform: kubernetes` environment is not checked."""
    clusters = [(i, e) for i, e in enumerate(config.environment_management.environments)
                if e.platform == "kubernetes"]
    if not clusters:
        return
    restricted = [e.name for _, e in clusters if pod_security_level(config, e) == "restricted"]
    for index, environment in clusters:
        user = environment.run_as_user
        field = f"environment_management.environments[{index}].run_as_user"
        if user is not None and not user.isdigit():
            raise ConfigError(source, field, "a pod runs as a numeric UID (securityContext.runAsUser), not a user "
                              f"name, on platform kubernetes; write the image's numeric UID, got {show(user)}")
        for name in ("monitoring_namespace", "gateway_namespace"):
            value = getattr(environment, name)
            if value and (len(value) > 63 or not _DNS_1123_LABEL.fullmatch(value)):
                raise ConfigError(source, f"environment_management.environments[{index}].{name}",
                                  "must be a namespace name (a DNS-1123 label: lowercase letters, digits and '-', "
                                  f"at most 63), since a NetworkPolicy admits traffic from it, got {show(value)}")
        if user is not None and int(user) == 0 and environment.name in restricted:
            raise ConfigError(source, field, f"environment {environment.name!r} enforces the 'restricted' Pod Security "
                              "level, which refuses pods running as root (runAsUser 0); use a non-zero UID, got '0'")
    for index, environment in clusters:
        _check_gateway(config, environment, f"environment_management.environments[{index}].gateway", source)
        prometheus = environment.prometheus
        if (environment.router == "gateway-api" and prometheus is not None and prometheus.queries == "generic"
                and "requests" not in prometheus.templates):
            raise ConfigError(source, f"environment_management.environments[{index}].prometheus.queries",
                              "the generic queries select service=\"<service>\", which with router gateway-api is "
                              "the stable Service only (the candidate's pods are behind <service>-canary), so the "
                              "analysis would never see the candidate; use queries: kubernetes (the pods' own "
                              "labels), or override templates.requests, got 'generic'")
    strategies = config.intelligent_deployment.strategies
    shared = [name for name in SHARED_STRATEGIES if getattr(strategies, name).enabled]
    where_runs = f"environment {clusters[0][1].name!r} runs on Kubernetes"
    for name, service in config.services.items():
        if not _DNS_1035.fullmatch(name):
            raise ConfigError(source, f"services.{name}",
                              "a service becomes a Kubernetes Service of its name, which must be a DNS-1035 label "
                              "(lowercase letters, digits and '-', starting with a letter and ending with a letter "
                              f"or digit) since {where_runs}, got {show(name)}")
        for number, volume in enumerate(service.volumes):
            if volume.access_mode in SINGLE_NODE_MODES and shared:
                raise ConfigError(source, f"services.{name}.volumes[{number}].access_mode",
                                  f"{SINGLE_NODE_MODES[volume.access_mode]} mount the claim, but "
                                  f"{_listed(shared).replace('_', '-')} (enabled under intelligent_deployment."
                                  f"strategies) run two versions of {name} at once and the new version's pods would "
                                  "wait for it; use ReadWriteMany (or ReadOnlyMany), or disable those strategies so "
                                  f"that only recreate is left, got {volume.access_mode!r}")
        _check_pod(service.pod, service.grace_period, f"services.{name}.pod", restricted, source)
        _check_autoscaling(config, name, source)
        _check_versions(service.versions, f"services.{name}.versions", source)


_MATCH_KEYS = {"path", "headers", "queryParams", "method"}


def _check_autoscaling(config: SafeshipConfig, name: str, source: str) -> None:
    """`services.<name>.autoscaling`: min <= replicas <= max, and no environment whose router splits
    traffic by counting pods (an autoscaler would change the split)."""
    service = config.services[name]
    scaling = service.autoscaling
    if scaling is None:
        return
    where = f"services.{name}.autoscaling"
    if scaling.min_replicas > scaling.max_replicas:
        raise ConfigError(source, f"{where}.min_replicas", f"must not be more than max_replicas "
                          f"({scaling.max_replicas}), got {scaling.min_replicas}")
    if not scaling.min_replicas <= service.replicas <= scaling.max_replicas:
        raise ConfigError(source, f"services.{name}.replicas", "a version starts with `replicas` pods, which its "
                          f"autoscaler keeps between min_replicas ({scaling.min_replicas}) and max_replicas "
                          f"({scaling.max_replicas}); choose a count in that range, got {service.replicas}")
    for environment in config.environment_management.environments:
        if environment.platform == "kubernetes" and (environment.router or "replicas") == "replicas":
            raise ConfigError(source, where, f"environment {environment.name!r} uses router 'replicas', which splits "
                              "traffic by the number of each version's pods, and an autoscaler would change that "
                              "number and so the split; use router gateway-api or istio, or remove autoscaling")


def _check_gateway(config: SafeshipConfig, environment: Environment, where: str, source: str) -> None:
    """The gateway block's matches use Gateway API's keys, and two services on one Gateway do not
    claim the same requests (their HTTPRoutes' hostnames or matches must name the service)."""
    gateway = environment.gateway
    if gateway is None or (environment.router or "replicas") != "gateway-api":
        return
    for index, match in enumerate(gateway.matches):
        unknown = sorted(set(match) - _MATCH_KEYS)
        if unknown:
            raise ConfigError(source, f"{where}.matches[{index}]", f"unknown field {show(unknown[0])} (an "
                              f"HTTPRouteMatch has {', '.join(sorted(_MATCH_KEYS))})")
    named = any("{service}" in h for h in gateway.hostnames) or "{service}" in str(gateway.matches)
    if len(config.services) > 1 and not named:
        first, second = list(config.services)[:2]
        raise ConfigError(source, where, f"the HTTPRoutes of {first} and {second} would both claim "
                          f"{_claim(gateway.hostnames, gateway.matches)} on Gateway {gateway.name!r}; put "
                          "{service} in gateway.hostnames or gateway.matches so that each claims its own")


def _claim(hostnames: Sequence[str], matches: Sequence[Mapping[str, Any]]) -> str:
    where = f"hostnames {', '.join(hostnames)}" if hostnames else "every hostname"
    return f"{where} with {'the configured matches' if matches else 'PathPrefix /'}"


def _check_versions(versions: Sequence[str], where: str, source: str) -> None:
    """Two known versions whose version label (or Istio subset) would be one value are refused: the
    pods, Prometheus' series and the subsets of the two could not be told apart."""
    for kind, of in (("app.kubernetes.io/version label", version_label), ("Istio subset", version_slug)):
        seen: dict[str, int] = {}
        for index, version in enumerate(versions):
            value = of(version)
            first = seen.setdefault(value, index)
            if versions[first] != version:
                raise ConfigError(source, where, f"entries {first} and {index} ({show(versions[first])} and "
                                  f"{show(version)}) would share the {kind} {show(value)}, so their pods and "
                                  "metrics could not be told apart on Kubernetes; rename one of them")


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_pod(pod: PodConfig, grace_period: float, where: str, restricted: list[str], source: str) -> None:
    if pod.run_as_user == 0 and restricted:
        raise ConfigError(source, f"{where}.run_as_user", f"environment {restricted[0]!r} enforces the 'restricted' "
                          "Pod Security level, which refuses pods running as root (runAsUser 0); use a non-zero "
                          "UID, got 0")
    if pod.pre_stop_sleep and pod.pre_stop_sleep >= grace_period:
        raise ConfigError(source, f"{where}.pre_stop_sleep", "the preStop sleep counts against the termination "
                          f"grace period (grace_period, {grace_period:g}s), so the container would be killed before "
                          f"it is told to stop; make it shorter than grace_period, got {pod.pre_stop_sleep:g}s")
    value = pod.min_available
    if isinstance(value, str) and not (_PERCENT.fullmatch(value) and int(value[:-1]) <= 100):
        raise ConfigError(source, f"{where}.min_available", f"must be a count of pods or a percentage such as "
                          f"'50%', got {show(value)}")
    if isinstance(value, int) and value < 0:
        raise ConfigError(source, f"{where}.min_available", f"must be 0 or more, got {value}")
    for field, names in (("service_account", [pod.service_account] if pod.service_account else []),
                         ("image_pull_secrets", pod.image_pull_secrets)):
        for name in names:
            if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
                raise ConfigError(source, f"{where}.{field}", "must name a Kubernetes object (a DNS-1123 subdomain: "
                                  f"lowercase letters, digits, '-' and '.'), got {show(name)}")
    for key in pod.annotations:
        if not _QUALIFIED.fullmatch(key) or len(key.rsplit("/", 1)[-1]) > 63:
            raise ConfigError(source, f"{where}.annotations", "an annotation key is a qualified name ([prefix/]name, "
                              f"the name at most 63 letters, digits, '-', '_' and '.'), got {show(key)}")
    _check_keys(source, f"{where}.affinity", [pod.affinity] if pod.affinity is not None else [], "affinity")
    _check_keys(source, f"{where}.tolerations", pod.tolerations, "tolerations")
    _check_keys(source, f"{where}.topology_spread_constraints", pod.topology_spread_constraints,
                "topology_spread_constraints")
    for index, constraint in enumerate(pod.topology_spread_constraints):
        missing = [key for key in _SPREAD_REQUIRED if key not in constraint]
        if missing:
            raise ConfigError(source, f"{where}.topology_spread_constraints[{index}]",
                              f"a constraint needs {', '.join(_SPREAD_REQUIRED)}; {missing[0]} is missing")


def _check_keys(source: str, where: str, items: Sequence[Mapping[str, Any]], kind: str) -> None:
    for index, item in enumerate(items):
        unknown = sorted(set(item) - _KEYS[kind])
        if unknown:
            at = where if kind == "affinity" else f"{where}[{index}]"
            raise ConfigError(source, at, f"unknown field {show(unknown[0])} (Kubernetes spells them "
                              f"{', '.join(sorted(_KEYS[kind]))})")
