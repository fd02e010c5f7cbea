"""Admission the stand-in API server applies when a pod is created, as a real one does:

- **Pod Security Admission** for the namespace's `pod-security.kubernetes.io/enforce` level
  (`baseline` or `restricted`; no label, or `privileged`, admits everything). The checks and their
  words are the upstream ones, k8s.io/pod-security-admission/policy/check_*.go, in the order of
  their check IDs; the message is admission/admission.go's `violates PodSecurity "<level>:<version>":
  <reason> (<detail>), ...` inside apierrors.NewForbidden's `pods "<name>" is forbidden: ...`.
- **ResourceQuota** (`pods`, `requests.cpu`, `requests.memory`, `limits.cpu`, `limits.memory`) as
  k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go checks it: `exceeded quota:
  <quota>, requested: <r>, used: <u>, limited: <h>` (only the exceeded resources, `k=v` joined by
  commas), or `failed quota: <quota>: must specify <resources>` for a pod that names no request for
  a constrained resource. Usage is what the namespace's pods (not Succeeded or Failed) ask for, what
  the quota controller would report in `status.used`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION_LABEL = "pod-security.kubernetes.io/enforce-version"
# check_capabilities_baseline.go: the capabilities a container may add under baseline
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
QUOTA_RESOURCES = ("pods", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory")


def _containers(spec: Mapping[str, Any]) -> list[Obj]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key) or []]


def _named(names: list[str]) -> str:
    """`container "a"` or `containers "a", "b"`, as the checks name them."""
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"container {quoted}" if len(names) == 1 else f"containers {quoted}"


def pod_security_violations(pod: Mapping[str, Any], level: str) -> list[str]:
    """`<reason> (<detail>)` of each failed check of `level`, in check-ID order."""
    if level not in ("baseline", "restricted"):
        return []
    spec = pod.get("spec") or {}
    pod_security = spec.get("securityContext") or {}
    containers = _containers(spec)

    def context(container: Mapping[str, Any]) -> Mapping[str, Any]:
        return container.get("securityContext") or {}

    found: list[tuple[str, str]] = []  # (check id, "reason (detail)")
    if level == "restricted":  # check_allowPrivilegeEscalation.go
        bad = [c["name"] for c in containers if context(c).get("allowPrivilegeEscalation") is not False]
        if bad:
            found.append(("allowPrivilegeEscalation", f"allowPrivilegeEscalation != false ({_named(bad)} must set "
                          "securityContext.allowPrivilegeEscalation=false)"))
    added = {c["name"]: [str(x) for x in (context(c).get("capabilities") or {}).get("add") or []] for c in containers}
    non_default = {n: [a for a in caps if a not in BASELINE_CAPABILITIES] for n, caps in added.items()}
    if any(non_default.values()):  # check_capabilities_baseline.go
        names = [n for n, caps in non_default.items() if caps]
        caps = sorted({a for n in names for a in non_default[n]})
        found.append(("capabilities_baseline", f"non-default capabilities ({_named(names)} must not include "
                      + ", ".join(f'"{a}"' for a in caps) + " in securityContext.capabilities.add)"))
    if level == "restricted":  # check_capabilities_restricted.go
        details = []
        no_drop = [c["name"] for c in containers
                   if "ALL" not in ((context(c).get("capabilities") or {}).get("drop") or [])]
        if no_drop:
            details.append(f'{_named(no_drop)} must set securityContext.capabilities.drop=["ALL"]')
        adding = [n for n, caps in added.items() if any(a != "NET_BIND_SERVICE" for a in caps)]
        if adding:
            caps = sorted({a for n in adding for a in added[n] if a != "NET_BIND_SERVICE"})
            details.append(f"{_named(adding)} must not include " + ", ".join(f'"{a}"' for a in caps)
                           + " in securityContext.capabilities.add")
        if details:
            found.append(("capabilities_restricted", f"unrestricted capabilities ({'; '.join(details)})"))
    hosts = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    if hosts:  # check_hostNamespaces.go
        found.append(("hostNamespaces", f"host namespaces ({', '.join(hosts)})"))
    privileged = [c["name"] for c in containers if context(c).get("privileged") is True]
    if privileged:  # check_privileged.go
        found.append(("privileged", f"privileged ({_named(privileged)} must not set securityContext.privileged=true)"))
    if level == "restricted":
        # check_runAsNonRoot.go
        details = []
        if pod_security.get("runAsNonRoot") is False:
            details.append("pod must not set securityContext.runAsNonRoot=false")
        explicit_false = [c["name"] for c in containers if context(c).get("runAsNonRoot") is False]
        if explicit_false:
            details.append(f"{_named(explicit_false)} must not set securityContext.runAsNonRoot=false")
        if pod_security.get("runAsNonRoot") is not True:
            unset = [c["name"] for c in containers if context(c).get("runAsNonRoot") is None]
            if unset:
                details.append(f"pod or {_named(unset)} must set securityContext.runAsNonRoot=true")
        if details:
            found.append(("runAsNonRoot", f"runAsNonRoot != true ({'; '.join(details)})"))
        # check_runAsUser.go
        details = []
        if pod_security.get("runAsUser") == 0:
            details.append("pod must not set runAsUser=0")
        root = [c["name"] for c in containers if context(c).get("runAsUser") == 0]
        if root:
            details.append(f"{_named(root)} must not set runAsUser=0")
        if details:
            found.append(("runAsUser", f"runAsUser=0 ({'; '.join(details)})"))
        # check_seccompProfile_restricted.go
        details = []
        pod_type = (pod_security.get("seccompProfile") or {}).get("type")
        if pod_type is not None and pod_type not in ("RuntimeDefault", "Localhost"):
            details.append(f'pod must not set securityContext.seccompProfile.type to "{pod_type}"')
        allowed = (None, "RuntimeDefault", "Localhost")
        bad_type = [c["name"] for c in containers
                    if (context(c).get("seccompProfile") or {}).get("type") not in allowed]
        if bad_type:
            types = sorted({str(context(c)["seccompProfile"]["type"]) for c in containers if c["name"] in bad_type})
            details.append(f"{_named(bad_type)} must not set securityContext.seccompProfile.type to "
                           + ", ".join(f'"{t}"' for t in types))
        if pod_type is None:
            unset = [c["name"] for c in containers if (context(c).get("seccompProfile") or {}).get("type") is None]
            if unset:
                details.append(f'pod or {_named(unset)} must set securityContext.seccompProfile.type to '
                               '"RuntimeDefault" or "Localhost"')
        if details:
            found.append(("seccompProfile_restricted", f"seccompProfile ({'; '.join(details)})"))
    return [text for _, text in sorted(found)]


def pod_security_message(pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> str | None:
    """The Forbidden message for `pod` in a namespace with these labels; None when admitted."""
    level = namespace_labels.get(ENFORCE_LABEL, "privileged")
    violations = pod_security_violations(pod, level)
    if not violations:
        return None
    version = namespace_labels.get(ENFORCE_VERSION_LABEL, "latest")
    name = (pod.get("metadata") or {}).get("name", "")
    return f'pods "{name}" is forbidden: violates PodSecurity "{level}:{version}": ' + ", ".join(violations)


# ---------------------------------------------------------------- quota

_SUFFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _amount(value: Any) -> float:
    text = str(value).strip()
    for suffix in ("Ki", "Mi", "Gi", "Ti", "m", "k", "M", "G", "T"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def shown(resource: str, amount: float) -> str:
    """A quantity as the API server prints it: cpu in cores or millicores, memory in the largest
    binary suffix that divides it, counts as integers."""
    if resource.endswith("cpu"):
        milli = round(amount * 1000)
        return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
    if resource.endswith("memory"):
        whole = round(amount)
        for suffix in ("Ti", "Gi", "Mi", "Ki"):
            if whole and whole % int(_SUFFIXES[suffix]) == 0:
                return f"{whole // int(_SUFFIXES[suffix])}{suffix}"
        return str(whole)
    return str(round(amount))


def pod_usage(pod: Mapping[str, Any]) -> dict[str, float]:
    """What one pod counts against a quota (init containers: their maximum, as the quota does)."""
    spec = pod.get("spec") or {}
    usage = {"pods": 1.0}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            key = f"{kind}.{resource}"
            total = 0.0
            seen = False
            for container in spec.get("containers") or []:
                value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
                if value is not None:
                    total += _amount(value)
                    seen = True
            for container in spec.get("initContainers") or []:
                value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
                if value is not None:
                    total = max(total, _amount(value))
                    seen = True
            if seen:
                usage[key] = total
    return usage


def quota_message(pod: Mapping[str, Any], quotas: Iterable[Mapping[str, Any]],
                  pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The Forbidden message for creating `pod` beside the namespace's `pods` under `quotas`; None
    when every quota has room."""
    name = (pod.get("metadata") or {}).get("name", "")
    requested = pod_usage(pod)
    live = [p for p in pods if ((p.get("status") or {}).get("phase")) not in ("Succeeded", "Failed")]
    for quota in sorted(quotas, key=lambda q: str(q["metadata"]["name"])):
        hard = {k: _amount(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items() if k in QUOTA_RESOURCES}
        if not hard:
            continue
        quota_name = quota["metadata"]["name"]
        missing = sorted(k for k in hard if k not in requested)
        if missing:
            return f'pods "{name}" is forbidden: failed quota: {quota_name}: must specify {",".join(missing)}'
        used = dict.fromkeys(hard, 0.0)
        for other in live:
            for key, amount in pod_usage(other).items():
                if key in used:
                    used[key] += amount
        exceeded = sorted(k for k in hard if used[k] + requested[k] > hard[k] + 1e-9)
        if exceeded:
            return (f'pods "{name}" is forbidden: exceeded quota: {quota_name}, '
                    f"requested: {_listed(exceeded, requested)}, used: {_listed(exceeded, used)}, "
                    f"limited: {_listed(exceeded, hard)}")
    return None




def _listed(keys: list[str], values: Mapping[str, float]) -> str:
    return ",".join(f"{k}={shown(k, values[k])}" for k in keys)
