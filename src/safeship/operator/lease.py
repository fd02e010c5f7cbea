"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

One Lease (`safeship-operator` in the operator's namespace) names the holder. Every
`retry_s` each instance reads it and:

- holds it: renews (`renewTime`) with a merge patch carrying the Lease's resourceVersion;
- sees another holder whose record has not changed for `leaseDurationSeconds` (measured on this
  process's own monotonic clock from when it saw the record change, so clock skew between nodes
  does not matter), or no holder: takes it over with the same guarded patch, setting
  `holderIdentity`, `acquireTime`, `renewTime` and `leaseTransitions + 1`;
- finds no Lease: creates it (`leaseTransitions: 0`).

Two instances that race both send a patch guarded by the resourceVersion they read: the server
applies one and answers the other 409 Conflict, so at most one holds the Lease.

`leaseTransitions` is the fencing token: the holder writes it into every Release status it
writes (`status.leaderEpoch`), and refuses to write over a status written with a higher one.
The holder counts itself the leader only until `renew_deadline_s` after the start of its last
successful renewal (shorter than the lease duration, as client-go's RenewDeadline): from then on
`is_leader()` is False and nothing is written, before any other instance may take the Lease over.
A holder that stops cleanly releases the Lease (empty holder) so that another takes over at once.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safeship.errors import SafeshipError
from safeship.kube.client import KubeClient

log = logging.getLogger(__name__)

LEASE_API = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"


def micro_time(at: float | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseSettings:
    name: str = "safeship-operator"
    namespace: str = "safeship-system"
    identity: str = ""
    duration_s: float = 15.0  # leaseDurationSeconds: how long others wait after the last renewal
    renew_deadline_s: float = 10.0  # the holder stops acting this long after its last renewal began
    retry_s: float = 2.0  # how often each instance reads (and the holder renews) the Lease

    def problems(self) -> list[str]:
        found = []
        if not self.identity:
            found.append("the identity must not be empty")
        if not 0 < self.renew_deadline_s < self.duration_s:
            found.append(f"renew deadline ({self.renew_deadline_s:g}s) must be above 0 and below the lease "
                         f"duration ({self.duration_s:g}s)")
        if not 0 < self.retry_s < self.renew_deadline_s:
            found.append(f"retry period ({self.retry_s:g}s) must be above 0 and below the renew deadline "
                         f"({self.renew_deadline_s:g}s)")
        return found


class LeaderElector:
    """Holds (or waits for) the Lease; `is_leader()` says whether this instance may write now."""

    def __init__(self, kube: KubeClient, settings: LeaseSettings, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        problems = settings.problems()
        if problems:
            raise ValueError(f"lease {settings.namespace}/{settings.name}: {'; '.join(problems)}")
        self.kube = kube
        self.settings = settings
        self._monotonic = monotonic
        self._valid_until = 0.0  # monotonic time up to which this instance may act as the leader
        self.epoch = -1  # leaseTransitions when this instance took the Lease (the fencing token)
        self.holder = ""  # the holder as last read
        self._observed: tuple[str, str] | None = None  # (holderIdentity, renewTime) last seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self.transitions_seen = 0  # how many times this instance took the Lease

    @property
    def identity(self) -> str:
        return self.settings.identity

    def is_leader(self) -> bool:
        return self.epoch >= 0 and self._monotonic() < self._valid_until

    def lose(self) -> None:
        """Stop acting as the leader (a write found a newer fencing token, or the operator stops)."""
        if self.epoch >= 0:
            log.warning("%s: no longer the leader of lease %s/%s", self.identity, self.settings.namespace,
                        self.settings.name)
        self._valid_until = 0.0
        self.epoch = -1

    async def step(self) -> bool:
        """Read the Lease once and acquire or renew it when this instance may; whether it leads now."""
        started = self._monotonic()
        try:
            lease = await self.kube.get(LEASE_API, LEASE_KIND, self.settings.name, self.settings.namespace)
            if lease is None:
                created = await self.kube.create(self._lease_body(transitions=0, acquired=True))
                return self._took(created, started)
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            renewed = str(spec.get("renewTime") or "")
            self.holder = holder
            if (holder, renewed) != self._observed:
                self._observed = (holder, renewed)
                self._observed_at = started
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:  # ours (also after a restart under the same identity): renew
                renewed_lease = await self.kube.patch(LEASE_API, LEASE_KIND, self.settings.name, {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"renewTime": micro_time(),
                             "leaseDurationSeconds": int(self.settings.duration_s)}}, self.settings.namespace)
                return self._took(renewed_lease, started)
            duration = float(spec.get("leaseDurationSeconds") or self.settings.duration_s)
            expired = not holder or started - self._observed_at >= duration
            if not expired:
                self.lose()
                return False
            taken = await self.kube.patch(LEASE_API, LEASE_KIND, self.settings.name, {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": self._lease_body(transitions=transitions + 1, acquired=True)["spec"]},
                self.settings.namespace)
            log.info("%s: took lease %s/%s from %r (transition %d)", self.identity, self.settings.namespace,
                     self.settings.name, holder, transitions + 1)
            return self._took(taken, started)
        except SafeshipError as exc:  # a 409 is another instance's win; anything else: try again
            log.info("%s: lease %s/%s not acquired or renewed: %s", self.identity, self.settings.namespace,
                     self.settings.name, exc)
            if not self.is_leader():
                self.lose()
            return self.is_leader()

    def _took(self, lease: dict[str, Any], started: float) -> bool:
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            self.lose()
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if self.epoch != transitions:
            self.transitions_seen += 1
        self.epoch = transitions
        self.holder = self.identity
        self._observed = (self.identity, str(spec.get("renewTime") or ""))
        self._observed_at = started
        self._valid_until = started + self.settings.renew_deadline_s
        return True

    def _lease_body(self, *, transitions: int, acquired: bool) -> dict[str, Any]:
        now = micro_time()
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.settings.duration_s),
                                "renewTime": now, "leaseTransitions": transitions}
        if acquired:
            spec["acquireTime"] = now
        return {"apiVersion": LEASE_API, "kind": LEASE_KIND,
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace,
                             "labels": {"app.kubernetes.io/name": "safeship",
                                        "app.kubernetes.io/component": "operator"}},
                "spec": spec}

    async def release(self) -> None:
        """Give the Lease up (an empty holder), so that another instance takes over at once."""
        if not self.is_leader():
            return
        self.lose()
        try:
            lease = await self.kube.get(LEASE_API, LEASE_KIND, self.settings.name, self.settings.namespace)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                await self.kube.patch(LEASE_API, LEASE_KIND, self.settings.name, {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "acquireTime": None}}, self.settings.namespace)
        except SafeshipError as exc:
            log.info("%s: could not release lease %s/%s: %s", self.identity, self.settings.namespace,
                     self.settings.name, exc)
