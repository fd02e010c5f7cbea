"""How long one 30-minute simulated canary takes in-process, per policy: the goal is 0.05 s.

    python bench/sim_speed.py [--runs N] [--baseline-src DIR]

Two scenarios, the canary the goal is stated for (100 requests/s, a good candidate, expect
promote) and the same with 8x the errors (`candidate: {error_rate: 0.04}`, expect rollback), each
run N times per policy (seeds 1..N) after one warm-up run. For each policy it prints the mean
seconds per simulation over both scenarios (and per scenario), its ratio to the figure of the
last round, and a verdict line: PASS when every policy's mean is at most 0.05 s.

Seconds are the process's CPU seconds (time.process_time): on a shared machine the wall clock
also counts the time other processes held the cores. The machine stays noisy all the same
(caches, frequency), so seconds alone do not compare across runs. The bench also
times a fixed pure-Python reference workload in the same process, before and after each
policy's runs (the fastest of them is taken), and reports each mean in units of it as well. The
ratio to the last round compares those units with the ones recorded for the last round
(`BASELINE`), so a machine that is twice as slow today moves both alike. With
`--baseline-src DIR` (the `src` of an older tree, e.g. `git archive <commit> src | tar -x -C DIR`)
the older engine is also measured now, in a subprocess, policy by policy between the runs of
this one, and the ratio is taken against it instead.

Writes bench/results/sim_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GOAL_S = 0.05
POLICIES = ("safeship", "seed", "flagger", "argo", "kayenta")
CANARY: dict[str, Any] = {"name": "canary-30min", "expect": "promote", "duration_s": 1800, "traffic": {"rps": 100}}
SCENARIOS: dict[str, dict[str, Any]] = {
    "canary": CANARY,
    "errors_8x": {**CANARY, "name": "canary-30min-8x-errors", "expect": "rollback",
                  "candidate": {"error_rate": 0.04}},
}

# The last round: the engine before this work (commit 78cef27), measured on this machine with
# this script (--runs 5 --baseline-src on that commit's src/) in the same run as the first figures
# of this round: mean CPU seconds per simulation over both scenarios, and the same in units of
# the reference workload timed in that run.
BASELINE_REFERENCE_S = 0.0157
BASELINE: dict[str, dict[str, float]] = {
    "safeship": {"seconds": 0.1902, "units": 11.98},
    "seed": {"seconds": 0.0605, "units": 3.83},
    "flagger": {"seconds": 0.0489, "units": 3.10},
    "argo": {"seconds": 0.0634, "units": 4.03},
    "kayenta": {"seconds": 0.0634, "units": 4.04},
}


def reference_workload() -> float:
    """Seconds for a fixed mix of what a simulation does in Python (arithmetic, dicts, lists,
    calls), the fastest of three: the unit that the means are also given in."""

    def once() -> float:
        start = time.process_time()
        total = 0.0
        table: dict[int, float] = {}
        for i in range(60_000):
            value = (i % 97) * 1.0001 + total * 1e-9
            table[i % 512] = value
            total += sum([value, table.get((i * 7) % 512, 0.0)])
        return time.process_time() - start

    return min(once() for _ in range(3))


def measure(policy: str, runs: int) -> dict[str, Any]:
    """Mean seconds per simulation of `policy` per scenario, with the reference workload timed
    around them; runs in whichever safeship is importable (this tree's, or --baseline-src's)."""
    from safeship.analysis.policies import get_policy
    from safeship.config.scenario import Scenario
    from safeship.engine.simulate import simulate

    reference = [reference_workload()]
    per_scenario: dict[str, float] = {}
    decisions: dict[str, list[str]] = {}
    for name, spec in SCENARIOS.items():
        scenario = Scenario.model_validate(spec)
        simulate(scenario, policy=policy, policy_for=get_policy, seed=0)  # warm: imports, caches
        times, decided = [], []
        for seed in range(1, runs + 1):
            start = time.process_time()
            result = simulate(scenario, policy=policy, policy_for=get_policy, seed=seed)
            times.append(time.process_time() - start)
            decided.append(f"{result['decision']}@{result['time_to_decision_s']}")
        per_scenario[name] = statistics.mean(times)
        decisions[name] = decided
    reference.append(reference_workload())
    return {"per_scenario": per_scenario, "seconds": statistics.mean(per_scenario.values()),
            "reference_s": min(reference), "decisions": decisions}


def measure_elsewhere(src: Path, policy: str, runs: int) -> dict[str, Any]:
    """`measure` in a subprocess that imports safeship from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--one", policy, "--runs", str(runs)],
                          env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="simulations per policy and scenario (default 5)")
    parser.add_argument("--baseline-src", type=Path, help="an older tree's src/ to measure side by side")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one policy, print JSON (for --baseline-src)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.runs)))
        return 0
    rows: dict[str, dict[str, Any]] = {}
    for policy in args.policies.split(","):
        mine = measure(policy, args.runs)
        mine["units"] = mine["seconds"] / mine["reference_s"]
        row: dict[str, Any] = {**mine}
        if args.baseline_src is not None:
            old = measure_elsewhere(args.baseline_src.resolve(), policy, args.runs)
            old["units"] = old["seconds"] / old["reference_s"]
            row["baseline_now"] = old
            row["ratio"] = mine["units"] / old["units"]
            row["ratio_source"] = "measured now"
        elif policy in BASELINE:
            row["ratio"] = mine["units"] / BASELINE[policy]["units"]
            row["ratio_source"] = "recorded baseline, in reference units"
        rows[policy] = row
        ratio = f"{row['ratio']:.2f}x of last round" if "ratio" in row else "no baseline"
        scenarios = ", ".join(f"{name} {seconds:.4f}" for name, seconds in mine["per_scenario"].items())
        print(f"{policy:9} {mine['seconds']:.4f} s/simulation ({scenarios}); {mine['units']:.2f} reference units; "
              f"{ratio}", flush=True)
    worst = max(rows.values(), key=lambda r: r["seconds"])
    verdict = "PASS" if all(r["seconds"] <= GOAL_S for r in rows.values()) else "FAIL"
    slow = [p for p, r in rows.items() if r["seconds"] > GOAL_S]
    print(f"{verdict}: goal <= {GOAL_S} s per 30-minute simulated canary; slowest {worst['seconds']:.4f} s"
          + (f" ({', '.join(slow)} above it)" if slow else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "goal_s": GOAL_S, "runs": args.runs, "verdict": verdict, "scenarios": SCENARIOS,
        "python": sys.version.split()[0], "baseline": {"reference_s": BASELINE_REFERENCE_S, "policies": BASELINE},
        "policies": rows,
    }
    (RESULTS / "sim_speed.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
