"""NetworkPolicy evaluation for the tests: `safeship.kube.netpol` (what `--validate` uses)."""

from safeship.kube.netpol import Peer, admits

__all__ = ["Peer", "admits"]
