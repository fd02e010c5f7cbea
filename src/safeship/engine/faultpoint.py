"""A hook for crash tests, off unless `SAFESHIP_FAULT_STOP` is set in the controller's environment.

    SAFESHIP_FAULT_STOP=<when>:<phase>[:<step index>][@<strategy>]     when: before | after

The engine calls `boundary` around each tick that moves a deployment to another phase or step:
`before` once the world has been changed and the new state is about to be saved, `after` once it
is saved. A tick may run several instant steps at once: `<phase>:<step>` names the first save that
reaches that phase at that step or beyond, from a state that had not; `@<strategy>` limits it to
deployments of that strategy. At the first boundary that matches, the process stops itself
(SIGSTOP), so that a test can kill it (SIGKILL) at exactly that point and check what a restarted
controller makes of it. A stopped process that is sent SIGCONT carries on as if nothing happened. Without the variable,
or with a value that names no boundary, nothing happens."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "SAFESHIP_FAULT_STOP"
_fired = False


def _wanted() -> tuple[str, str, int | None, str | None] | None:
    spec, _, strategy = os.environ.get(ENV, "").partition("@")
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("before", "after"):
        return None
    try:
        step = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        return None
    return parts[0], parts[1], step, strategy or None


def boundary(when: str, phase: str, step: int, strategy: str, *, was: tuple[str, int] | None = None) -> None:
    """Stop this process if `SAFESHIP_FAULT_STOP` names this boundary (once per process); `was`:
    the (phase, step) the deployment moves from."""
    global _fired
    if _fired or ENV not in os.environ:
        return
    wanted = _wanted()
    if wanted is None or wanted[0] != when or wanted[1] != phase or wanted[3] not in (None, strategy):
        return
    target = wanted[2]
    if target is not None:
        already = was is not None and was[0] == phase and was[1] >= target
        if step < target or already:
            return
    _fired = True
    log.warning("%s=%s: stopping at %s %s step %d (%s)", ENV, os.environ[ENV], when, phase, step, strategy)
    os.kill(os.getpid(), signal.SIGSTOP)
