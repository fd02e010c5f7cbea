"""NetworkPolicy ingress evaluation for the tests, as a CNI that enforces networking.k8s.io/v1
NetworkPolicies decides it (the semantics of k8s.io/api/networking/v1/types.go):

- a pod is isolated for ingress when some policy in its namespace with `Ingress` in its
  policyTypes selects it (`podSelector`); a pod no such policy selects accepts everything;
- an isolated pod accepts a connection when at least one of the policies that select it has an
  ingress rule that allows it: a rule with no `from` allows every source, else one of its peers
  must match; a rule with no `ports` allows every port, else one must match;
- a peer with only `podSelector` matches pods of the policy's own namespace; with only
  `namespaceSelector`, every pod of the namespaces it selects; with both, the pods it selects in
  those namespaces; `ipBlock` matches addresses (sources here are pods, or `outside` for traffic
  from outside the cluster, which only a rule without `from` or with an ipBlock admits);
- a port matches by number or by the name of the destination container's port.

`admits(...)` answers (allowed, names of the policies that select the pod) so a test can say
which policy blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emulator import selector_matches

Obj = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    """The source of a connection: a pod with its labels in a namespace with its labels, or
    (`outside`) a client outside the cluster."""

    namespace: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    outside: bool = False


def _label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    return selector_matches(dict(selector or {}), dict(labels))


def _peer_matches(peer: Mapping[str, Any], source: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return source.outside and (peer["ipBlock"].get("cidr") in ("0.0.0.0/0", "::/0"))
    if source.outside:
        return False
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = source.namespace == policy_namespace
    else:
        in_namespace = _label_selector_matches(namespaces, source.namespace_labels)
    return in_namespace and (pods is None or _label_selector_matches(pods, source.pod_labels))


def _port_matches(port: Mapping[str, Any], number: int, name: str) -> bool:
    if port.get("protocol", "TCP") != "TCP":
        return False
    wanted = port.get("port")
    if wanted is None:
        return True
    end = port.get("endPort")
    if isinstance(wanted, int):
        return wanted <= number <= end if end is not None else wanted == number
    return bool(wanted == name)


def admits(policies: Sequence[Mapping[str, Any]], namespace: str, pod_labels: Mapping[str, str], source: Peer,
           port: int, port_name: str = "") -> tuple[bool, list[str]]:
    """Whether a pod (its namespace and labels) accepts a TCP connection from `source` on `port`
    (`port_name`: the container port's name), and the names of the policies that isolate it."""
    selecting = [p for p in policies
                 if (p.get("metadata") or {}).get("namespace", namespace) == namespace
                 and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
                 and _label_selector_matches((p.get("spec") or {}).get("podSelector"), pod_labels)]
    names = [str(p["metadata"]["name"]) for p in selecting]
    if not selecting:
        return True, names
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            peers = rule.get("from")
            ports = rule.get("ports")
            if peers and not any(_peer_matches(peer, source, namespace) for peer in peers):
                continue
            if ports and not any(_port_matches(p, port, port_name) for p in ports):
                continue
            return True, names
    return False, names
