"""Which controller drives a deployment when more than one runs on one store: a lease per
deployment, taken before the first tick, renewed while the controller drives it, let go when the
deployment ends or the controller stops.

A controller that holds a deployment's lease fences the store (`Store.fence`): every write it
then makes for that deployment checks, in its own transaction, that its fencing token is still
the lease's current one. A controller paused past its lease's expiry (a stopped process, a long
garbage collection, a frozen VM) whose lease another controller took finds its next write, or its
next renewal, refused: LeaseLostError, and it stops driving the deployment; nothing it computed
while it was stale lands in the store.

Expiry is compared with each controller's wall clock: controllers on different hosts need clocks
kept in step (NTP) to well within the lease duration.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from safeship.engine.process_mark import DriverMark, driver_mark, is_alive
from safeship.store import Store

log = logging.getLogger(__name__)

DEFAULT_DURATION_S = 15.0
DEFAULT_RENEW_INTERVAL_S = 5.0


def holder_id() -> str:
    """This process's name as a lease holder: `host:pid:start:random`, its host, PID, start time
    (clock ticks since boot, "-" where /proc does not say) and a random suffix, so that a PID
    reused after a restart is never taken for the process that held the lease before."""
    mark = driver_mark()
    return f"{mark.host}:{mark.pid}:{mark.started or '-'}:{secrets.token_hex(4)}"


def holder_gone(holder: str) -> bool:
    """`holder` names a process of this host that no longer runs (a controller killed before it
    could let its leases go): its leases may be taken at once instead of after their expiry."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    host, pid, started, _ = parts
    mark = DriverMark(host, int(pid), None if started == "-" else started)
    return mark.host == socket.gethostname() and mark.pid != os.getpid() and not is_alive(mark)


@dataclass
class Held:
    token: int
    # taken from another controller that still runs (or runs elsewhere): one paused or cut off
    # past its lease, whose router served the deployment until now. Not for a lease released, or
    # left by this host's controller that was killed: a restarted controller restored its routes
    # from the store when it started.
    taken_over: bool
    renewed_at: float


class Leases:
    """The leases one controller holds, on its store."""

    def __init__(self, store: Store, *, duration: float = DEFAULT_DURATION_S,
                 renew_interval: float = DEFAULT_RENEW_INTERVAL_S, holder: str | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.duration = duration
        self.renew_interval = renew_interval
        self.holder = holder or holder_id()
        self.now = now
        self.held: dict[str, Held] = {}
        self._busy_until: dict[str, float] = {}  # deployment id -> when another holder's lease expires
        self.lost: set[str] = set()  # deployments whose lease was taken by another while held here
        self.refusals = 0  # renewals and writes refused because this controller's token was stale

    def may_try(self, deployment_id: str) -> bool:
        """False while another controller's lease on the deployment has not expired (as last read)."""
        return self.now() >= self._busy_until.get(deployment_id, 0.0)

    def take(self, deployment_id: str) -> Held | None:
        """Take the deployment's lease (or keep it); None when another controller holds it."""
        now = self.now()
        before = self.store.lease(deployment_id)
        lease = self.store.take_lease(deployment_id, self.holder, now=now, duration=self.duration)
        if lease.holder not in (self.holder, "") and holder_gone(lease.holder):
            log.info("deployment %s: its lease holder %s is no longer running; taking the lease now",
                     deployment_id, lease.holder)
            lease = self.store.take_lease(deployment_id, self.holder, now=now, duration=self.duration,
                                          take_from=lease.holder)
        if lease.holder != self.holder:
            self._busy_until[deployment_id] = lease.expires_at
            return None
        self._busy_until.pop(deployment_id, None)
        self.lost.discard(deployment_id)
        known = self.held.get(deployment_id)
        taken_over = (before is not None and before.holder not in ("", self.holder)
                      and before.token != lease.token and not holder_gone(before.holder)
                      and (known is None or known.token != lease.token))
        held = Held(lease.token, taken_over=taken_over, renewed_at=now)
        self.held[deployment_id] = held
        self.store.fence(deployment_id, self.holder, lease.token)
        if lease.token > 1:
            log.info("deployment %s: lease taken (token %d, held by %s until %.0f)", deployment_id, lease.token,
                     self.holder, lease.expires_at)
        return held

    def renew_due(self) -> float:
        """Seconds until the next renewal is due (renew_interval when nothing is held)."""
        if not self.held:
            return self.renew_interval
        oldest = min(h.renewed_at for h in self.held.values())
        return max(0.0, oldest + self.renew_interval - self.now())

    def renew(self) -> list[str]:
        """Renew every lease whose renewal is due; the deployments whose lease was lost."""
        lost = []
        for deployment_id, held in list(self.held.items()):
            now = self.now()
            if now < held.renewed_at + self.renew_interval:
                continue
            if self.store.renew_lease(deployment_id, self.holder, held.token, now=now, duration=self.duration):
                held.renewed_at = now
                continue
            self.refusals += 1
            self.lose(deployment_id, f"renewal refused: token {held.token} is no longer the current one")
            lost.append(deployment_id)
        return lost

    def lose(self, deployment_id: str, why: str) -> None:
        """The lease was taken by another controller: stop fencing with it and say so."""
        held = self.held.pop(deployment_id, None)
        self.store.unfence(deployment_id)
        self.lost.add(deployment_id)
        log.warning("deployment %s: lease lost (%s); another controller drives it now, this one stops "
                    "(%d refused so far)", deployment_id, why, self.refusals)
        if held is not None:
            self._busy_until[deployment_id] = self.now() + self.duration

    def release(self, deployment_id: str) -> None:
        """Let the lease go (the deployment ended, or this controller stops)."""
        held = self.held.pop(deployment_id, None)
        self.store.unfence(deployment_id)
        if held is not None:
            self.store.release_lease(deployment_id, self.holder, held.token)
