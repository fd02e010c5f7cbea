"""Offline checks of Kubernetes objects, as an API server would make them when they are created.

`validate_object(obj)` returns the problems with one object (an empty list when it is valid):

- built-in kinds are checked with `kubernetes_validate` against the strict schemas of Kubernetes
  1.30 (unknown fields are errors, as with `kubectl --validate=strict`);
- HTTPRoute (Gateway API v1 and v1beta1), VirtualService and DestinationRule (Istio networking v1,
  v1beta1 and v1alpha3) are checked against the CRD schemas in `tests/kubernetes/crds/`. Those are
  subsets of the published CustomResourceDefinitions (Gateway API standard channel v1.2.1, Istio
  1.24), written from them; each file's header says what it keeps. An object's fields that the
  schema does not know are errors, as the API server's strict field validation reports for a CRD
  whose structural schema would prune them;
- for every kind, what the API server checks beyond the OpenAPI schema and what safeship's objects
  can get wrong: object names, namespaces, label and annotation keys and values, quantities,
  container names, images and ports, a Deployment's selector against its template labels and its
  strategy, Secret and ConfigMap keys and base64 data, and the one HTTPRoute CEL rule that matters
  here (a backendRef to a Service names a port).

The emulator in `tests/kubernetes/conftest.py` answers 422 with these problems.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.30"
CRD_DIR = Path(__file__).parent / "crds"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*$")

# Kinds whose objects have no namespace; their names follow a kind-specific rule below.
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                   "CustomResourceDefinition", "StorageClass", "SelfSubjectAccessReview"}
_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "Namespace": (_DNS_LABEL, 63, "a DNS-1123 label"),
    "Service": (_DNS_1035_LABEL, 63, "a DNS-1035 label"),
}
_SUBDOMAIN_RULE = (_DNS_SUBDOMAIN, 253, "a DNS-1123 subdomain")
# RBAC names are path segments only (anything without '/', '%', '.' or '..').
_PATH_SEGMENT_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def validate_object(obj: dict[str, Any]) -> list[str]:
    """The problems an API server would report when `obj` is created; empty when it is valid."""
    if not isinstance(obj, dict):
        return ["the object is not a mapping"]
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return ["apiVersion: Required value"]
    if not isinstance(kind, str) or not kind:
        return ["kind: Required value"]
    problems: list[str] = []
    crd = _crd_validators().get((api_version, kind))
    if crd is not None:
        problems.extend(_schema_problems(crd, obj))
    else:
        problems.extend(_builtin_problems(obj, api_version, kind))
    problems.extend(_metadata_problems(obj, kind))
    problems.extend(_semantic_problems(obj, kind))
    return problems


# --- schemas ------------------------------------------------------------------------------------


def _schema_problems(validator: jsonschema.protocols.Validator, obj: dict[str, Any]) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(error.absolute_path)
        problems.append(f"{where}: {error.message}")
    return problems


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "<root>"


def _builtin_problems(obj: dict[str, Any], api_version: str, kind: str) -> list[str]:
    try:
        validator = _builtin_validator(api_version, kind)
    except (FileNotFoundError, kv_utils.SchemaNotFoundError):
        return [f"no kind {kind!r} in apiVersion {api_version!r} in Kubernetes {KUBERNETES_VERSION}"]
    return _schema_problems(validator, obj)


@functools.cache
def _builtin_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    version = [v for v in kv_utils.all_versions()
               if kv_utils.major_minor(v) == KUBERNETES_VERSION][-1]
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes_validate names its files.
    short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{short}.json", version)
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = _json_schema(version["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind",
                                         "metadata"})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return validators


_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, with strict field validation."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("description", "default") or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: _json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_json_schema(sub) for sub in value]
        elif key == "not":
            out[key] = _json_schema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    fmt = node.get("format")
    if node.get("type") == "integer" and fmt in _INT_BOUNDS:
        low, high = _INT_BOUNDS[fmt]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if node.get("nullable") and "type" in out:
        out.pop("nullable")
        out["type"] = [out["type"], "null"]
    else:
        out.pop("nullable", None)
    if (node.get("type") == "object" and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


# --- metadata -----------------------------------------------------------------------------------


def _metadata_problems(obj: dict[str, Any], kind: str) -> list[str]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return ["metadata: Required value"]
    problems: list[str] = []
    name = metadata.get("name")
    if not name and not metadata.get("generateName"):
        problems.append("metadata.name: Required value: name or generateName is required")
    elif isinstance(name, str) and name:
        problems.extend(_name_problems("metadata.name", name, kind))
    namespace = metadata.get("namespace")
    if namespace is not None and kind not in _CLUSTER_SCOPED and (
            not isinstance(namespace, str) or not _valid(namespace, _DNS_LABEL, 63)):
        problems.append(f"metadata.namespace: Invalid value: {namespace!r}: must be a DNS-1123 label")
    labels = metadata.get("labels") or {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            problems.extend(_key_problems(f"metadata.labels[{key!r}]", key))
            if not isinstance(value, str) or not _valid(value, _LABEL_VALUE, 63):
                problems.append(f"metadata.labels[{key!r}]: Invalid value: {value!r}: a label "
                                "value must be 63 characters or less, empty or alphanumeric "
                                "with '-', '_' or '.' inside")
    annotations = metadata.get("annotations") or {}
    if isinstance(annotations, dict):
        size = 0
        for key, value in annotations.items():
            problems.extend(_key_problems(f"metadata.annotations[{key!r}]", key))
            size += len(str(key)) + len(str(value))
        if size > 256 * 1024:
            problems.append("metadata.annotations: Too long: must have at most 262144 bytes")
    return problems


def _name_problems(where: str, name: str, kind: str) -> list[str]:
    if kind in _PATH_SEGMENT_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            return [f"{where}: Invalid value: {name!r}: may not contain '/' or '%'"]
        return []
    pattern, limit, text = _NAME_RULES.get(kind, _SUBDOMAIN_RULE)
    if not _valid(name, pattern, limit):
        return [f"{where}: Invalid value: {name!r}: must be {text} of at most {limit} characters"]
    return []


def _key_problems(where: str, key: Any) -> list[str]:
    if not isinstance(key, str):
        return [f"{where}: Invalid value: a key must be a string"]
    prefix, _, name = key.rpartition("/")
    if "/" in key and not _valid(prefix, _DNS_SUBDOMAIN, 253):
        return [f"{where}: Invalid value: {key!r}: the prefix must be a DNS-1123 subdomain"]
    if not _valid(name, _QUALIFIED_NAME, 63):
        return [f"{where}: Invalid value: {key!r}: the name part must be 63 characters or less, "
                "alphanumeric with '-', '_' or '.' inside"]
    return []


def _valid(value: str, pattern: re.Pattern[str], limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and bool(pattern.match(value))


# --- what the API server checks beyond the schema ----------------------------------------------


def _semantic_problems(obj: dict[str, Any], kind: str) -> list[str]:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    checks = {
        "Deployment": _deployment_problems,
        "Service": _service_problems,
        "Secret": _secret_problems,
        "ConfigMap": _config_map_problems,
        "ResourceQuota": _resource_quota_problems,
        "LimitRange": _limit_range_problems,
        "PersistentVolumeClaim": _pvc_problems,
        "HTTPRoute": _httproute_problems,
        "Pod": lambda o, s: _pod_spec_problems("spec", s),
    }
    check = checks.get(kind)
    return check(obj, spec) if check is not None else []


def _quantity_problems(where: str, values: Any) -> list[str]:
    if not isinstance(values, dict):
        return []
    problems = []
    for key, value in values.items():
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) or (isinstance(value, str) and _QUANTITY.match(value))
        ):
            problems.append(f"{where}[{key!r}]: Invalid value: {value!r}: "
                            "quantities must match the regular expression of a Kubernetes quantity")
    return problems


def _pod_spec_problems(where: str, pod_spec: Any) -> list[str]:
    if not isinstance(pod_spec, dict):
        return [f"{where}: Required value"]
    problems: list[str] = []
    containers = pod_spec.get("containers")
    if not containers:
        problems.append(f"{where}.containers: Required value")
    seen: set[str] = set()
    for field in ("initContainers", "containers"):
        for i, container in enumerate(pod_spec.get(field) or []):
            if not isinstance(container, dict):
                continue
            at = f"{where}.{field}[{i}]"
            name = container.get("name")
            if not isinstance(name, str) or not _valid(name, _DNS_LABEL, 63):
                problems.append(f"{at}.name: Invalid value: {name!r}: must be a DNS-1123 label")
            elif name in seen:
                problems.append(f"{at}.name: Duplicate value: {name!r}")
            else:
                seen.add(name)
            image = container.get("image")
            if not isinstance(image, str) or not image.strip():
                problems.append(f"{at}.image: Required value")
            for j, port in enumerate(container.get("ports") or []):
                if not isinstance(port, dict):
                    continue
                number = port.get("containerPort")
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    problems.append(f"{at}.ports[{j}].containerPort: Invalid value: {number!r}: "
                                    "must be between 1 and 65535")
                port_name = port.get("name")
                if port_name is not None and not _valid(port_name, _IANA_SVC_NAME, 15):
                    problems.append(f"{at}.ports[{j}].name: Invalid value: {port_name!r}: "
                                    "must be an IANA service name of at most 15 characters")
            for j, env in enumerate(container.get("env") or []):
                env_name = env.get("name") if isinstance(env, dict) else None
                if not isinstance(env_name, str) or not _ENV_NAME.match(env_name):
                    problems.append(f"{at}.env[{j}].name: Invalid value: {env_name!r}: "
                                    "must be a valid environment variable name")
            resources = container.get("resources") or {}
            if isinstance(resources, dict):
                problems.extend(_quantity_problems(f"{at}.resources.requests",
                                                   resources.get("requests")))
                problems.extend(_quantity_problems(f"{at}.resources.limits",
                                                   resources.get("limits")))
    return problems


def _deployment_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    assert isinstance(template, dict)
    template_meta = template.get("metadata") or {}
    template_labels = template_meta.get("labels") or {} if isinstance(template_meta, dict) else {}
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels")
                                               or selector.get("matchExpressions")):
        problems.append("spec.selector: Required value")
    else:
        for key, value in (selector.get("matchLabels") or {}).items():
            if template_labels.get(key) != value:
                problems.append("spec.template.metadata.labels: Invalid value: "
                                "`selector` does not match template `labels`")
                break
    replicas = spec.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
        problems.append(f"spec.replicas: Invalid value: {replicas!r}: must be >= 0")
    strategy = spec.get("strategy") or {}
    if isinstance(strategy, dict):
        kind = strategy.get("type", "RollingUpdate")
        rolling = strategy.get("rollingUpdate")
        if kind == "Recreate" and rolling is not None:
            problems.append("spec.strategy.rollingUpdate: Forbidden: may not be specified when "
                            "strategy `type` is 'Recreate'")
        elif kind not in ("Recreate", "RollingUpdate"):
            problems.append(f"spec.strategy.type: Unsupported value: {kind!r}")
        elif isinstance(rolling, dict):
            surge = rolling.get("maxSurge", "25%")
            unavailable = rolling.get("maxUnavailable", "25%")
            for field, value in (("maxSurge", surge), ("maxUnavailable", unavailable)):
                if not _int_or_percent(value):
                    problems.append(f"spec.strategy.rollingUpdate.{field}: Invalid value: "
                                    f"{value!r}: must be a non-negative integer or percentage")
            if _is_zero(surge) and _is_zero(unavailable):
                problems.append("spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "
                                "may not be 0 when `maxSurge` is 0")
            if isinstance(unavailable, str) and unavailable.endswith("%") and \
                    _int_or_percent(unavailable) and int(unavailable[:-1]) > 100:
                problems.append("spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "
                                "must not be greater than 100%")
    problems.extend(_pod_spec_problems("spec.template.spec", template.get("spec")))
    return problems


def _int_or_percent(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and re.fullmatch(r"\d+%", value) is not None


def _is_zero(value: Any) -> bool:
    return value == 0 or value == "0%"


def _service_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    ports = spec.get("ports") or []
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        problems.append("spec.ports: Required value")
    names: set[str] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            problems.append(f"spec.ports[{i}].port: Invalid value: {number!r}: "
                            "must be between 1 and 65535")
        name = port.get("name")
        if len(ports) > 1 and not name:
            problems.append(f"spec.ports[{i}].name: Required value")
        if name:
            if not _valid(name, _DNS_LABEL, 63):
                problems.append(f"spec.ports[{i}].name: Invalid value: {name!r}: "
                                "must be a DNS-1123 label")
            if name in names:
                problems.append(f"spec.ports[{i}].name: Duplicate value: {name!r}")
            names.add(name)
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            problems.append(f"spec.ports[{i}].targetPort: Invalid value: {target!r}")
        if isinstance(target, str) and not _valid(target, _IANA_SVC_NAME, 15):
            problems.append(f"spec.ports[{i}].targetPort: Invalid value: {target!r}")
    selector = spec.get("selector") or {}
    if isinstance(selector, dict):
        for key, value in selector.items():
            problems.extend(_key_problems(f"spec.selector[{key!r}]", key))
            if not isinstance(value, str) or not _valid(value, _LABEL_VALUE, 63):
                problems.append(f"spec.selector[{key!r}]: Invalid value: {value!r}")
    return problems


def _data_keys(where: str, data: Any) -> list[str]:
    if not isinstance(data, dict):
        return []
    return [f"{where}[{key!r}]: Invalid value: a key must consist of alphanumeric characters, "
            "'-', '_' or '.'" for key in data
            if not isinstance(key, str) or len(key) > 253 or not _CONFIG_KEY.match(key)
            or key in (".", "..")]


def _secret_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems = _data_keys("data", obj.get("data")) + _data_keys("stringData", obj.get("stringData"))
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"data[{key!r}]: Invalid value: not base64")
    return problems


def _config_map_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems = _data_keys("data", obj.get("data")) + _data_keys("binaryData", obj.get("binaryData"))
    overlap = set(obj.get("data") or {}) & set(obj.get("binaryData") or {})
    problems.extend(f"data[{key!r}]: Duplicate value: also in binaryData" for key in sorted(overlap))
    return problems


def _resource_quota_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    return _quantity_problems("spec.hard", spec.get("hard"))


def _limit_range_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for i, limit in enumerate(spec.get("limits") or []):
        if not isinstance(limit, dict):
            continue
        for field in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
            problems.extend(_quantity_problems(f"spec.limits[{i}].{field}", limit.get(field)))
        if limit.get("type") == "Pod" and (limit.get("default") or limit.get("defaultRequest")):
            problems.append(f"spec.limits[{i}]: Forbidden: default and defaultRequest are for "
                            "type Container only")
    return problems


def _pvc_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if not spec.get("accessModes"):
        problems.append("spec.accessModes: Required value: at least 1 access mode is required")
    resources = spec.get("resources") or {}
    requests = resources.get("requests") if isinstance(resources, dict) else None
    if not isinstance(requests, dict) or "storage" not in requests:
        problems.append("spec.resources.requests.storage: Required value")
    else:
        problems.extend(_quantity_problems("spec.resources.requests", requests))
    return problems


def _httproute_problems(obj: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The CEL rule of the published CRD: a backendRef to a Service must name its port."""
    problems: list[str] = []
    for i, rule in enumerate(spec.get("rules") or []):
        if not isinstance(rule, dict):
            continue
        for j, ref in enumerate(rule.get("backendRefs") or []):
            if not isinstance(ref, dict):
                continue
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" \
                    and "port" not in ref:
                problems.append(f"spec.rules[{i}].backendRefs[{j}]: Invalid value: "
                                "Must have port for Service reference")
    return problems


# --- Pod Security Admission ---------------------------------------------------------------------

_BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                          "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def pod_security_problems(obj: dict[str, Any], level: str) -> list[str]:
    """What Pod Security Admission at `level` (privileged, baseline, restricted; the checks of
    Kubernetes 1.30, `latest`) refuses in a Pod or in a workload's pod template. The AppArmor,
    SELinux, /proc mount and sysctl checks of baseline are left out: safeship sets none of them."""
    if level == "privileged":
        return []
    if obj.get("kind") == "Pod":
        spec, where = obj.get("spec") or {}, "spec"
    else:
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        where = "spec.template.spec"
    pod_context = spec.get("securityContext") or {}
    containers = [(f"{where}.{field}[{i}]", c) for field in ("initContainers", "containers")
                  for i, c in enumerate(spec.get(field) or [])]
    problems: list[str] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{where}.{field}: forbidden at baseline")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"{where}.volumes[{volume.get('name')}]: hostPath is forbidden at baseline")
        elif level == "restricted" and not (set(volume) - {"name"}) <= _RESTRICTED_VOLUMES:
            problems.append(f"{where}.volumes[{volume.get('name')}]: type not allowed at restricted")
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.securityContext.seccompProfile: Unconfined is forbidden at baseline")
    for at, container in containers:
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{at}.securityContext.privileged: forbidden at baseline")
        added = set((context.get("capabilities") or {}).get("add") or [])
        allowed = {"NET_BIND_SERVICE"} if level == "restricted" else _BASELINE_CAPABILITIES
        if added - allowed:
            problems.append(f"{at}.securityContext.capabilities.add: {sorted(added - allowed)} not allowed")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{at}.ports: hostPort is forbidden at baseline")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            problems.append(f"{at}.securityContext.seccompProfile: Unconfined is forbidden at baseline")
        if level != "restricted":
            continue
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}.securityContext.allowPrivilegeEscalation: must be false at restricted")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{at}.securityContext.capabilities.drop: must include ALL at restricted")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{at}.securityContext.runAsNonRoot: must be true (here or for the pod) at restricted")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{at}.securityContext.runAsUser: must not be 0 at restricted")
        profile = seccomp or (pod_context.get("seccompProfile") or {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{at}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost "
                            "(here or for the pod) at restricted")
    return problems
