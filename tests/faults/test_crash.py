"""SIGKILL the controller in the middle of real deployments, start another, and check that nothing
is lost (see faultkit's module text for the invariants).

By default: per router (builtin, HAProxy), each strategy killed once at a boundary where the
world has changed and the store does not know it yet (the riskiest kind), plus one kill at a
seeded random point on one of the two (seed printed; SAFESHIP_FAULTS_SEED repeats it).
SAFESHIP_FAULTS_FULL=1: every phase boundary (before and after it is saved) of every strategy and
RANDOM_PER_STRATEGY random points each, on both routers; prints the table (bench/results/faults.md
keeps one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import ROUTERS, STRATEGIES, TABLE_HEAD, Fault, Outcome, chain, seeded
from haproxykit import needs_haproxy

pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

FULL = os.environ.get("SAFESHIP_FAULTS_FULL") == "1"
# SAFESHIP_FAULTS_STRATEGIES=recreate,canary: only these (to repeat one case)
ONLY = [s for s in os.environ.get("SAFESHIP_FAULTS_STRATEGIES", ",".join(STRATEGIES)).split(",") if s in STRATEGIES]
RANDOM_PER_STRATEGY = 2
# The step boundary per strategy where the world changed and the store has not saved it yet:
# canary's first candidate instance started; blue-green's switch to the candidate; rolling's first
# old instance stopped; recreate's old version stopped (the gap).
RISKY = {"canary": "before:progressing:1", "blue_green": "before:progressing:3",
         "rolling": "before:progressing:7", "recreate": "before:progressing:2"}
PHASES = ["before:preparing", "after:preparing", "before:progressing:0", "after:progressing:0",
          "before:monitoring", "after:monitoring", "before:succeeded"]
# How long after the deployment was asked a random kill may come (each strategy's run here is
# about this long when nothing is killed).
SPAN_S = {"canary": 12.0, "blue_green": 6.0, "rolling": 12.0, "recreate": 6.0}


def faults(router: str) -> list[Fault]:
    rng = seeded("crash")
    found: list[Fault] = []
    for strategy in ONLY:
        boundaries = [RISKY[strategy]] + (PHASES if FULL else [])
        found += [Fault(strategy, boundary=b) for b in boundaries]
    randoms = [(s, rng.uniform(0.2, SPAN_S[s])) for s in ONLY for _ in range(RANDOM_PER_STRATEGY)]
    if not FULL:  # one random kill, on one router
        pick = rng.choice(randoms)
        randoms = [pick] if rng.choice(ROUTERS) == router else []
    found += [Fault(s, delay=round(d, 2)) for s, d in randoms]
    return found


def report(outcomes: list[Outcome]) -> None:
    print("\n" + TABLE_HEAD)
    for outcome in outcomes:
        print(outcome.row())


@pytest.mark.parametrize("router", [pytest.param(r, marks=[needs_haproxy] if r == "haproxy" else [])
                                    for r in ROUTERS])
def test_a_controller_killed_anywhere_loses_nothing(tmp_path: Path, router: str) -> None:
    outcomes: list[Outcome] = []
    planned = faults(router)
    with chain(tmp_path, router, planned[0]) as made:
        for fault, then in zip(planned, [*planned[1:], None], strict=True):
            outcomes.append(made.run(fault, then))
            print(outcomes[-1].row())
    report(outcomes)
    broken = [o.row() for o in outcomes if o.violations]
    assert not broken, "\n".join(broken)
