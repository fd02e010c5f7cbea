"""The analysis benchmark: every scenario x seeds x policy on the same engine and simulated traffic.

    python bench/analysis.py [--scenarios DIR ...] [--seeds N] [--policies a,b] [--out FILE]

Prints a table and verdicts, writes bench/results/analysis.json (one row per policy and scenario)
and a PNG chart of blast radius per policy next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIOS = ROOT.parent / "shared" / "scenarios"
POLICIES = ["safeship", "seed", "flagger", "argo", "kayenta"]

_cache: dict[str, Any] = {}


def _run(job: tuple[str, str, int]) -> dict[str, Any]:
    policy, path, seed = job
    from safeship.analysis.policies import get_policy
    from safeship.config.scenario import load_scenario
    from safeship.engine.simulate import simulate

    scenario = _cache.get(path)
    if scenario is None:
        scenario = _cache[path] = load_scenario(path)
    result = simulate(scenario, policy=policy, policy_for=get_policy, seed=seed)
    result["path"] = path
    return result


def scenario_files(folders: list[str]) -> list[str]:
    files: list[str] = []
    for folder in folders:
        files += sorted(str(p) for p in Path(folder).glob("*.yaml"))
    return files


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["policy"], r["scenario"])].append(r)
    rows = []
    for (policy, scenario), runs in sorted(groups.items()):
        times = [r["time_to_decision_s"] for r in runs]
        rows.append({
            "policy": policy,
            "scenario": scenario,
            "expected": runs[0]["expected"],
            "seeds": len(runs),
            "correct_rate": sum(r["correct"] for r in runs) / len(runs),
            "median_time_to_decision_s": statistics.median(times),
            "p90_time_to_decision_s": percentile(times, 0.9),
            "median_candidate_requests": statistics.median(r["candidate_requests"] for r in runs),
            "median_candidate_failed_requests": statistics.median(r["candidate_failed_requests"] for r in runs),
            "false_rollback_rate": (sum(r["decision"] == "rollback" for r in runs) / len(runs))
            if runs[0]["expected"] == "promote" else None,
            "missed_regression_rate": (sum(r["decision"] != "rollback" for r in runs) / len(runs))
            if runs[0]["expected"] == "rollback" else None,
            "median_decision_after_first_request_s": statistics.median(
                [r["time_to_decision_s"] - r["first_candidate_request_s"] for r in runs
                 if r["first_candidate_request_s"] is not None] or [math.nan]),
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'policy':<9} {'scenario':<19} {'exp':<8} {'correct':>7} {'falseRB':>7} {'missed':>7} "
              f"{'t50 s':>7} {'t90 s':>7} {'cand req':>9} {'cand fail':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        fr = "" if r["false_rollback_rate"] is None else f"{r['false_rollback_rate']:.1%}"
        mr = "" if r["missed_regression_rate"] is None else f"{r['missed_regression_rate']:.1%}"
        print(f"{r['policy']:<9} {r['scenario']:<19} {r['expected']:<8} {r['correct_rate']:>7.1%} {fr:>7} {mr:>7} "
              f"{r['median_time_to_decision_s']:>7.1f} {r['p90_time_to_decision_s']:>7.1f} "
              f"{r['median_candidate_requests']:>9.0f} {r['median_candidate_failed_requests']:>9.1f}")


def verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    own = [r for r in rows if r["policy"] == "safeship"]
    peers = [r for r in rows if r["policy"] != "safeship"]
    out: list[tuple[str, bool, str]] = []
    if not own:
        return out
    good = [r for r in own if r["expected"] == "promote"]
    bad = [r for r in own if r["expected"] == "rollback"]
    if good:
        rate = sum(r["false_rollback_rate"] * r["seeds"] for r in good) / sum(r["seeds"] for r in good)
        out.append(("false-rollback rate on good scenarios <= 1%", rate <= 0.01, f"{rate:.2%}"))
    if bad:
        rate = sum(r["missed_regression_rate"] * r["seeds"] for r in bad) / sum(r["seeds"] for r in bad)
        out.append(("missed regressions on bad scenarios <= 1%", rate <= 0.01, f"{rate:.2%}"))
    ratios = []
    detail = []
    for r in bad:
        theirs = [p["median_candidate_failed_requests"] for p in peers if p["scenario"] == r["scenario"]]
        best = min(theirs) if theirs else 0
        if best >= 1:
            ratio = max(r["median_candidate_failed_requests"], 0.5) / best
            ratios.append(ratio)
            detail.append(f"{r['scenario']} {r['median_candidate_failed_requests']:g}/{best:g}")
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        out.append(("candidate failed requests <= 1/5 of the best peer (geometric mean)", geo <= 0.2,
                    f"{geo:.3f} ({'; '.join(detail)})"))
    for r in own:
        if r["scenario"] == "never-ready":
            out.append(("never-ready gives 0 candidate requests", r["median_candidate_requests"] == 0,
                        f"median {r['median_candidate_requests']:g}"))
        if r["scenario"] == "gross-failure":
            t = r["median_decision_after_first_request_s"]
            out.append(("gross-failure decided within 15 s of the first candidate request", t <= 15, f"{t:.1f}s"))
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bad = sorted({r["scenario"] for r in rows if r["expected"] == "rollback"})
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p != "safeship", p))
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(policies))
    for i, policy in enumerate(policies):
        values = [next((r["median_candidate_failed_requests"] for r in rows
                        if r["policy"] == policy and r["scenario"] == s), 0) for s in bad]
        ax.bar([x + i * width for x in range(len(bad))], [max(v, 0.1) for v in values], width, label=policy)
    ax.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(bad))], bad, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("median candidate failed requests (log)")
    ax.set_title("Blast radius on bad releases, per policy (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="*", default=[str(DEFAULT_SCENARIOS)])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "analysis.json"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    files = scenario_files(args.scenarios)
    if not files:
        print(f"no scenario files in {args.scenarios}", file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    jobs = [(p, f, seed) for p in policies for f in files for seed in range(1, args.seeds + 1)]
    started = time.time()
    with multiprocessing.Pool(args.workers) as pool:
        results = list(pool.imap_unordered(_run, jobs, chunksize=8))
    elapsed = time.time() - started
    rows = summarise(results)
    print_table(rows)
    print(f"\n{len(jobs)} simulations in {elapsed:.0f}s on {args.workers} workers")
    ok = True
    for name, passed, detail in verdicts(rows):
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["policy", "scenario", "expected", "seeds", "correct_rate", "median_time_to_decision_s",
            "p90_time_to_decision_s", "median_candidate_requests", "median_candidate_failed_requests"]
    out.write_text(json.dumps([{k: r[k] for k in keys} for r in rows], indent=1))
    chart(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
