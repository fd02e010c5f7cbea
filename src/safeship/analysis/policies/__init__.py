"""The deployment policies, registered by name: safeship's own and models of other systems.

Each model of another tool has two rows: its name runs the tool's documented defaults, and
`<name>-tuned` the most aggressive settings its docs give (shortest interval, lowest failure
threshold), so that no row of the comparison rests on a setting chosen for the tool to lose.

An unknown name is an error that lists the known ones; nothing falls back to a default.
"""

from __future__ import annotations

from safeship.analysis.base import Policy
from safeship.analysis.policies.argo import ArgoPolicy, ArgoTunedPolicy
from safeship.analysis.policies.flagger import FlaggerPolicy, FlaggerTunedPolicy
from safeship.analysis.policies.kayenta import KayentaPolicy, KayentaTunedPolicy
from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.analysis.policies.seed import SeedPolicy
from safeship.errors import InputError

POLICIES: dict[str, type[Policy]] = {
    "safeship": SafeshipPolicy,
    "seed": SeedPolicy,
    "flagger": FlaggerPolicy,
    "argo": ArgoPolicy,
    "kayenta": KayentaPolicy,
    "flagger-tuned": FlaggerTunedPolicy,
    "argo-tuned": ArgoTunedPolicy,
    "kayenta-tuned": KayentaTunedPolicy,
}


def get_policy(name: str) -> Policy:
    """A fresh policy for `name`; an unknown name raises InputError naming the known ones."""
    try:
        factory = POLICIES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise InputError(f"unknown policy {name!r}; known policies: {known}") from None
    return factory()


__all__ = [
    "POLICIES",
    "ArgoPolicy",
    "ArgoTunedPolicy",
    "FlaggerPolicy",
    "FlaggerTunedPolicy",
    "KayentaPolicy",
    "KayentaTunedPolicy",
    "SeedPolicy",
    "get_policy",
]
