"""Whether NetworkPolicies let a connection reach a pod: the ingress rules of networking.k8s.io/v1
as a CNI that enforces them applies them (k8s.io/api/networking/v1/types.go). Pure functions over
plain dicts; `environment-manager --validate` uses them for the traffic a config implies (the
gateway, Prometheus and a load balancer to the service's pods).

- A pod is isolated for ingress when a policy of its namespace with `Ingress` in its policyTypes
  (the default when the policy has ingress rules or names no types) selects it; a pod no such
  policy selects accepts everything.
- An isolated pod accepts a connection when one of the policies that select it has an ingress rule
  that allows it: a rule without `from` allows every source, else one of its peers must match; a
  rule without `ports` allows every port, else one must match (by number, range, or the name of
  the destination container's port).
- A peer with only `podSelector` matches pods of the policy's own namespace; with only
  `namespaceSelector`, every pod of the namespaces it selects; with both, the pods it selects in
  those namespaces; `ipBlock` matches addresses, here only a source outside the cluster (a load
  balancer's clients) and only for a block of every address (`0.0.0.0/0` or `::/0`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Peer:
    """The source of a connection: a pod (its labels) of a namespace (its labels), or (`outside`) a
    client outside the cluster."""

    namespace: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    outside: bool = False


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against labels; an empty one matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op = expression.get("key"), expression.get("operator")
        values = set(expression.get("values") or [])
        if ((op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values)
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels)):
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], source: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return source.outside and (peer["ipBlock"] or {}).get("cidr") in ("0.0.0.0/0", "::/0")
    if source.outside:
        return False
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = source.namespace == policy_namespace
    else:
        in_namespace = selector_matches(namespaces, source.namespace_labels)
    return in_namespace and (pods is None or selector_matches(pods, source.pod_labels))


def _port_matches(port: Mapping[str, Any], number: int, name: str) -> bool:
    if port.get("protocol", "TCP") != "TCP":
        return False
    wanted = port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, int):
        end = port.get("endPort")
        return wanted <= number <= int(end) if end is not None else wanted == number
    return bool(wanted == name)


def _types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    given = spec.get("policyTypes")
    if given:
        return list(given)
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def admits(policies: Sequence[Mapping[str, Any]], namespace: str, pod_labels: Mapping[str, str], source: Peer,
           port: int, port_name: str = "") -> tuple[bool, list[str]]:
    """Whether a pod of `namespace` with `pod_labels` accepts a TCP connection from `source` on
    `port` (`port_name`: the container port's name), and the names of the policies that isolate it."""
    selecting = [p for p in policies
                 if (p.get("metadata") or {}).get("namespace", namespace) == namespace
                 and "Ingress" in _types(p)
                 and selector_matches((p.get("spec") or {}).get("podSelector"), pod_labels)]
    names = [str((p.get("metadata") or {}).get("name")) for p in selecting]
    if not selecting:
        return True, names
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            peers, ports = rule.get("from"), rule.get("ports")
            if peers and not any(_peer_matches(peer, source, namespace) for peer in peers):
                continue
            if ports and not any(_port_matches(p, port, port_name) for p in ports):
                continue
            return True, names
    return False, names
