"""The one way the engine and its callers get an analysis policy by name."""

from __future__ import annotations

from collections.abc import Callable

from safeship.analysis.base import Policy

PolicyFactory = Callable[[str], Policy]


def policy_for(name: str) -> Policy:
    """A fresh policy registered as `name` (`safeship.analysis.policies.get_policy`: an unknown
    name is an InputError listing the known ones). The policies are imported on first use: they
    pull in scipy, which costs half a second that a short command or a restarted controller
    should not spend before it needs a policy."""
    from safeship.analysis.policies import get_policy

    return get_policy(name)
