"""An in-memory Kubernetes API server for the tests, over real HTTP: kmock's `KubernetesEmulator`
(discovery, storage, watch streams) extended to answer object requests as a real API server does.

What `KubeEmulator` adds to kmock, each covered by `test_emulator.py`:

- **validation**: the result of every create, update and patch is checked with
  `kube_schemas.validate_object` when that module is there (built-in kinds against the strict
  schemas of Kubernetes 1.30 plus the API server's own checks; HTTPRoute, VirtualService and
  DestinationRule against their CRD schemas), else with `kubernetes_validate` (strict, 1.30) for
  built-in kinds only. A problem is a 422 `Invalid` Status naming it, as an API server answers;
- **concurrency**: every write takes the next `metadata.resourceVersion` (one counter for the whole
  server); an update or patch that carries another resourceVersion than the stored one is a 409
  `Conflict`; `metadata.generation` starts at 1 and grows when `spec` changes; a write that changes
  nothing is not a write (no new resourceVersion), as on a real server;
- **patches**: JSON merge patch (RFC 7386: `null` deletes a key, lists are replaced whole). Other
  patch types (JSON patch, strategic merge, server-side apply) are refused with 415;
- **PUT** replaces an object (a real update: same checks as a patch);
- **namespaces**: an object in a namespace that does not exist is a 404 `NotFound` whose details
  name the namespace; deleting a namespace deletes what is in it;
- **status subresources**: for kinds that have one, writes to the object keep its status and
  writes to `/status` change only the status;
- **server-set fields and defaults**: uid, creationTimestamp; a Deployment's replicas, strategy,
  revisionHistoryLimit and progressDeadlineSeconds; a Service's type, clusterIP and clusterIPs (an
  update that leaves them out keeps them); a Pod's phase Pending; a Namespace's phase Active and
  its `kubernetes.io/metadata.name` label;
- **immutable fields**: an update is a 422 with the API server's own message when it changes a
  Deployment's `spec.selector`, a Service's cluster IP, a RoleBinding's `roleRef`, or a
  PersistentVolumeClaim's spec other than its storage request (any change, such as
  `storageClassName`; the storage request too while the claim is not Bound) or lowers its storage
  request (see `immutable_problems`);
- **label selectors** on lists (`a=b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`);
- **SelfSubjectAccessReview** (the kubeconfig's user) answered from `permissions` (None: everything
  is allowed; else a list of `Permission` rules, `*` matching anything);
- **SubjectAccessReview** (another user, such as a ServiceAccount) answered as the RBAC authorizer
  does, from the Roles, ClusterRoles and their bindings stored here (see `rbac_decision`);
- **RBAC** for requests bearing one of `tokens` (a ServiceAccount's, say): authorized from the
  stored Roles and bindings, refused with the API server's 403 message (see `_authorize`);
- **admission** of pods: Pod Security for the namespace's enforce level and ResourceQuota, with the
  API server's 403 Forbidden messages (see `admission.py`);
- **fault injection**: `fail(...)` answers the next matching requests with a given status;
  `hold(...)` leaves matching requests unanswered until released (a server too busy for them);
- **CustomResourceDefinitions** (`apiextensions.k8s.io/v1`, see "custom resources" below): a CRD
  whose schema is not structural is a 422 naming the node; a stored one is Established and its
  served versions are served and discovered (`/apis/<group>/<version>`, so kubectl and lightkube's
  generic resources find them); every write of a custom object is pruned (unknown fields dropped
  unless x-kubernetes-preserve-unknown-fields), defaulted and validated against the schema (types,
  int-or-string, nullable, required, enum, pattern, min/max, lengths, items, properties, the
  logical junctors; CEL rules are not evaluated), always, whatever `validate` says;
  `fieldValidation=Strict` refuses unknown fields (400) instead; the status subresource when the
  version declares it; generation counts every change but metadata (and status). Deleting a CRD
  makes it Terminating: its objects are deleted (those with finalizers wait for them), then it goes
  and its kinds are no longer served.
  Versions are served apart (no conversion between them);
- **Lease** (`coordination.k8s.io/v1`) and every other kind: the same optimistic concurrency;
- **watch** (see `_watch`): from a resourceVersion, every later change; without one, the current
  objects first; label and field selectors; `allowWatchBookmarks` (every `bookmark_interval`
  seconds and before it times out); `sendInitialEvents`; `timeoutSeconds`; a resourceVersion
  older than the kept history (`compact()`, or more than `history_limit` events) is an ERROR event
  with a 410 Expired Status. Watches are authorized (verb `watch`) for the `tokens`;
- **garbage collection** (see `settle`, run after every request and `remove`): deleting an owner
  deletes its dependents (propagationPolicy Background by default, Foreground with the
  `foregroundDeletion` finalizer and blockOwnerDeletion, Orphan with the `orphan` finalizer); a
  dependent whose owners are all absent (no such uid, or in another namespace) is deleted; an
  object whose last finalizer is removed after its deletion goes (`garbage_collection=False` turns
  the collector off).

Direct access for tests and the cluster simulator, without HTTP (the same checks apply to `write`):
`read`, `items`, `write` (create or replace, validated, bumping resourceVersion), `put` (store as
given, unchecked), `remove`, `ensure_namespace`, `compact`, `settle`. Objects are plain dicts; `KINDS` says where each
kind is served.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime
import functools
import importlib
import itertools
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from dataclasses import field as data_field
from pathlib import Path
from typing import Any

import admission
import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering

from safeship.kube import client as kube_client

Obj = dict[str, Any]

KUBERNETES_VERSION = "1.30"
MERGE_PATCH = "application/merge-patch+json"
REFUSED_PATCH_TYPES = (
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)

# Kinds served with a /status subresource (their status is written there only).
STATUS_KINDS = {
    "Namespace",
    "Pod",
    "Service",
    "PersistentVolumeClaim",
    "ResourceQuota",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Ingress",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Gateway",
    "HTTPRoute",
    "VirtualService",
    "DestinationRule",
    "CustomResourceDefinition",
}
# Kinds served by CustomResourceDefinitions (not in kubernetes_validate's schemas).
CRD_GROUPS = {"gateway.networking.k8s.io", "networking.istio.io"}


@dataclass(frozen=True)
class ServedKind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool
    status: bool | None = None  # served with a /status subresource; None: as STATUS_KINDS says

    # computed once per kind (the storage compares them for every object it scans)
    @functools.cached_property
    def group(self) -> str:
        return kube_client.split_api_version(self.api_version)[0]

    @functools.cached_property
    def version(self) -> str:
        return kube_client.split_api_version(self.api_version)[1]

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `pods`: how an API server names the resource in its messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @functools.cached_property
    def resource(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    @property
    def has_status(self) -> bool:
        return self.status if self.status is not None else self.kind in STATUS_KINDS


# The short names an API server gives built-in resources in discovery (what `kubectl get deploy` uses).
SHORT_NAMES = {
    "namespaces": ("ns",), "pods": ("po",), "services": ("svc",), "configmaps": ("cm",),
    "serviceaccounts": ("sa",), "endpoints": ("ep",), "events": ("ev",), "persistentvolumeclaims": ("pvc",),
    "resourcequotas": ("quota",), "limitranges": ("limits",), "deployments": ("deploy",), "replicasets": ("rs",),
    "statefulsets": ("sts",), "daemonsets": ("ds",), "poddisruptionbudgets": ("pdb",),
    "horizontalpodautoscalers": ("hpa",), "ingresses": ("ing",), "networkpolicies": ("netpol",),
    "customresourcedefinitions": ("crd", "crds"),
}

# Built-in kinds an API server serves that the client does not list: (apiVersion, kind, plural, namespaced).
BUILTIN_KINDS = [
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    ("coordination.k8s.io/v1", "Lease", "leases", True),
]


def served_kinds() -> dict[tuple[str, str, str], ServedKind]:
    """(group, version, plural) -> kind, for every kind the client knows and `BUILTIN_KINDS`."""
    kinds: dict[tuple[str, str, str], ServedKind] = {}
    for (api_version, kind), info in kube_client.KINDS.items():
        served = ServedKind(api_version, kind, info.plural, info.namespaced)
        kinds[(served.group, served.version, served.plural)] = served
    for api_version, kind, plural, namespaced in BUILTIN_KINDS:
        served = ServedKind(api_version, kind, plural, namespaced)
        kinds.setdefault((served.group, served.version, served.plural), served)
    return kinds


@dataclass(frozen=True)
class Permission:
    """One allow rule for SelfSubjectAccessReview; "*" matches anything, namespace None any."""

    verb: str = "*"
    resource: str = "*"
    group: str = "*"
    namespace: str | None = None

    def allows(self, verb: str, resource: str, group: str, namespace: str) -> bool:
        return (
            self.verb in ("*", verb)
            and self.resource in ("*", resource)
            and self.group in ("*", group)
            and (self.namespace is None or self.namespace == namespace)
        )


@dataclass
class Fault:
    """Answer requests matching (method, plural, name) with `status` (and a Retry-After)."""

    method: str
    plural: str | None
    name: str | None
    status: int
    message: str
    retry_after: float | None
    times: int
    body: bytes | None = None  # sent as is (with `content_type`) instead of a Status
    content_type: str = "application/json"

    def matches(self, method: str, plural: str | None, name: str | None) -> bool:
        return (
            self.times > 0
            and self.method in ("*", method)
            and (self.plural is None or self.plural == plural)
            and (self.name is None or self.name == name)
        )


@dataclass
class Hold:
    """Requests matching (method, plural) wait, unanswered, until `release()`: a server too busy
    to answer them. `waiting` counts those held now (a test counts them; it does not time them)."""

    method: str
    plural: str | None
    waiting: int = 0
    opened: asyncio.Event = data_field(default_factory=asyncio.Event)

    def matches(self, method: str, plural: str | None) -> bool:
        return (not self.opened.is_set() and self.method in ("*", method)
                and (self.plural is None or self.plural == plural))

    def release(self) -> None:
        self.opened.set()


class ApiFailure(Exception):
    """A Status answer: raised inside the emulator, rendered as a Kubernetes Status."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def status(self) -> Obj:
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


# ------------------------------------------------------------------ pure helpers


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: Obj = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_SELECTOR_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A label selector string as a predicate on labels; ValueError when it cannot be parsed."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_selector(text):
        found = _SELECTOR_SET.match(term)
        if found:
            key, op, values = found.group(1), found.group(2), {v.strip() for v in found.group(3).split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            key = term[1:].strip()
            tests.append(lambda labels, k=key: k not in labels)
        elif re.fullmatch(r"[A-Za-z0-9._/-]+", term):
            tests.append(lambda labels, k=term: k in labels)
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(test(labels) for test in tests)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector object (matchLabels, matchExpressions) against labels. Empty matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key")
        op = expression.get("operator")
        values = set(expression.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "<object>"


def clone(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists and scalars), several times faster than
    `copy.deepcopy`, which the stand-in would otherwise spend most of its time in; anything else
    inside is deep-copied as before."""
    kind = type(value)
    if kind is dict:
        return {key: clone(item) for key, item in value.items()}
    if kind is list:
        return [clone(item) for item in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without_resource_version(obj: Mapping[str, Any]) -> Obj:
    clean = copy.deepcopy(dict(obj))
    metadata = dict(clean.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    clean["metadata"] = metadata
    return clean


_builtin_validators: dict[tuple[str, str], Any] = {}


def builtin_problems(obj: Mapping[str, Any]) -> list[str]:
    """kubernetes_validate (strict, 1.30) for a built-in kind; validators are built once per kind."""
    import jsonschema
    from kubernetes_validate import utils as kv_utils
    from referencing import Registry, Resource

    api_version = str(obj.get("apiVersion"))
    kind = str(obj.get("kind"))
    key = (api_version, kind)
    validator = _builtin_validators.get(key)
    if validator is None:
        version = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == KUBERNETES_VERSION][-1]
        schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
        short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{short}.json", version)
        except FileNotFoundError:
            return [f"no kind {kind!r} in apiVersion {api_version!r} in Kubernetes {KUBERNETES_VERSION}"]
        definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
        registry: Any = Resource.from_contents(schema) @ Registry()
        registry = Resource.from_contents(definitions) @ registry
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        _builtin_validators[key] = validator
    return [
        f"{_field_path(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(dict(obj)), key=lambda e: [str(p) for p in e.absolute_path])
    ]


def _schema_module() -> Any | None:
    """tests/kubernetes/kube_schemas.py when it exists (imported lazily), else None."""
    try:
        return importlib.import_module("kube_schemas")
    except ModuleNotFoundError as exc:
        if exc.name == "kube_schemas":
            return None
        raise


def object_problems(obj: Mapping[str, Any], *, use_schemas: bool = True) -> list[str]:
    """What an API server would refuse in `obj`: kube_schemas.validate_object when it is there (every
    kind), else kubernetes_validate for built-in kinds (custom resources unchecked)."""
    module = _schema_module() if use_schemas else None
    if module is not None:
        result = module.validate_object(copy.deepcopy(dict(obj)))
        if isinstance(result, str):
            return [result] if result else []
        return [str(problem) for problem in (result or [])]
    group = kube_client.split_api_version(str(obj.get("apiVersion")))[0]
    if group in CRD_GROUPS:
        return []
    return builtin_problems(obj)


# ------------------------------------------------------------------ immutable fields

# The API server's messages, verbatim (Kubernetes 1.30):
# - k8s.io/apimachinery/pkg/api/validation/generic.go: FieldImmutableErrorMsg = "field is immutable",
#   used by ValidateImmutableField for a Deployment's selector, which
#   k8s.io/kubernetes/pkg/registry/apps/deployment/strategy.go (ValidateUpdate) checks for apps/v1;
# - k8s.io/kubernetes/pkg/apis/core/validation/validation.go: validateUpgradeDowngradeClusterIPs
#   ("may not change once set") and ValidatePersistentVolumeClaimUpdate;
# - k8s.io/kubernetes/pkg/apis/rbac/validation/validation.go: ValidateRoleBindingUpdate.
FIELD_IMMUTABLE = "field is immutable"
CLUSTER_IP_CHANGED = "may not change once set"
PVC_SPEC_IMMUTABLE = ("spec is immutable after creation except resources.requests and "
                      "volumeAttributesClassName for bound claims")
PVC_SMALLER = "field can not be less than previous value"
ROLE_REF_CHANGED = "cannot change roleRef"

_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": 1e-9, "u": 1e-6,
             "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity (`2Gi`, `500M`, `1e3`, 3) as a number, or None when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?",
                         str(value))
    if match is None:
        return None
    number = float(match.group(1))
    if match.group(2) is not None:
        return number * 10 ** int(match.group(2))
    return number * _SUFFIXES.get(match.group(3) or "", 1)


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _keep_cluster_ips(old: Mapping[str, Any], new: Obj) -> None:
    """An update that leaves a Service's clusterIP (and clusterIPs) out or empty keeps the
    allocated ones, as the service registry does before it validates."""
    old_spec, spec = old.get("spec") or {}, new.get("spec")
    if not isinstance(spec, dict):
        return
    for key in ("clusterIP", "clusterIPs"):
        if not spec.get(key) and old_spec.get(key):
            spec[key] = copy.deepcopy(old_spec[key])


def immutable_problems(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What the API server refuses to change in an update of `old` to `new`, in its own words."""
    old_spec, spec = old.get("spec") or {}, new.get("spec") or {}
    problems: list[str] = []
    if kind == "Deployment" and spec.get("selector") != old_spec.get("selector"):
        problems.append(f"spec.selector: Invalid value: {_shown(spec.get('selector'))}: {FIELD_IMMUTABLE}")
    elif kind == "Service" and "ExternalName" not in (spec.get("type"), old_spec.get("type")):
        before, after = old_spec.get("clusterIPs") or [], spec.get("clusterIPs") or []
        if len(before) == len(after):
            problems += [f"spec.clusterIPs[{i}]: Invalid value: {_shown(after)}: {CLUSTER_IP_CHANGED}"
                         for i, ip in enumerate(before) if after[i] != ip]
        if old_spec.get("clusterIP") and spec.get("clusterIP") != old_spec.get("clusterIP") and not problems:
            problems.append(f"spec.clusterIPs[0]: Invalid value: {_shown([spec.get('clusterIP')])}: "
                            f"{CLUSTER_IP_CHANGED}")
    elif kind == "RoleBinding" or kind == "ClusterRoleBinding":
        if new.get("roleRef") != old.get("roleRef"):
            problems.append(f"roleRef: Invalid value: {_shown(new.get('roleRef'))}: {ROLE_REF_CHANGED}")
    elif kind == "PersistentVolumeClaim":
        bound = ((new.get("status") or {}).get("phase")) == "Bound"
        before, after = copy.deepcopy(dict(old_spec)), copy.deepcopy(dict(spec))
        if not before.get("volumeName") and "volumeName" in after:
            before["volumeName"] = after["volumeName"]  # the volume controller sets it once
        if before.get("storageClassName") is None and "storageClassName" in after:
            before["storageClassName"] = after["storageClassName"]  # from nil to a class is allowed
        old_size = ((old_spec.get("resources") or {}).get("requests") or {}).get("storage")
        new_size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if bound:
            after.setdefault("resources", {}).setdefault("requests", {})["storage"] = old_size
        if before != after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            diff = ", ".join(f"{k}: {_shown(before.get(k))} -> {_shown(after.get(k))}" for k in changed)
            problems.append(f"spec: Forbidden: {PVC_SPEC_IMMUTABLE}\n{diff}")
        old_amount, new_amount = quantity(old_size), quantity(new_size)
        if old_amount is not None and new_amount is not None and new_amount < old_amount:
            problems.append(f"spec.resources.requests.storage: Forbidden: {PVC_SMALLER}")
    return problems


# ------------------------------------------------------------------ custom resources
#
# What the API server does with a CustomResourceDefinition and its objects, from the Kubernetes
# documentation "Extend the Kubernetes API with CustomResourceDefinitions" (structural schemas,
# pruning, defaulting, the status subresource, deleting a CRD) and from
# k8s.io/apiextensions-apiserver: pkg/apis/apiextensions/validation/validation.go (what a CRD may
# be), pkg/apiserver/schema/validation.go (a structural schema), pkg/apiserver/schema/pruning and
# defaulting, and k8s.io/kube-openapi/pkg/validation/errors (the wording of value errors:
# `<path> in body must be of type integer: "string"`, `should match '<pattern>'`, ...).

CRD_API_VERSION = "apiextensions.k8s.io/v1"
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# In a logical junctor a structural schema sets only value validations, never these.
_NOT_IN_JUNCTORS = ("type", "default", "description", "additionalProperties", "nullable")


@dataclass(frozen=True)
class CustomKind:
    """One served version of a CRD: where it is served and the schema its objects are checked with."""

    crd: str  # the CRD's name, <plural>.<group>
    served: ServedKind
    schema: Mapping[str, Any]


def _schema_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def structural_problems(schema: Any, path: str) -> list[str]:
    """Why `schema` (an openAPIV3Schema at `path`) is not structural, in the API server's words;
    empty when it is. The rules: every node says its type (unless it is int-or-string or preserves
    unknown fields), properties and additionalProperties exclude each other, the logical junctors
    (allOf, anyOf, oneOf, not) set no type, default, description, additionalProperties or nullable,
    and under `metadata` only `name` and `generateName` may be restricted."""
    if not isinstance(schema, Mapping):
        return [f"{path}: Required value: schemas are required"]
    problems: list[str] = []
    if not schema.get("type"):
        problems.append(f"{path}.type: Required value: must not be empty at the root")
    elif schema.get("type") != "object":
        problems.append(f'{path}.type: Invalid value: "{schema.get("type")}": must be object at the root')
    problems += _node_problems(schema, path, root=True)
    metadata = (schema.get("properties") or {}).get("metadata")
    if isinstance(metadata, Mapping):
        where = f"{path}.properties[metadata]"
        for key in metadata:
            if key not in ("type", "properties", "description"):
                problems.append(f"{where}.{key}: Forbidden: must not be specified for metadata")
        for field_name in metadata.get("properties") or {}:
            if field_name not in ("name", "generateName"):
                problems.append(f"{where}.properties[{field_name}]: Forbidden: must not be specified for metadata "
                                "other than name and generateName")
    return problems


def _typed(node: Mapping[str, Any]) -> bool:
    return bool(node.get("type") or node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields"))


def _node_problems(node: Mapping[str, Any], path: str, *, root: bool = False) -> list[str]:
    problems: list[str] = []
    properties = node.get("properties")
    additional = node.get("additionalProperties")
    if properties and additional not in (None, False):
        problems.append(f"{path}.additionalProperties: Forbidden: additionalProperties and properties are "
                        "mutual exclusive")
    for name, child in (properties or {}).items():
        where = f"{path}.properties[{name}]"
        if not isinstance(child, Mapping):
            problems.append(f"{where}: Invalid value: must be a schema")
            continue
        if not _typed(child):
            problems.append(f"{where}.type: Required value: must not be empty for specified object fields")
        problems += _node_problems(child, where)
    if isinstance(additional, Mapping):
        where = f"{path}.additionalProperties"
        if not _typed(additional):
            problems.append(f"{where}.type: Required value: must not be empty for specified object fields")
        problems += _node_problems(additional, where)
    items = node.get("items")
    if isinstance(items, Mapping):
        where = f"{path}.items"
        if not _typed(items):
            problems.append(f"{where}.type: Required value: must not be empty for specified array items")
        problems += _node_problems(items, where)
    elif node.get("type") == "array" and items is None:
        problems.append(f"{path}.items: Required value: must be specified")
    for junctor in _JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for index, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            where = f"{path}.{junctor}[{index}]" if junctor != "not" else f"{path}.not"
            problems += _junctor_problems(branch, where, node)
    return problems


def _junctor_problems(branch: Any, path: str, outside: Mapping[str, Any]) -> list[str]:
    """A branch of a logical junctor only validates what the schema outside it specifies."""
    if not isinstance(branch, Mapping):
        return [f"{path}: Invalid value: must be a schema"]
    problems: list[str] = []
    int_or_string = bool(outside.get("x-kubernetes-int-or-string"))
    for key in _NOT_IN_JUNCTORS:
        if key in branch and not (int_or_string and key == "type"):
            problems.append(f"{path}.{key}: Forbidden: must be empty to be structural")
    known = outside.get("properties") or {}
    for name, child in (branch.get("properties") or {}).items():
        if name not in known and not outside.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}.properties[{name}]: Required value: must be specified outside of the "
                            "logical junctor too")
        elif isinstance(child, Mapping) and isinstance(known.get(name), Mapping):
            problems += _junctor_problems(child, f"{path}.properties[{name}]", known[name])
    if isinstance(branch.get("items"), Mapping):
        if not isinstance(outside.get("items"), Mapping):
            problems.append(f"{path}.items: Required value: must be specified outside of the logical junctor too")
        else:
            problems += _junctor_problems(branch["items"], f"{path}.items", outside["items"])
    return problems


def crd_problems(crd: Mapping[str, Any]) -> list[str]:
    """What the API server refuses in a CustomResourceDefinition beyond its OpenAPI schema."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = str(spec.get("group") or "")
    plural = str(names.get("plural") or "")
    problems: list[str] = []
    name = str((crd.get("metadata") or {}).get("name") or "")
    if name != f"{plural}.{group}":
        problems.append(f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    if "." not in group:
        problems.append(f'spec.group: Invalid value: "{group}": should be a domain with at least one dot')
    for key in ("plural", "singular", "listKind", "kind"):
        value = names.get(key)
        if key in ("plural", "kind") and not value:
            problems.append(f"spec.names.{key}: Required value")
        elif key in ("plural", "singular") and value and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
            problems.append(f'spec.names.{key}: Invalid value: "{value}": a lowercase RFC 1123 label must '
                            "consist of lower case alphanumeric characters or '-'")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append(f'spec.scope: Unsupported value: "{spec.get("scope")}": supported values: '
                        '"Cluster", "Namespaced"')
    versions = spec.get("versions") or []
    if not versions:
        problems.append("spec.versions: Invalid value: null: must have exactly one version marked as storage version")
    storage = [v for v in versions if isinstance(v, Mapping) and v.get("storage")]
    if versions and len(storage) != 1:
        problems.append(f"spec.versions: Invalid value: {_shown(versions)[:80]}: must have exactly one version "
                        "marked as storage version")
    seen: set[str] = set()
    for index, version in enumerate(versions):
        if not isinstance(version, Mapping):
            continue
        where = f"spec.versions[{index}]"
        if version.get("name") in seen:
            problems.append(f'{where}.name: Duplicate value: "{version.get("name")}"')
        seen.add(str(version.get("name")))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        problems += structural_problems(schema, f"{where}.schema.openAPIV3Schema")
    return problems


def crd_kinds(crd: Mapping[str, Any]) -> list[CustomKind]:
    """The served versions of a (valid) CRD."""
    spec = crd["spec"]
    names = spec["names"]
    kinds = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        served = ServedKind(f"{spec['group']}/{version['name']}", names["kind"], names["plural"],
                            spec["scope"] == "Namespaced", status="status" in (version.get("subresources") or {}))
        kinds.append(CustomKind(crd["metadata"]["name"], served, version["schema"]["openAPIV3Schema"]))
    return kinds


def prune(schema: Mapping[str, Any], value: Any, *, root: bool = False, path: str = "",
          dropped: list[str] | None = None) -> Any:
    """`value` without the fields its structural schema does not specify (unless it preserves
    unknown fields), with the schema's defaults filled in where a field is missing; at the root
    apiVersion, kind and metadata are always kept. The paths of the fields dropped go to `dropped`."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        result: Obj = {}
        for key, child in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                result[key] = child
            elif key in properties:
                child_schema = properties[key]
                if child is None and not child_schema.get("nullable") and "default" in child_schema:
                    continue  # a null where the schema has a default is dropped, then defaulted
                result[key] = prune(child_schema, child, path=_schema_path(path, key), dropped=dropped)
            elif isinstance(additional, Mapping):
                result[key] = prune(additional, child, path=_schema_path(path, key), dropped=dropped)
            elif preserve or additional is True:
                result[key] = child
            elif dropped is not None:
                dropped.append(_schema_path(path, key))
        for key, child_schema in properties.items():
            if key not in result and isinstance(child_schema, Mapping) and "default" in child_schema:
                result[key] = prune(child_schema, copy.deepcopy(child_schema["default"]))
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(schema["items"], item, path=f"{path}[{index}]", dropped=dropped)
                for index, item in enumerate(value)]
    return value


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _type_ok(expected: str, value: Any) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    wanted = _JSON_TYPES.get(expected)
    return wanted is not None and isinstance(value, wanted)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def value_problems(schema: Mapping[str, Any], value: Any, path: str) -> list[str]:
    """What the API server's OpenAPI validation reports for `value` at `path`, in its words."""
    where = path or "<root>"
    shown = _shown(value)
    if value is None:
        if schema.get("nullable"):
            return []
        if schema.get("type"):
            return [f'{where}: Invalid value: "null": {where} in body must be of type {schema["type"]}: "null"']
        return []
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok("integer", value)):
            return [f'{where}: Invalid value: "{_type_name(value)}": {where} in body must be of type '
                    f'integer,string: "{_type_name(value)}"']
    elif schema.get("type") and not _type_ok(str(schema["type"]), value):
        return [f'{where}: Invalid value: "{_type_name(value)}": {where} in body must be of type '
                f'{schema["type"]}: "{_type_name(value)}"']
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_shown(v) for v in schema["enum"])
        problems.append(f"{where}: Unsupported value: {shown}: supported values: {supported}")
    if isinstance(value, str):
        if "pattern" in schema and re.search(str(schema["pattern"]), value) is None:
            problems.append(f"{where}: Invalid value: {shown}: {where} in body should match '{schema['pattern']}'")
        if "maxLength" in schema and len(value) > int(schema["maxLength"]):
            problems.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < int(schema["minLength"]):
            problems.append(f"{where}: Invalid value: {shown}: {where} in body should be at least "
                            f"{schema['minLength']} chars long")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                op = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
                problems.append(f"{where}: Invalid value: {shown}: {where} in body should be {op} {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") and value == high):
                op = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
                problems.append(f"{where}: Invalid value: {shown}: {where} in body should be {op} {high}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > int(schema["maxItems"]):
            problems.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < int(schema["minItems"]):
            problems.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                            f"{schema['minItems']} items")
        if isinstance(schema.get("items"), Mapping):
            for index, item in enumerate(value):
                problems += value_problems(schema["items"], item, f"{path}[{index}]")
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                problems.append(f"{_schema_path(path, key)}: Required value")
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if key in properties:
                if not path and key == "metadata":
                    continue  # ObjectMeta is the API server's, checked apart
                problems += value_problems(properties[key], child, _schema_path(path, key))
            elif isinstance(additional, Mapping):
                problems += value_problems(additional, child, _schema_path(path, key))
        if "maxProperties" in schema and len(value) > int(schema["maxProperties"]):
            problems.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        if "minProperties" in schema and len(value) < int(schema["minProperties"]):
            problems.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                            f"{schema['minProperties']} properties")
    for branch in schema.get("allOf") or []:
        problems += value_problems(branch, value, path)
    if schema.get("anyOf") and not any(not value_problems(b, value, path) for b in schema["anyOf"]):
        problems.append(f"{where}: Invalid value: {shown}: {where} in body must match at least one schema in anyOf")
    if schema.get("oneOf") and sum(1 for b in schema["oneOf"] if not value_problems(b, value, path)) != 1:
        problems.append(f"{where}: Invalid value: {shown}: {where} in body must match exactly one schema in oneOf")
    if isinstance(schema.get("not"), Mapping) and not value_problems(schema["not"], value, path):
        problems.append(f"{where}: Invalid value: {shown}: {where} in body must not validate the schema (not)")
    return problems


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def custom_object_problems(custom: CustomKind, obj: Mapping[str, Any]) -> list[str]:
    """A custom object against its CRD's schema (after pruning and defaulting), and its name."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    problems: list[str] = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                        "lower case alphanumeric characters, '-' or '.', and must start and end with an "
                        "alphanumeric character")
    return problems + value_problems(custom.schema, dict(obj), "")


# ------------------------------------------------------------------ the server


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator answering object requests as an API server does (see the module docstring)."""

    permissions: list[Permission] | None = None
    validate: bool = True
    admission: bool = True  # Pod Security and ResourceQuota admission of pods (see `admission`)
    # bearer token -> user: requests with such a token are authorized by RBAC (see `_authorize`)
    tokens: dict[str, str] = attrs.field(factory=dict)
    # (user, verb, resource, group, allowed) of every request made with one of `tokens`
    authorized: list[tuple[str, str, str, str, bool]] = attrs.field(factory=list)
    use_schemas: bool = True  # False: ignore kube_schemas even when it exists (built-ins only)
    kinds: dict[tuple[str, str, str], ServedKind] = attrs.field(factory=served_kinds)
    faults: list[Fault] = attrs.field(factory=list)
    holds: list[Hold] = attrs.field(factory=list)
    _revision: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    # kinds served by a stored CustomResourceDefinition: (group, version, plural) -> its schema
    custom: dict[tuple[str, str, str], CustomKind] = attrs.field(factory=dict, init=False)
    # the watch history: (resourceVersion, resource, event), oldest first; a watch from a
    # resourceVersion older than `history_floor` is answered 410 Expired
    history: list[tuple[int, kmock.resource, Obj]] = attrs.field(factory=list, init=False)
    history_floor: int = attrs.field(default=0, init=False)
    history_limit: int = 20_000  # events kept; older ones are dropped as a watch cache drops them
    bookmark_interval: float = 60.0  # seconds between BOOKMARK events on a watch that asked for them
    watch_write_timeout: float = 5.0  # a watcher that takes longer to take an event is closed
    garbage_collection: bool = True  # ownerReferences: dependents of a deleted owner are deleted
    _wakeup: Any = attrs.field(default=None, init=False)  # asyncio.Event set by `publish`
    _field_validation: str = attrs.field(default="", init=False)  # the request's fieldValidation
    _closing: bool = attrs.field(default=False, init=False)  # set by `end_watches`
    # the keys of `objects` by resource, in the order they were first stored (deleted ones too):
    # a listing visits one kind's objects, not every object the server ever held
    _keys: dict[kmock.resource, dict[tuple[kmock.resource, str | None, str], None]] = attrs.field(
        factory=dict, init=False)
    # resource -> the resourceVersion of its last write (see `changed_at`)
    _changed: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    # (last resourceVersion, kinds served, garbage_collection) when `settle` last found nothing to do
    _settled: tuple[int, int, bool] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for served in self.kinds.values():
            self._discover(served)

    # -------------------------------------------------------------- configuration

    def _discover(self, served: ServedKind) -> None:
        """Serve `served` in discovery (/api/v1, /apis/<group>/<version>), as the API server lists it."""
        info = self.resources[served.resource]
        info.kind = served.kind
        info.namespaced = served.namespaced
        info.singular = served.kind.lower()
        info.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}
        info.subresources = {"status"} if served.has_status else set()
        info.shortnames = set(SHORT_NAMES.get(served.plural, ()))

    def add_kind(self, api_version: str, kind: str, plural: str, *, namespaced: bool = True,
                 status: bool | None = None) -> ServedKind:
        served = ServedKind(api_version, kind, plural, namespaced, status)
        self.kinds[(served.group, served.version, plural)] = served
        self._discover(served)
        return served

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # kmock names the core group's version "/v1"; an API server (and kubectl) says "v1"
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        for entry in payload.get("resources", []) if isinstance(payload, dict) else []:
            if "/" in entry["name"]:  # a subresource: no short names or categories, its own verbs
                entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return payload

    def _get_resources(self) -> list[kmock.resource]:
        # discovery lists what is served now (kmock would also list kinds of deleted objects)
        return [served.resource for served in self.kinds.values()]

    def fail(
        self,
        method: str,
        plural: str | None = None,
        *,
        name: str | None = None,
        status: int = 500,
        message: str = "injected failure",
        retry_after: float | None = None,
        times: int = 1,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next `times` requests of `method` ("*" any) on `plural` (None any) with `status`:
        a Status carrying `message`, or `body` as is (what a proxy in front of a server may send)."""
        self.faults.append(Fault(method.upper(), plural, name, status, message, retry_after, times, body, content_type))

    def hold(self, method: str, plural: str | None = None) -> Hold:
        """Hold every later request of `method` ("*" any) on `plural` (None any) unanswered until
        the returned `Hold` is released (also released by `end_watches`)."""
        held = Hold(method.upper(), plural)
        self.holds.append(held)
        return held

    def served(self, api_version: str, kind: str) -> ServedKind:
        for served in self.kinds.values():
            if served.api_version == api_version and served.kind == kind:
                return served
        info = kube_client.kind_info(api_version, kind)
        return self.add_kind(api_version, kind, info.plural, namespaced=info.namespaced)

    # -------------------------------------------------------------- storage

    def _key(self, served: ServedKind, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return (served.resource, namespace if served.namespaced else None, name)

    def _stored(self, served: ServedKind, namespace: str | None, name: str) -> Obj | None:
        key = self._key(served, namespace, name)
        if key not in self.objects:
            return None
        stored = self.objects[key]
        if stored.deleted:
            return None
        return clone(stored.raw)

    def _store(self, served: ServedKind, obj: Obj, event: str) -> Obj:
        metadata = obj["metadata"]
        key = self._key(served, metadata.get("namespace"), metadata["name"])
        self._last_rv = next(self._revision)
        self._changed[served.resource] = self._last_rv
        metadata["resourceVersion"] = str(self._last_rv)
        if event == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].create(clone(obj))
        else:
            self.objects[key] = clone(obj)
        self._keys.setdefault(served.resource, {})[key] = None
        self.history.append((self._last_rv, served.resource, {"type": event, "object": clone(obj)}))
        if len(self.history) > self.history_limit:  # drop the oldest tenth at once
            self.compact(self.history[len(self.history) - self.history_limit * 9 // 10][0])
        if event == "DELETED" and served.kind == "CustomResourceDefinition":
            self._uninstall_crd(metadata["name"])
        return obj

    async def publish(self) -> None:
        """Send the events of the writes made so far to the watch streams."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def end_watches(self) -> None:
        """End every open watch (the server is stopping), as an API server ends them on shutdown."""
        self._closing = True
        for held in self.holds:
            held.release()
        await self.publish()

    def compact(self, resource_version: int | None = None) -> int:
        """Drop the watch history up to `resource_version` (the latest when None), as etcd's
        compaction and a full watch cache do: a later watch from an older resourceVersion is
        answered 410 Expired. Returns the new floor."""
        floor = self._last_rv if resource_version is None else min(int(resource_version), self._last_rv)
        self.history = [entry for entry in self.history if entry[0] > floor]
        self.history_floor = max(self.history_floor, floor)
        return self.history_floor

    def _namespace_exists(self, namespace: str) -> bool:
        ns = self._stored(self.served("v1", "Namespace"), None, namespace)
        return ns is not None and not (ns.get("metadata") or {}).get("deletionTimestamp")

    def changed_at(self, api_version: str, kind: str) -> int:
        """The resourceVersion of the last write (create, update, delete) of an object of this kind
        (0: none yet): a reader that saw the kind's objects at this version may keep what it read."""
        return self._changed.get(self.served(api_version, kind).resource, 0)

    def _listing(self, served: ServedKind, namespace: str | None,
                 keep: Callable[[Obj], bool] | None = None) -> list[Obj]:
        """Copies of the kind's live objects (in `namespace` unless None), those that `keep` takes."""
        found = []
        for key in self._keys.get(served.resource, {}):
            if served.namespaced and namespace is not None and key[1] != namespace:
                continue
            try:
                stored = self.objects[key]
            except KeyError:  # taken out of `objects` by hand
                continue
            if stored.deleted:
                continue
            raw = stored.raw
            if keep is None or keep(raw):
                found.append(clone(raw))
        return found

    # -------------------------------------------------------------- direct access (no HTTP)

    def read(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object, or None."""
        return self._stored(self.served(api_version, kind), namespace, name)

    def items(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Obj]:
        """Stored objects of a kind (every namespace when None), matching every label."""
        found = self._listing(self.served(api_version, kind), namespace)
        if labels:
            found = [
                o for o in found if all(((o["metadata"].get("labels") or {}).get(k) == v) for k, v in labels.items())
            ]
        return found

    def write(self, obj: Mapping[str, Any], *, status: bool = False) -> Obj:
        """Create or replace `obj` with every check an API request gets (ApiFailure on a problem).
        `status=True` writes only the status, as a request to /status does."""
        served = self.served(str(obj.get("apiVersion")), str(obj.get("kind")))
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") if served.namespaced else None
        name = str(metadata.get("name"))
        if self._stored(served, namespace, name) is None:
            return self._create(served, namespace, copy.deepcopy(dict(obj)), dry_run=False)
        return self._update(
            served, namespace, name, copy.deepcopy(dict(obj)), subresource="status" if status else None, dry_run=False
        )

    def patch_object(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        *,
        status: bool = False,
    ) -> Obj:
        """A merge patch with every check an API request gets (ApiFailure on a problem)."""
        served = self.served(api_version, kind)
        ns = namespace if served.namespaced else None
        return self._patch(served, ns, name, dict(patch), subresource="status" if status else None, dry_run=False)

    def put(self, obj: Mapping[str, Any]) -> Obj:
        """Store `obj` as given: no validation, no conflict check, status kept; a new
        resourceVersion, and a new generation when the spec changed (unless `obj` sets a higher one)."""
        served = self.served(str(obj.get("apiVersion")), str(obj.get("kind")))
        body = copy.deepcopy(dict(obj))
        metadata = body.setdefault("metadata", {})
        if not served.namespaced:
            metadata.pop("namespace", None)
        before = self._stored(served, metadata.get("namespace"), metadata["name"])
        existed = before is not None
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        if "spec" in body:
            # generation is the server's: one more when the spec changes (a higher one given is kept)
            old_generation = int(before["metadata"].get("generation") or 0) if before is not None else 0
            changed = before is None or before.get("spec") != body["spec"]
            given = int(metadata.get("generation") or 0)
            metadata["generation"] = max(given, old_generation + (1 if changed else 0))
        return self._store(served, body, "MODIFIED" if existed else "ADDED")

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete an object at once (finalizers ignored); False when it was not there."""
        served = self.served(api_version, kind)
        stored = self._stored(served, namespace if served.namespaced else None, name)
        if stored is None:
            return False
        self._store(served, stored, "DELETED")
        if served.kind == "Namespace":
            self._delete_contents(name)
        self.settle()
        return True

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        served = self.served("v1", "Namespace")
        existing = self._stored(served, None, name)
        if existing is not None:
            return existing
        obj: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        return self._create(served, None, obj, dry_run=False)

    def finalize_namespace(self, name: str) -> bool:
        """What the namespace controller does for a Terminating namespace: delete everything in it,
        then remove its `kubernetes` finalizer, so that it goes. False when it is not terminating."""
        served = self.served("v1", "Namespace")
        stored = self._stored(served, None, name)
        if stored is None or not (stored.get("metadata") or {}).get("deletionTimestamp"):
            return False
        self._delete_contents(name)
        self._store(served, stored, "DELETED")
        return True

    def _delete_contents(self, namespace: str) -> None:
        for (resource, ns, _name), stored in list(self.objects.items()):
            if ns == namespace and not stored.deleted:
                served = next(s for s in self.kinds.values() if s.resource == resource)
                self._store(served, copy.deepcopy(stored.raw), "DELETED")

    # -------------------------------------------------------------- semantics

    def _not_found(self, served: ServedKind, name: str) -> ApiFailure:
        return ApiFailure(
            404,
            "NotFound",
            f'{served.qualified} "{name}" not found',
            {"name": name, "group": served.group, "kind": served.plural},
        )

    def _refuse_terminating(self, served: ServedKind, namespace: str | None, name: str) -> None:
        """k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go refuses new objects
        in a namespace being deleted: `unable to create new content in namespace %s because it is
        being terminated`, a Forbidden with the cause NamespaceTerminating."""
        ns = self._stored(self.served("v1", "Namespace"), None, namespace) if namespace else None
        if ns is not None and (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiFailure(
                403, "Forbidden",
                f'{served.qualified} "{name}" is forbidden: unable to create new content in namespace {namespace} '
                "because it is being terminated",
                {"name": name, "group": served.group, "kind": served.plural,
                 "causes": [{"reason": "NamespaceTerminating",
                             "message": f"namespace {namespace} is being terminated", "field": "metadata.namespace"}]})

    def _require_namespace(self, served: ServedKind, namespace: str | None) -> None:
        if not served.namespaced:
            return
        if not namespace:
            raise ApiFailure(400, "BadRequest", f"the namespace of {served.qualified} objects must be given")
        ns = self._stored(self.served("v1", "Namespace"), None, namespace)
        if ns is not None and (ns.get("metadata") or {}).get("deletionTimestamp"):
            return  # terminating: reads and deletes go on; creating is refused by _refuse_terminating
        if not self._namespace_exists(namespace):
            raise ApiFailure(
                404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
            )

    def _check(self, served: ServedKind, obj: Obj) -> None:
        custom = self.custom.get((served.group, served.version, served.plural))
        if custom is not None:  # a CRD's schema is always enforced, as the API server does
            problems = custom_object_problems(custom, obj)
        elif not self.validate:
            return
        else:
            problems = object_problems(obj, use_schemas=self.use_schemas)
        if not problems and served.kind == "CustomResourceDefinition":
            problems = crd_problems(obj)
        if problems:
            raise self._invalid(served, str((obj.get("metadata") or {}).get("name", "")), problems)

    @staticmethod
    def _invalid(served: ServedKind, name: str, problems: list[str]) -> ApiFailure:
        group = f".{served.group}" if served.group else ""
        return ApiFailure(
            422,
            "Invalid",
            f'{served.kind}{group} "{name}" is invalid: ' + "; ".join(problems),
            {
                "name": name,
                "group": served.group,
                "kind": served.kind,
                "causes": [{"reason": "FieldValueInvalid", "message": p} for p in problems],
            },
        )

    def _defaults(self, served: ServedKind, obj: Obj) -> None:
        spec = obj.get("spec")
        if served.kind == "Deployment" and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxSurge", "25%")
                rolling.setdefault("maxUnavailable", "25%")
        elif served.kind == "Service" and isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
            if spec.get("clusterIP") is None and spec["type"] != "ExternalName":
                spec["clusterIP"] = f"10.96.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
            if spec.get("clusterIP") and not spec.get("clusterIPs"):
                spec["clusterIPs"] = [spec["clusterIP"]]
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    port.setdefault("targetPort", port.get("port"))
        elif served.kind == "Pod":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif served.kind == "Namespace":
            obj.setdefault("status", {}).setdefault("phase", "Active")
            # the API server gives every Namespace the `kubernetes` finalizer, which the namespace
            # controller removes once the namespace is empty
            if isinstance(spec, dict) or spec is None:
                obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def _create(self, served: ServedKind, namespace: str | None, body: Any, *, dry_run: bool) -> Obj:
        if not isinstance(body, dict):
            raise ApiFailure(400, "BadRequest", "the body of the request must be a JSON object")
        body.setdefault("apiVersion", served.api_version)
        body.setdefault("kind", served.kind)
        if body["apiVersion"] != served.api_version or body["kind"] != served.kind:
            raise ApiFailure(
                400,
                "BadRequest",
                f"the object is a {body['kind']} of {body['apiVersion']}, "
                f"sent to {served.qualified} of {served.api_version}",
            )
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            metadata = body["metadata"] = {}
        if not metadata.get("name"):
            generate = metadata.get("generateName")
            if not generate:
                raise ApiFailure(
                    422,
                    "Invalid",
                    f"{served.kind} is invalid: metadata.name: Required value: name or generateName is required",
                    {"kind": served.kind},
                )
            metadata["name"] = f"{generate}{secrets.token_hex(3)[:5]}"
        name = metadata["name"]
        if served.namespaced:
            body_ns = metadata.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiFailure(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or body_ns
            self._require_namespace(served, namespace)
            self._refuse_terminating(served, namespace, str(name))
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if metadata.get("resourceVersion"):
            raise ApiFailure(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        if self._stored(served, namespace, name) is not None:
            raise ApiFailure(
                409,
                "AlreadyExists",
                f'{served.qualified} "{name}" already exists',
                {"name": name, "group": served.group, "kind": served.plural},
            )
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _now()
        metadata.pop("deletionTimestamp", None)
        if "spec" in body:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        if served.has_status:
            body.pop("status", None)
        body = self._pruned(served, body)
        self._defaults(served, body)
        self._check(served, body)
        if served.kind == "Pod" and self.admission:
            self._admit_pod(body, str(namespace))
        if dry_run:
            return body
        stored = self._store(served, body, "ADDED")
        if served.kind == "CustomResourceDefinition":
            return self._install_crd(stored)
        return stored

    def _pruned(self, served: ServedKind, obj: Obj) -> Obj:
        """A custom object as its CRD's structural schema keeps it (unknown fields pruned, defaults
        set); other objects as given. Creating one while its CRD is being deleted is refused."""
        custom = self.custom.get((served.group, served.version, served.plural))
        if custom is None:
            return obj
        crd = self.read(CRD_API_VERSION, "CustomResourceDefinition", custom.crd) or {}
        if crd.get("metadata", {}).get("deletionTimestamp") and not self._stored(
                served, obj["metadata"].get("namespace"), obj["metadata"]["name"]):
            raise ApiFailure(405, "MethodNotAllowed",
                             "create not allowed while custom resource definition is terminating")
        dropped: list[str] = []
        pruned: Obj = prune(custom.schema, obj, root=True, dropped=dropped)
        if dropped and self._field_validation == "Strict":
            # k8s.io/apiserver/pkg/endpoints/handlers: fieldValidation=Strict (what kubectl's
            # default --validate=strict asks for) refuses unknown fields instead of pruning them
            raise ApiFailure(400, "BadRequest", "strict decoding error: "
                             + ", ".join(f'unknown field "{field}"' for field in dropped))
        return pruned

    def _admit_pod(self, pod: Obj, namespace: str) -> None:
        """Pod Security and ResourceQuota admission (see `admission`): 403 Forbidden as the API
        server answers, with its message."""
        namespace_obj = self.read("v1", "Namespace", namespace) or {}
        labels = (namespace_obj.get("metadata") or {}).get("labels") or {}
        message = admission.pod_security_message(pod, labels) or admission.quota_message(
            pod, self.items("v1", "ResourceQuota", namespace), self.items("v1", "Pod", namespace))
        if message is not None:
            raise ApiFailure(403, "Forbidden", message, {"name": pod["metadata"]["name"], "kind": "pods"})

    def _finish_update(self, served: ServedKind, old: Obj, new: Obj, *, subresource: str | None, dry_run: bool) -> Obj:
        """Keep what a write may not change, bump generation, validate and store (unless a no-op)."""
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if served.has_status:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
        old_meta = old["metadata"]
        meta = result.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiFailure(400, "BadRequest", "metadata must be an object")
        if meta.get("name") != old_meta["name"]:
            raise ApiFailure(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({old_meta['name']})",
            )
        if served.namespaced and meta.get("namespace", old_meta.get("namespace")) != old_meta.get("namespace"):
            raise ApiFailure(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        for kept in ("uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp"):
            if kept in old_meta:
                meta[kept] = old_meta[kept]
            else:
                meta.pop(kept, None)
        result["apiVersion"] = old["apiVersion"]
        result["kind"] = old["kind"]
        result = self._pruned(served, result)
        meta = result["metadata"]
        if served.kind == "Service" and subresource != "status":
            _keep_cluster_ips(old, result)
        if (served.group, served.version, served.plural) in self.custom:
            # a custom object's generation counts every change but metadata (and status, when
            # its CRD has the status subresource)
            kept = ("metadata", "status") if served.has_status else ("metadata",)
            if {k: v for k, v in old.items() if k not in kept} != {k: v for k, v in result.items() if k not in kept}:
                meta["generation"] = int(old_meta.get("generation") or 0) + 1
        elif old.get("spec") != result.get("spec") and "spec" in result:
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if _without_resource_version(result) == _without_resource_version(old):
            return old  # nothing changed: no write, no new resourceVersion
        if subresource != "status":
            problems = immutable_problems(served.kind, old, result)
            if problems:
                raise self._invalid(served, str(old_meta["name"]), problems)
        if served.kind == "CustomResourceDefinition" and subresource != "status":
            before, after = (old.get("spec") or {}).get("scope"), (result.get("spec") or {}).get("scope")
            if before != after:
                raise self._invalid(served, str(old_meta["name"]),
                                    [f'spec.scope: Invalid value: "{after}": {FIELD_IMMUTABLE}'])
        self._check(served, result)
        if dry_run:
            return result
        stored = self._store(served, result, "MODIFIED")
        if served.kind == "CustomResourceDefinition" and not stored["metadata"].get("deletionTimestamp"):
            return self._install_crd(stored)
        return stored

    def _current(self, served: ServedKind, namespace: str | None, name: str) -> Obj:
        # Only creation checks the namespace (as the NamespaceLifecycle admission does): any
        # other request in a namespace that is not there finds no object.
        old = self._stored(served, namespace, name)
        if old is None:
            raise self._not_found(served, name)
        return old

    def _conflict_check(self, served: ServedKind, old: Obj, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata")
        wanted = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
            raise ApiFailure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {served.qualified} "{old["metadata"]["name"]}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": old["metadata"]["name"], "group": served.group, "kind": served.plural},
            )

    def _update(
        self,
        served: ServedKind,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> Obj:
        old = self._current(served, namespace, name)
        if not isinstance(body, dict):
            raise ApiFailure(400, "BadRequest", "the body of the request must be a JSON object")
        self._conflict_check(served, old, body)
        return self._finish_update(served, old, body, subresource=subresource, dry_run=dry_run)

    def _patch(
        self,
        served: ServedKind,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> Obj:
        old = self._current(served, namespace, name)
        if not isinstance(patch, dict):
            raise ApiFailure(400, "BadRequest", "a merge patch must be a JSON object")
        self._conflict_check(served, old, patch)
        merged = merge_patch(old, patch)
        return self._finish_update(served, old, merged, subresource=subresource, dry_run=dry_run)

    def _delete(self, served: ServedKind, namespace: str | None, name: str, *, dry_run: bool,
                policy: str = "Background") -> Obj:
        old = self._current(served, namespace, name)
        if dry_run:
            return old
        if served.kind == "CustomResourceDefinition":
            # the CRD stays, Terminating, until its objects are gone (see `settle`)
            if not old["metadata"].get("deletionTimestamp"):
                old["metadata"]["deletionTimestamp"] = _now()
                finalizers = old["metadata"].setdefault("finalizers", [])
                if CRD_CLEANUP_FINALIZER not in finalizers:
                    finalizers.append(CRD_CLEANUP_FINALIZER)
                conditions = old.setdefault("status", {}).setdefault("conditions", [])
                conditions[:] = [c for c in conditions if c.get("type") != "Terminating"] + [{
                    "type": "Terminating", "status": "True", "reason": "InstanceDeletionPending",
                    "message": "CustomResourceDefinition marked for deletion; its objects are being deleted",
                    "lastTransitionTime": _now()}]
                return self._store(served, old, "MODIFIED")
            return old
        if policy in ("Orphan", "Foreground") and served.kind != "Namespace" and self.garbage_collection:
            # the garbage collector finishes it: orphans the dependents, or deletes them first
            finalizer = "orphan" if policy == "Orphan" else "foregroundDeletion"
            finalizers = old["metadata"].setdefault("finalizers", [])
            if finalizer not in finalizers:
                finalizers.append(finalizer)
                old["metadata"].setdefault("deletionTimestamp", _now())
                return self._store(served, old, "MODIFIED")
            return old
        if served.kind == "Namespace" and (old.get("spec") or {}).get("finalizers"):
            # Terminating until the namespace controller has emptied it and removed its finalizer
            # (a cluster simulator's tick, or `finalize_namespace`)
            if not old["metadata"].get("deletionTimestamp"):
                old["metadata"]["deletionTimestamp"] = _now()
                old.setdefault("status", {})["phase"] = "Terminating"
                return self._store(served, old, "MODIFIED")
            return old
        if old["metadata"].get("finalizers"):
            if not old["metadata"].get("deletionTimestamp"):
                old["metadata"]["deletionTimestamp"] = _now()
                return self._store(served, old, "MODIFIED")
            return old
        self._store(served, old, "DELETED")
        if served.kind == "Namespace":
            self._delete_contents(name)
        return old

    @staticmethod
    def _propagation(request: rendering.Request, body: Any) -> str:
        """DeleteOptions' propagationPolicy (query or body; orphanDependents=true is Orphan);
        Background when unset, as for every kind served through apps/v1 and later."""
        options = body if isinstance(body, Mapping) else {}
        policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
        orphan = request.params.get("orphanDependents") or options.get("orphanDependents")
        if policy is None and orphan in (True, "true"):
            policy = "Orphan"
        if policy is None:
            return "Background"
        if policy not in ("Foreground", "Background", "Orphan"):
            raise ApiFailure(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: '
                             f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                             '"Orphan"')
        return str(policy)

    # -------------------------------------------------------------- controllers run at once
    #
    # What the API server's own controllers would do shortly after a write, done at once after
    # every request (and `remove`): the CRD finalizer deletes a deleted CRD's objects, the garbage
    # collector (k8s.io/kubernetes/pkg/controller/garbagecollector; the "Garbage Collection" and
    # "Owners and Dependents" concept pages) deletes dependents whose owners are all absent,
    # orphans dependents of an owner deleted with the `orphan` finalizer and deletes an owner with
    # the `foregroundDeletion` finalizer once no dependent blocks it. An owner is absent when no
    # object of its apiVersion and kind has its name and uid in the dependent's namespace (or at
    # the cluster scope, for a cluster-scoped owner kind): a namespaced owner in another namespace
    # is absent. A cluster-scoped dependent naming a namespaced owner kind is never collected.

    def _install_crd(self, crd: Obj) -> Obj:
        """Serve a stored CRD's versions (discovery too) and mark it Established, as the API server's
        naming and establishing controllers do."""
        kinds = crd_kinds(crd)
        for key in [k for k, custom in self.custom.items() if custom.crd == crd["metadata"]["name"]]:
            del self.custom[key]
        for custom in kinds:
            served = custom.served
            key = (served.group, served.version, served.plural)
            self.kinds[key] = served
            self._discover(served)
            info = self.resources[served.resource]
            info.shortnames = set(crd["spec"]["names"].get("shortNames") or [])
            info.categories = set(crd["spec"]["names"].get("categories") or [])
            self.custom[key] = custom
        storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        now = _now()
        status = {
            "acceptedNames": copy.deepcopy(crd["spec"]["names"]),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": sorted(set((crd.get("status") or {}).get("storedVersions") or []) | {storage}),
        }
        old_status = crd.get("status") or {}
        if (old_status.get("acceptedNames") == status["acceptedNames"]
                and old_status.get("storedVersions") == status["storedVersions"]
                and {c.get("type") for c in old_status.get("conditions") or []} >= {"NamesAccepted", "Established"}):
            return crd
        crd["status"] = status
        return self._store(self.served(CRD_API_VERSION, "CustomResourceDefinition"), crd, "MODIFIED")

    def _uninstall_crd(self, name: str) -> None:
        for key in [k for k, custom in self.custom.items() if custom.crd == name]:
            served = self.custom.pop(key).served
            self.kinds.pop(key, None)
            if served.resource in self.resources:
                del self.resources[served.resource]

    def settle(self) -> None:
        """Run the controllers above until nothing changes (bounded). What they act on is the stored
        objects and the served kinds only: when neither changed since a settle that found nothing
        to do, there is nothing to do (a read costs no pass over every object)."""
        state = (self._last_rv, len(self.kinds), self.garbage_collection)
        if state == self._settled:
            return
        for _ in range(20):
            if not self._settle_once():
                self._settled = (self._last_rv, len(self.kinds), self.garbage_collection)
                return

    def _live(self) -> list[tuple[ServedKind, Obj]]:
        by_resource = {served.resource: served for served in self.kinds.values()}
        found = []
        for (resource, _ns, _name), stored in self.objects.items():
            if not stored.deleted and resource in by_resource:
                found.append((by_resource[resource], stored.raw))
        return found

    def _settle_once(self) -> bool:
        changed = False
        live = self._live()
        # a deleted object whose last finalizer is gone goes (a namespace waits for its own
        # spec.finalizers, a pod for its kubelet's graceful termination)
        for served, obj in live:
            meta = obj["metadata"]
            if (meta.get("deletionTimestamp") and not meta.get("finalizers") and served.kind not in ("Namespace", "Pod")
                    and not meta.get("deletionGracePeriodSeconds")):
                self._store(served, copy.deepcopy(obj), "DELETED")
                changed = True
        if changed:
            return True
        for served, obj in live:
            if served.kind == "CustomResourceDefinition" and obj["metadata"].get("deletionTimestamp"):
                changed |= self._clean_up_crd(served, obj)
        if changed or not self.garbage_collection:
            return changed
        return self._collect_garbage(live)

    def _clean_up_crd(self, served: ServedKind, crd: Obj) -> bool:
        name = crd["metadata"]["name"]
        kinds = [custom.served for custom in self.custom.values() if custom.crd == name]
        remaining = [(kind, obj) for kind in kinds for obj in self._listing(kind, None)]
        changed = False
        for kind, obj in remaining:
            if not obj["metadata"].get("deletionTimestamp"):
                self._delete(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"], dry_run=False)
                changed = True
        if not remaining and CRD_CLEANUP_FINALIZER in (crd["metadata"].get("finalizers") or []):
            updated = copy.deepcopy(crd)
            updated["metadata"]["finalizers"] = [
                f for f in updated["metadata"]["finalizers"] if f != CRD_CLEANUP_FINALIZER]
            self._store(served, updated, "MODIFIED")
            changed = True
        return changed

    def _collect_garbage(self, live: list[tuple[ServedKind, Obj]]) -> bool:
        by_identity: dict[tuple[str, str, str | None, str], Obj] = {}
        for served, obj in live:
            meta = obj["metadata"]
            by_identity[(served.api_version, served.kind, meta.get("namespace"), meta["name"])] = obj
        by_uid = {obj["metadata"]["uid"]: (served, obj) for served, obj in live if obj["metadata"].get("uid")}
        dependents: dict[str, list[tuple[ServedKind, Obj, Mapping[str, Any]]]] = {}
        changed = False
        for served, obj in live:
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs:
                continue
            states = []
            for ref in refs:
                owner_kind = self._owner_kind(str(ref.get("apiVersion")), str(ref.get("kind")))
                if owner_kind is None or (owner_kind.namespaced and not served.namespaced):
                    states.append("unresolvable")
                    continue
                owner_ns = obj["metadata"].get("namespace") if owner_kind.namespaced else None
                owner = by_identity.get((owner_kind.api_version, owner_kind.kind, owner_ns, str(ref.get("name"))))
                if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
                    states.append("absent")
                    continue
                dependents.setdefault(owner["metadata"]["uid"], []).append((served, obj, ref))
                being_deleted = "foregroundDeletion" in (owner["metadata"].get("finalizers") or [])
                states.append("waiting" if being_deleted and owner["metadata"].get("deletionTimestamp") else "solid")
            meta = obj["metadata"]
            if "solid" in states or "unresolvable" in states:
                if "absent" in states:  # the dangling references go; the object stays
                    updated = copy.deepcopy(obj)
                    updated["metadata"]["ownerReferences"] = [
                        r for r, state in zip(refs, states, strict=True) if state != "absent"]
                    self._store(served, updated, "MODIFIED")
                    changed = True
                continue
            if not meta.get("deletionTimestamp"):
                policy = "Foreground" if "waiting" in states else "Background"
                self._delete(served, meta.get("namespace"), meta["name"], dry_run=False, policy=policy)
                changed = True
        for uid, (served, owner) in by_uid.items():
            meta = owner["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if not meta.get("deletionTimestamp"):
                continue
            mine = dependents.get(uid, [])
            if "orphan" in finalizers:
                for dep_served, dependent, _ref in mine:
                    updated = copy.deepcopy(dependent)
                    updated["metadata"]["ownerReferences"] = [
                        r for r in updated["metadata"]["ownerReferences"] if r.get("uid") != uid]
                    if not updated["metadata"]["ownerReferences"]:
                        del updated["metadata"]["ownerReferences"]
                    self._store(dep_served, updated, "MODIFIED")
                finalizers.remove("orphan")
            elif "foregroundDeletion" in finalizers:
                if any(ref.get("blockOwnerDeletion") for _s, _d, ref in mine):
                    continue  # waits for its blocking dependents (deleted above, in the foreground)
                finalizers.remove("foregroundDeletion")
            else:
                continue
            updated = copy.deepcopy(owner)
            updated["metadata"]["finalizers"] = finalizers
            self._store(served, updated, "MODIFIED")
            changed = True
        return changed

    def _owner_kind(self, api_version: str, kind: str) -> ServedKind | None:
        for served in self.kinds.values():
            if served.api_version == api_version and served.kind == kind:
                return served
        return None

    def _review(self, body: Any, served: ServedKind | None = None) -> Obj:
        if not isinstance(body, dict):
            raise ApiFailure(400, "BadRequest", "the body of the request must be a JSON object")
        spec = body.get("spec") or {}
        attributes = spec.get("resourceAttributes") or {}
        verb = str(attributes.get("verb") or "")
        resource = str(attributes.get("resource") or "")
        if attributes.get("subresource"):
            resource += "/" + str(attributes["subresource"])
        group = str(attributes.get("group") or "")
        namespace = str(attributes.get("namespace") or "")
        answer = copy.deepcopy(body)
        answer.setdefault("metadata", {})["creationTimestamp"] = None
        if served is not None and served.kind == "SubjectAccessReview":
            user = str(spec.get("user") or "")
            if not user and not spec.get("groups"):
                # k8s.io/kubernetes/pkg/apis/authorization/validation/validation.go
                raise ApiFailure(422, "Invalid", 'SubjectAccessReview.authorization.k8s.io "" is invalid: '
                                 "spec.user: Invalid value: \"\": at least one of user or group must be specified")
            allowed, reason = self.rbac_decision(user, [str(g) for g in spec.get("groups") or []],
                                                 verb, resource, group, namespace, str(attributes.get("name") or ""))
            answer["status"] = {"allowed": allowed}
            if reason:
                answer["status"]["reason"] = reason
            return answer
        allowed = self.permissions is None or any(p.allows(verb, resource, group, namespace) for p in self.permissions)
        answer["status"] = {"allowed": allowed}
        if not allowed:
            answer["status"]["reason"] = "no rule in the emulator's permissions allows it"
        return answer

    def rbac_decision(self, user: str, groups: list[str], verb: str, resource: str, group: str,
                      namespace: str, name: str = "") -> tuple[bool, str]:
        """What the RBAC authorizer answers for the stored Roles, ClusterRoles and bindings
        (k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac/rbac.go and
        pkg/registry/rbac/validation/rule.go): allowed with "RBAC: allowed by RoleBinding
        \"<name>/<namespace>\" of Role \"<role>\" to ServiceAccount \"<name>/<namespace>\"", else no
        opinion (denied, empty reason)."""
        rbac = "rbac.authorization.k8s.io/v1"

        def subject_matches(subject: Mapping[str, Any], binding_namespace: str) -> bool:
            kind = subject.get("kind")
            if kind == "ServiceAccount":
                ns = subject.get("namespace") or binding_namespace
                return user == f"system:serviceaccount:{ns}:{subject.get('name')}"
            if kind == "User":
                return user == subject.get("name")
            if kind == "Group":
                return subject.get("name") in groups
            return False

        def rule_allows(rule: Mapping[str, Any]) -> bool:
            def has(values: Any, wanted: str) -> bool:
                return isinstance(values, list) and ("*" in values or wanted in values)
            names = rule.get("resourceNames") or []
            return (has(rule.get("verbs"), verb) and has(rule.get("apiGroups"), group)
                    and has(rule.get("resources"), resource) and (not names or name in names))

        def describe(subject: Mapping[str, Any], binding_namespace: str) -> str:
            if subject.get("kind") == "ServiceAccount":
                return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
            return f'{subject.get("kind")} "{subject.get("name")}"'

        def role_rules(ref: Mapping[str, Any], binding_namespace: str | None) -> list[Any]:
            if ref.get("kind") == "Role" and binding_namespace:
                found = self.read(rbac, "Role", str(ref.get("name")), binding_namespace)
            elif ref.get("kind") == "ClusterRole":
                found = self.read(rbac, "ClusterRole", str(ref.get("name")))
            else:
                found = None
            return list((found or {}).get("rules") or [])

        for binding in self.items(rbac, "ClusterRoleBinding"):
            for subject in binding.get("subjects") or []:
                if subject_matches(subject, "") and any(rule_allows(r) for r in role_rules(binding["roleRef"], None)):
                    return True, (f'RBAC: allowed by ClusterRoleBinding "{binding["metadata"]["name"]}" of ClusterRole '
                                  f'"{binding["roleRef"]["name"]}" to {describe(subject, "")}')
        if namespace:
            for binding in self.items(rbac, "RoleBinding", namespace):
                for subject in binding.get("subjects") or []:
                    if subject_matches(subject, namespace) and any(
                            rule_allows(r) for r in role_rules(binding["roleRef"], namespace)):
                        ref = binding["roleRef"]
                        return True, (f'RBAC: allowed by RoleBinding "{binding["metadata"]["name"]}/{namespace}" of '
                                      f'{ref["kind"]} "{ref["name"]}" to {describe(subject, namespace)}')
        return False, ""

    # -------------------------------------------------------------- HTTP

    def _route(self, path: str) -> tuple[ServedKind, str | None, str | None, str | None] | None:
        """(kind, namespace, name, subresource) of an object or collection path; None otherwise."""
        parts = [p for p in path.strip("/").split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        if not rest:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        subresource = "/".join(rest[2:]) or None
        served = self.kinds.get((group, version, plural))
        if served is None:
            raise ApiFailure(
                404, "NotFound", "the server could not find the requested resource", {"group": group, "kind": plural}
            )
        return served, namespace, name, subresource

    @property
    def requests_made(self) -> list[rendering.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse a collection path whose resource is "namespaces" (/api/v1/namespaces):
        # such requests are recorded and served here; everything else goes through kmock.
        parts = [p for p in raw_request.path.strip("/").split("/") if p]
        if parts[-1:] == ["namespaces"] and parts[:1] in (["api"], ["apis"]):
            body = await raw_request.read()
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            request = rendering.Request(
                id=len(self._requests),
                raw_request=raw_request,
                method=raw_request.method,
                url=raw_request.url,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode(errors="replace"),
                data=data,
            )
            self._requests.append(request)
            return await self._handle(request)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        path = request.url.path
        try:
            routed = self._route(path)
            if routed is None:
                return await super()._handle(request)
            served, namespace, name, subresource = routed
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                self._authorize(request, "WATCH", served, namespace, None, subresource)
                return await self._watch(request, served, namespace if served.namespaced else None)
            for held in self.holds:
                if held.matches(method, served.plural):
                    held.waiting += 1
                    try:
                        await held.opened.wait()
                    finally:
                        held.waiting -= 1
            for fault in self.faults:
                if fault.matches(method, served.plural, name):
                    fault.times -= 1
                    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                    if fault.body is not None:
                        headers["Content-Type"] = fault.content_type
                        return aiohttp.web.Response(body=fault.body, status=fault.status, headers=headers)
                    reasons = {
                        409: "Conflict",
                        429: "TooManyRequests",
                        403: "Forbidden",
                        422: "Invalid",
                        500: "InternalError",
                        503: "ServiceUnavailable",
                    }
                    raise ApiFailure(fault.status, reasons.get(fault.status, "Unknown"), fault.message, headers=headers)
            self._authorize(request, method, served, namespace, name, subresource)
            payload, code = self._serve(method, request, served, namespace, name, subresource)
            self.settle()
        except ApiFailure as failure:
            await self.publish()
            return aiohttp.web.json_response(failure.status(), status=failure.code, headers=failure.headers)
        await self.publish()
        return aiohttp.web.json_response(payload, status=code)

    def _authorize(self, request: rendering.Request, method: str, served: ServedKind, namespace: str | None,
                   name: str | None, subresource: str | None) -> None:
        """A request bearing one of `tokens` is made by that token's user and authorized by RBAC
        from the stored Roles and bindings (other requests are the kubeconfig's admin). Refused as
        the API server refuses, k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go
        (forbiddenMessage) inside apierrors.NewForbidden: `<resource>.<group> "<name>" is
        forbidden: User "<user>" cannot <verb> resource "<resource>" in API group "<group>" in the
        namespace "<namespace>"`."""
        header = str(request.headers.get("Authorization", ""))
        user = self.tokens.get(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None
        if user is None:
            return
        verb = {"GET": "get" if name else "list", "WATCH": "watch", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())
        if served.kind in ("SelfSubjectAccessReview",):
            return  # every authenticated user may ask about itself
        resource = served.plural + (f"/{subresource}" if subresource else "")
        ns = namespace if served.namespaced else ""
        parts = user.split(":")
        groups = ["system:authenticated"]
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            groups += ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}"]
        allowed, _ = self.rbac_decision(user, groups, verb, resource, served.group, ns or "", name or "")
        self.authorized.append((user, verb, resource, served.group, allowed))
        if allowed:
            return
        where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        why = f'User "{user}" cannot {verb} resource "{resource}" in API group "{served.group}" {where}'
        qualified = served.plural + (f".{served.group}" if served.group else "")
        target = f'{qualified} "{name}"' if name else qualified
        raise ApiFailure(403, "Forbidden", f"{target} is forbidden: {why}",
                         {"name": name or "", "group": served.group, "kind": served.plural})

    # -------------------------------------------------------------- watch
    #
    # As the API server's watch (k8s.io/apiserver/pkg/storage/cacher and the "Efficient detection
    # of changes", "Watch bookmarks" and "Resource versions" sections of the Kubernetes API
    # concepts page): without a resourceVersion (or "0") the current objects come first as ADDED
    # events; from a resourceVersion, every change after it; a resourceVersion older than the kept
    # history is answered with an ERROR event carrying a 410 Expired Status "too old resource
    # version: <asked> (<oldest>)"; allowWatchBookmarks=true adds BOOKMARK events carrying the
    # current resourceVersion (every `bookmark_interval`, and before the watch times out);
    # sendInitialEvents=true ends the initial ADDED events with a BOOKMARK annotated
    # k8s.io/initial-events-end; timeoutSeconds ends the stream.

    def _watch_filter(self, served: ServedKind, namespace: str | None,
                      params: Mapping[str, str]) -> Callable[[Mapping[str, Any]], bool]:
        tests: list[Callable[[Mapping[str, Any]], bool]] = []
        if namespace is not None:
            tests.append(lambda obj: obj["metadata"].get("namespace") == namespace)
        if params.get("labelSelector"):
            try:
                selector = parse_selector(params["labelSelector"])
            except ValueError as exc:
                raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {exc}") from exc
            tests.append(lambda obj: selector(obj["metadata"].get("labels") or {}))
        for term in _split_selector(params.get("fieldSelector") or ""):
            key, _, value = term.replace("==", "=").partition("=")
            if key not in ("metadata.name", "metadata.namespace"):
                raise ApiFailure(400, "BadRequest", f'field label not supported: "{key}"')
            field = key.split(".")[1]
            tests.append(lambda obj, f=field, v=value: obj["metadata"].get(f) == v)
        return lambda obj: all(test(obj) for test in tests)

    async def _watch(self, request: rendering.Request, served: ServedKind,
                     namespace: str | None) -> aiohttp.web.StreamResponse:
        params = request.params
        matches = self._watch_filter(served, namespace, params)
        asked = params.get("resourceVersion") or ""
        if asked not in ("", "0") and not asked.isdigit():
            raise ApiFailure(400, "BadRequest", f'invalid resource version: "{asked}"')
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise ApiFailure(400, "BadRequest", f"timeoutSeconds: {exc}") from exc
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        raw = request._raw_request
        assert raw is not None
        await response.prepare(raw)

        async def send(event: Mapping[str, Any]) -> None:
            # a watcher that does not read (its buffers full) is closed, as the API server's
            # cacher closes an unresponsive watcher rather than wait for it
            try:
                await asyncio.wait_for(response.write(json.dumps(event).encode() + b"\n"),
                                       timeout=self.watch_write_timeout)
            except TimeoutError:
                if raw.transport is not None:
                    raw.transport.close()
                raise ConnectionResetError("the watcher does not read") from None

        def bookmark(annotations: Mapping[str, str] | None = None) -> Obj:
            metadata: Obj = {"resourceVersion": str(self._last_rv), "creationTimestamp": None}
            if annotations:
                metadata["annotations"] = dict(annotations)
            return {"type": "BOOKMARK", "object": {"kind": served.kind, "apiVersion": served.api_version,
                                                   "metadata": metadata}}

        def expired(since: int) -> Obj:
            return {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"too old resource version: {since} ({self.history_floor + 1})",
                "reason": "Expired", "code": 410}}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            if asked in ("", "0") or params.get("sendInitialEvents") == "true":
                last = self._last_rv
                for obj in sorted(self._listing(served, namespace),
                                  key=lambda o: int(o["metadata"].get("resourceVersion") or 0)):
                    if matches(obj):
                        await send({"type": "ADDED", "object": obj})
                if params.get("sendInitialEvents") == "true" and bookmarks:
                    await send(bookmark({"k8s.io/initial-events-end": "true"}))
            else:
                last = int(asked)
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                if last < self.history_floor:
                    await send(expired(last))
                    break
                start = bisect.bisect_right(self.history, last, key=lambda entry: entry[0])
                for rv, resource, event in self.history[start:]:
                    last = rv
                    if resource == served.resource and matches(event["object"]):
                        await send(event)
                now = loop.time()
                if deadline is not None and now >= deadline:
                    if bookmarks:
                        await send(bookmark())
                    break
                if bookmarks and now >= next_bookmark:
                    await send(bookmark())
                    next_bookmark = now + self.bookmark_interval
                if self._wakeup is None:
                    self._wakeup = asyncio.Event()
                wakeup = self._wakeup
                # a second at most, to notice a client that went away or a server that stops
                waits = [next_bookmark - now if bookmarks else 1.0, 1.0]
                if deadline is not None:
                    waits.append(deadline - now)
                with suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=max(0.0, min(waits)))
                if wakeup.is_set() and self._wakeup is wakeup:
                    self._wakeup = asyncio.Event()  # the next writes wake every watcher again
                if self._closing or raw.transport is None or raw.transport.is_closing():
                    return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    def _serve(
        self,
        method: str,
        request: rendering.Request,
        served: ServedKind,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
    ) -> tuple[Obj, int]:
        self._field_validation = str(request.params.get("fieldValidation") or "")
        try:
            return self._serve_request(method, request, served, namespace, name, subresource)
        finally:
            self._field_validation = ""

    def _serve_request(self, method: str, request: rendering.Request, served: ServedKind, namespace: str | None,
                       name: str | None, subresource: str | None) -> tuple[Obj, int]:
        dry_run = request.params.get("dryRun") == "All"
        if not served.namespaced:
            namespace = None
        if subresource not in (None, "status") or (subresource == "status" and not served.has_status):
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and name is None:
            return self._list(served, namespace, request.params), 200
        if method == "GET" and name is not None:
            if served.namespaced and not namespace:
                raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
            stored = self._stored(served, namespace, name)
            if stored is None:
                raise self._not_found(served, name)
            return stored, 200
        body = self._body(request)
        if method == "POST" and name is None:
            if served.kind in ("SelfSubjectAccessReview", "SubjectAccessReview"):
                return self._review(body, served), 201
            return self._create(served, namespace, body, dry_run=dry_run), 201
        if method == "PUT" and name is not None:
            return self._update(served, namespace, name, body, subresource=subresource, dry_run=dry_run), 200
        if method == "PATCH" and name is not None:
            content_type = str(request.headers.get("Content-Type", "")).split(";")[0].strip().lower()
            if content_type != MERGE_PATCH:
                raise ApiFailure(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: {MERGE_PATCH}"
                    + (f" (not {content_type})" if content_type else ""),
                )
            return self._patch(served, namespace, name, body, subresource=subresource, dry_run=dry_run), 200
        if method == "DELETE" and name is not None:
            return self._delete(served, namespace, name, dry_run=dry_run,
                                policy=self._propagation(request, body)), 200
        raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        if not request.body:
            return None
        try:
            return json.loads(request.body)
        except ValueError as exc:
            raise ApiFailure(400, "BadRequest", f"the body of the request is not JSON: {exc}") from exc

    def _list(self, served: ServedKind, namespace: str | None, params: Mapping[str, str]) -> Obj:
        selector = params.get("labelSelector")
        test: Callable[[Mapping[str, str]], bool] | None = None
        if selector:
            try:
                test = parse_selector(selector)
            except ValueError as exc:
                raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {exc}") from exc
        found = self._listing(served, namespace, None if test is None else (
            lambda o: test((o.get("metadata") or {}).get("labels") or {})))
        field_selector = params.get("fieldSelector")
        if field_selector:
            for term in _split_selector(field_selector):
                key, _, value = term.replace("==", "=").partition("=")
                if key == "metadata.name":
                    found = [o for o in found if o["metadata"]["name"] == value]
                elif key == "metadata.namespace":
                    found = [o for o in found if o["metadata"].get("namespace") == value]
                else:
                    raise ApiFailure(400, "BadRequest", f'field label not supported: "{key}"')
        found.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return {
            "apiVersion": served.api_version,
            "kind": f"{served.kind}List",
            "metadata": {"resourceVersion": str(self.latest_resource_version)},
            "items": found,
        }

    @property
    def latest_resource_version(self) -> int:
        """The resourceVersion of the last write."""
        return self._last_rv


@dataclass
class ApiHandle:
    """What the `kube_api` fixture yields: the emulator on loopback and a kubeconfig for it.

    - `url`, `kubeconfig` (a Path), `context`, `namespace` (created, the environments' default);
    - `environment(name="production", **fields)`: an `Environment` whose cluster, kubeconfig and
      namespace point here (platform `kubernetes`);
    - `client(namespace=None)`: a `KubeClient` for this server (close it, or `async with` it);
    - `read`, `items`, `write`, `put`, `remove`, `ensure_namespace`: the emulator's direct access
      (see `KubeEmulator`); `emulator` itself for `fail(...)`, `permissions`, `objects`, `requests`.
    """

    emulator: KubeEmulator
    url: str
    kubeconfig: Path
    context: str
    namespace: str = "default"

    def environment(self, name: str = "production", **fields: Any) -> Any:
        from safeship.config.models import Environment

        values: dict[str, Any] = {
            "name": name,
            "platform": "kubernetes",
            "cluster": self.context,
            "kubeconfig": str(self.kubeconfig),
            "namespace": self.namespace,
        }
        values.update(fields)
        return Environment.model_validate(values)

    def client(self, namespace: str | None = None) -> kube_client.KubeClient:
        return kube_client.KubeClient.from_kubeconfig(
            str(self.kubeconfig), context=self.context, namespace=namespace or self.namespace
        )

    def read(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        return self.emulator.read(api_version, kind, name, namespace or self.namespace)

    def items(
        self, api_version: str, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Obj]:
        return self.emulator.items(api_version, kind, namespace or self.namespace, labels)

    def write(self, obj: Mapping[str, Any], *, status: bool = False) -> Obj:
        return self.emulator.write(self._in_namespace(obj), status=status)

    def put(self, obj: Mapping[str, Any]) -> Obj:
        return self.emulator.put(self._in_namespace(obj))

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.emulator.remove(api_version, kind, name, namespace or self.namespace)

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        return self.emulator.ensure_namespace(name, labels)

    def _in_namespace(self, obj: Mapping[str, Any]) -> Obj:
        body = copy.deepcopy(dict(obj))
        served = self.emulator.served(str(body.get("apiVersion")), str(body.get("kind")))
        if served.namespaced:
            body.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        return body


def write_kubeconfig(path: Path, url: str, context: str, namespace: str, token: str = "emulator-token") -> Path:
    """A kubeconfig with one cluster (the emulator), one token user and one context."""
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def running_emulator(
    directory: Path, *, context: str = "emulator", namespace: str = "default", **options: Any
) -> AsyncIterator[ApiHandle]:
    """Start a `KubeEmulator` on loopback with namespaces default, kube-system and `namespace`,
    write a kubeconfig for it in `directory`, and stop it on the way out (also on failure)."""
    emulator = KubeEmulator(**options)
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        for name in dict.fromkeys(["default", "kube-system", namespace]):
            emulator.ensure_namespace(name)
        await emulator.publish()
        kubeconfig = write_kubeconfig(directory / "kubeconfig", url, context, namespace)
        try:
            yield ApiHandle(emulator=emulator, url=url, kubeconfig=kubeconfig, context=context, namespace=namespace)
        finally:
            await emulator.end_watches()  # else the server would wait for its watch streams
