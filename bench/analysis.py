"""The analysis benchmark: every scenario x seeds x policy (x strategy) on the same engine and
simulated traffic.

    python bench/analysis.py [--scenarios DIR ...] [--seeds N] [--policies a,b] [--strategies a,b] [--out FILE]

Without --strategies each scenario runs under its own `strategy:` (canary when it names none);
with it, each scenario runs under each listed strategy. Prints a table and verdicts (per
strategy), writes bench/results/analysis.json (one row per policy, strategy and scenario) and a
PNG chart of blast radius per policy next to it. Blast radius is counted over the scenario's
whole horizon (`candidate_failed_requests_horizon`), so a policy that wrongly promotes a bad
release pays for what its users saw afterwards.
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
DEFAULT_SCENARIOS = ROOT / "scenarios"
POLICIES = ["safeship", "seed", "flagger", "argo", "kayenta"]
GROSS_ERROR_RATE = 0.25  # a candidate failing this share of requests from its first one is a gross failure

_cache: dict[str, Any] = {}


def _run(job: tuple[str, str, int, str | None]) -> dict[str, Any]:
    policy, path, seed, strategy_name = job
    from safeship.analysis.policies import get_policy
    from safeship.config.models import DeploymentStrategy
    from safeship.config.scenario import load_scenario
    from safeship.engine.simulate import simulate

    scenario = _cache.get(path)
    if scenario is None:
        scenario = _cache[path] = load_scenario(path)
    strategy = DeploymentStrategy.parse(strategy_name) if strategy_name else None
    result = simulate(scenario, policy=policy, policy_for=get_policy, seed=seed, strategy=strategy)
    result["path"] = path
    candidate = scenario.candidate
    result["never_ready"] = not candidate.ready
    result["gross"] = (candidate.error_rate is not None and candidate.error_rate >= GROSS_ERROR_RATE
                       and not candidate.onset_s and not candidate.ramp_s)
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
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["policy"], r["strategy"], r["scenario"])].append(r)
    rows = []
    for (policy, strategy, scenario), runs in sorted(groups.items()):
        times = [r["time_to_decision_s"] for r in runs]
        rows.append({
            "policy": policy,
            "strategy": strategy,
            "scenario": scenario,
            "never_ready": runs[0]["never_ready"],
            "gross": runs[0]["gross"],
            "expected": runs[0]["expected"],
            "seeds": len(runs),
            "correct_rate": sum(r["correct"] for r in runs) / len(runs),
            "median_time_to_decision_s": statistics.median(times),
            "p90_time_to_decision_s": percentile(times, 0.9),
            "median_candidate_requests": statistics.median(r["candidate_requests"] for r in runs),
            "median_candidate_failed_requests": statistics.median(r["candidate_failed_requests"] for r in runs),
            "median_candidate_failed_requests_horizon": statistics.median(
                r["candidate_failed_requests_horizon"] for r in runs),
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
    header = (f"{'policy':<9} {'strategy':<10} {'scenario':<26} {'exp':<8} {'correct':>7} {'falseRB':>7} "
              f"{'missed':>7} {'t50 s':>7} {'t90 s':>7} {'cand req':>9} {'cand fail':>9} {'horizon':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        fr = "" if r["false_rollback_rate"] is None else f"{r['false_rollback_rate']:.1%}"
        mr = "" if r["missed_regression_rate"] is None else f"{r['missed_regression_rate']:.1%}"
        print(f"{r['policy']:<9} {r['strategy']:<10} {r['scenario']:<26} {r['expected']:<8} "
              f"{r['correct_rate']:>7.1%} {fr:>7} {mr:>7} "
              f"{r['median_time_to_decision_s']:>7.1f} {r['p90_time_to_decision_s']:>7.1f} "
              f"{r['median_candidate_requests']:>9.0f} {r['median_candidate_failed_requests']:>9.1f} "
              f"{r['median_candidate_failed_requests_horizon']:>9.1f}")


def verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's targets for the safeship policy, per strategy."""
    out: list[tuple[str, bool, str]] = []
    for strategy in sorted({r["strategy"] for r in rows}):
        out += _verdicts_for([r for r in rows if r["strategy"] == strategy], strategy)
    return out


def _verdicts_for(rows: list[dict[str, Any]], strategy: str) -> list[tuple[str, bool, str]]:
    own = [r for r in rows if r["policy"] == "safeship"]
    peers = [r for r in rows if r["policy"] != "safeship"]
    out: list[tuple[str, bool, str]] = []
    if not own:
        return out
    good = [r for r in own if r["expected"] == "promote"]
    bad = [r for r in own if r["expected"] == "rollback"]
    if good:
        rate = sum(r["false_rollback_rate"] * r["seeds"] for r in good) / sum(r["seeds"] for r in good)
        worst = max(good, key=lambda r: r["false_rollback_rate"])
        out.append((f"[{strategy}] false-rollback rate on good scenarios <= 1%", rate <= 0.01,
                    f"{rate:.2%} (worst {worst['scenario']} {worst['false_rollback_rate']:.1%})"))
    if bad:
        rate = sum(r["missed_regression_rate"] * r["seeds"] for r in bad) / sum(r["seeds"] for r in bad)
        worst = max(bad, key=lambda r: r["missed_regression_rate"])
        out.append((f"[{strategy}] missed regressions on bad scenarios <= 1%", rate <= 0.01,
                    f"{rate:.2%} (worst {worst['scenario']} {worst['missed_regression_rate']:.1%})"))
    ratios = []
    detail = []
    key = "median_candidate_failed_requests_horizon"
    for r in bad:
        theirs = [p[key] for p in peers if p["scenario"] == r["scenario"]]
        best = min(theirs) if theirs else 0
        if best >= 1:
            ratio = max(r[key], 0.5) / best
            ratios.append(ratio)
            detail.append(f"{r['scenario']} {r[key]:g}/{best:g}")
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        out.append((f"[{strategy}] candidate failed requests over the horizon <= 1/5 of the best peer "
                    "(geometric mean)", geo <= 0.2, f"{geo:.3f} ({'; '.join(detail)})"))
    for r in own:
        if r["never_ready"]:
            out.append((f"[{strategy}] {r['scenario']}: a never-ready candidate gets 0 requests",
                        r["median_candidate_requests"] == 0, f"median {r['median_candidate_requests']:g}"))
        if r["gross"]:
            t = r["median_decision_after_first_request_s"]
            out.append((f"[{strategy}] {r['scenario']}: gross failure decided within 15 s of the first "
                        "candidate request", t <= 15, f"{t:.1f}s"))
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
        values = [statistics.median([r["median_candidate_failed_requests_horizon"] for r in rows
                                     if r["policy"] == policy and r["scenario"] == s] or [0]) for s in bad]
        ax.bar([x + i * width for x in range(len(bad))], [max(v, 0.1) for v in values], width, label=policy)
    ax.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(bad))], bad, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("median candidate failed requests over the horizon (log)")
    ax.set_title("Blast radius on bad releases, per policy (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="*", default=[str(DEFAULT_SCENARIOS)])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--strategies", default="",
                        help="run each scenario under each of these strategies (default: the scenario's own)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "analysis.json"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    files = scenario_files(args.scenarios)
    if not files:
        print(f"no scenario files in {args.scenarios}", file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    strategies: list[str | None] = [x.strip() for x in args.strategies.split(",") if x.strip()] or [None]
    jobs = [(p, f, seed, st) for p in policies for f in files for st in strategies
            for seed in range(1, args.seeds + 1)]
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
    keys = ["policy", "strategy", "scenario", "expected", "seeds", "correct_rate", "false_rollback_rate",
            "missed_regression_rate", "median_time_to_decision_s", "p90_time_to_decision_s",
            "median_candidate_requests", "median_candidate_failed_requests",
            "median_candidate_failed_requests_horizon"]
    out.write_text(json.dumps([{k: r[k] for k in keys} for r in rows], indent=1))
    chart(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
