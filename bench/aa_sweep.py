"""A/A sweep: how often safeship's policy rolls back a release identical to the one it replaces,
through the real engine, for every strategy, at low and high traffic, with failures that come in
runs of mean length 1..10 requests, with and without an incident that hits every version at once.

    python bench/aa_sweep.py [--seeds N] [--workers W] [--json FILE]

Each cell runs N seeded simulations of a whole deployment (plan, steps, traffic source, policy,
promotion and the monitoring window). It prints per cell the false rollbacks, their rate and the
95% Clopper-Pearson upper bound of the rate, then the pooled figures per strategy and a verdict
against the target (at most 1% of good releases rolled back). The incident comes while both
versions serve for canary and rolling, right after the switch for blue-green (the old colour is
still warm, so a failure is confirmed side by side), and during recreate's analysis, where no
version serves beside the new one (the documented limit: reported, not hidden).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

from scipy.stats import beta

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate

BURSTS = (1, 3, 5, 10)
TRAFFIC = {"low": 5.0, "high": 100.0}
STRATEGIES = ("canary", "blue_green", "rolling", "recreate")
# seconds after the deployment starts: while both versions serve (canary, rolling), right after
# the switch (blue-green), inside recreate's analysis
INCIDENT_AT_S = {"canary": 40.0, "rolling": 4.0, "blue_green": 20.0, "recreate": 15.0}
TARGET = 0.01
OUT = Path(__file__).parent / "results" / "aa_sweep.json"


def identical(rps: float, burst: int, incident_at_s: float | None) -> Scenario:
    traffic: dict[str, Any] = {"rps": rps}
    if incident_at_s is not None:
        traffic["incidents"] = [{"at_s": incident_at_s, "duration_s": 8, "error_rate": 0.15, "latency_factor": 2.0}]
    return Scenario.model_validate({
        "name": "aa", "seed": 1, "duration_s": 900, "traffic": traffic,
        "baseline": {"error_rate": 0.01, "error_burst": burst, "latency_ms": {"p50": 40, "p99": 200}},
        "candidate": {}, "expect": "promote",
    })


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate."""
    if failures >= trials:
        return 1.0
    return float(beta.ppf(confidence, failures + 1, trials - failures))


def _cell(job: tuple[str, str, int, bool, int]) -> dict[str, Any]:
    strategy, traffic, burst, incident, seeds = job
    scenario = identical(TRAFFIC[traffic], burst, INCIDENT_AT_S[strategy] if incident else None)
    wrong = 0
    reasons: list[str] = []
    for seed in range(1, seeds + 1):
        result = simulate(scenario, policy="safeship", policy_for=get_policy, seed=seed, strategy=strategy)  # type: ignore[arg-type]
        if result["decision"] == "rollback":
            wrong += 1
            reasons.append(f"seed {seed}: {result['reason']}")
    return {"strategy": strategy, "traffic": traffic, "rps": TRAFFIC[traffic], "burst": burst, "incident": incident,
            "seeds": seeds, "false_rollbacks": wrong, "rate": wrong / seeds,
            "upper95": round(upper_bound(wrong, seeds), 4), "reasons": reasons[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    jobs = [(s, t, b, i, args.seeds) for s in strategies for t in TRAFFIC for b in BURSTS for i in (False, True)]
    started = time.monotonic()
    with multiprocessing.Pool(args.workers) as pool:
        cells = pool.map(_cell, jobs)
    print(f"{'strategy':<11}{'traffic':<8}{'burst':>6}{'incident':>10}{'false RB':>10}{'rate':>8}{'upper95':>9}")
    for c in cells:
        print(f"{c['strategy']:<11}{c['traffic']:<8}{c['burst']:>6}{'yes' if c['incident'] else 'no':>10}"
              f"{c['false_rollbacks']:>6}/{c['seeds']:<3}{c['rate']:>8.1%}{c['upper95']:>9.1%}")
    print()
    verdicts = []
    for strategy in strategies:
        for incident in (False, True):
            mine = [c for c in cells if c["strategy"] == strategy and c["incident"] == incident]
            wrong, runs = sum(c["false_rollbacks"] for c in mine), sum(c["seeds"] for c in mine)
            rate = wrong / runs if runs else 0.0
            ok = rate <= TARGET
            label = f"{strategy}, {'shared incident' if incident else 'no incident'}"
            verdicts.append(ok)
            print(f"{'PASS' if ok else 'FAIL'}  {label}: {wrong}/{runs} false rollbacks = {rate:.2%} "
                  f"(95% upper bound {upper_bound(wrong, runs):.2%}; target <= {TARGET:.0%})")
    print(f"\n{len(jobs) * args.seeds} simulations in {time.monotonic() - started:.0f}s on {args.workers} workers")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seeds": args.seeds, "cells": cells}, indent=1) + "\n")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
