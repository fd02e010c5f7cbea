"""The analysis benchmark: releases x seeds x policies on the same engine and simulated traffic.

    python bench/analysis.py --generate N [--gen-seed S] [--seeds K]      # drawn releases
    python bench/analysis.py --scenarios DIR [DIR ...] [--seeds K] [--strategies a,b]  # scenario files

Generated releases come from the distribution in bench/README.md, a quarter per strategy, each
labelled good, must-catch or should-catch by a rule on its own parameters
(safeship.benchmark.labels). Scenario files are labelled by the same rule (`expect: rollback`
makes them bad). Every policy in the registry runs, tuned rows of the peers included, unless
--policies names some.

For each strategy the table gives, per policy: false rollbacks (good releases rolled back, the
policy's own incident-labelled rollbacks apart), must-catch and should-catch misses, each as a
count over runs with its one-sided 95% Clopper-Pearson bound; the mean blast radius (candidate
failed requests until the horizon, which is at least an hour after a promotion, so that a wrongly
promoted regression pays for what its users saw); its geometric mean ratio to the best other
policy on the same release (for safeship: the best peer, tuned rows included); and the mean time
to promote a good release. Writes bench/results/analysis.json, analysis.md, analysis.png, and the
scenarios of the ten worst releases for safeship under bench/results/worst/ with the command that
replays each.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HORIZON_AFTER_PROMOTION_S = 3600.0
INCIDENT_AFTERMATH_S = 60.0  # a decision this soon after a shared incident still counts as in it


SIMULATION_LIMIT_S = 60  # a simulation that runs longer is stopped and counted as undecided (timed out)


class SimulationTooLong(Exception):
    pass


def _out_of_time(signum: int, frame: Any) -> None:
    raise SimulationTooLong


def _policies() -> list[str]:
    from safeship.analysis.policies import POLICIES

    return sorted(POLICIES, key=lambda p: (p != "safeship", p))


def _run(job: tuple[str, dict[str, Any], int, str, list[list[float]], bool]) -> dict[str, Any]:
    policy, spec, seed, label, incidents, retry = job
    from safeship.analysis.policies import get_policy
    from safeship.config.scenario import Scenario
    from safeship.engine.simulate import simulate

    scenario = Scenario.model_validate(spec)
    extra: dict[str, Any] = {}
    if "horizon_after_promotion_s" in inspect.signature(simulate).parameters:
        extra["horizon_after_promotion_s"] = HORIZON_AFTER_PROMOTION_S
    if retry and policy == "safeship":
        from safeship.config.models import SafeshipConfig

        extra["config"] = config = SafeshipConfig()
        config.intelligent_deployment.analysis.retry_after_incident = True
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(SIMULATION_LIMIT_S)
    try:
        result = simulate(scenario, policy=policy, policy_for=get_policy, seed=seed, **extra)
    except SimulationTooLong:
        return {"policy": policy, "strategy": scenario.strategy.value, "scenario": scenario.name, "seed": seed,
                "label": label, "expected": scenario.expect, "decision": "none", "time_to_decision_s": None,
                "promoted_at_s": None, "candidate_requests": 0, "candidate_failed_requests_horizon": 0,
                "max_candidate_weight": 0, "rollback_kind": None, "retry_decision": None, "in_incident": False,
                "timed_out": True,
                "reason": f"the simulation ran past {SIMULATION_LIMIT_S}s and was stopped"}
    finally:
        signal.alarm(0)
    decided = result["time_to_decision_s"]
    return {
        "policy": policy, "strategy": result["strategy"], "scenario": scenario.name, "seed": seed,
        "label": label, "expected": result["expected"], "decision": result["decision"],
        "time_to_decision_s": decided, "promoted_at_s": result.get("promoted_at_s"),
        "candidate_requests": result["candidate_requests"],
        "candidate_failed_requests_horizon": result["candidate_failed_requests_horizon"],
        "max_candidate_weight": result["max_candidate_weight"],
        "rollback_kind": result.get("rollback_kind"),
        "retry_decision": result.get("retry_decision"),
        "in_incident": any(a <= decided <= b + INCIDENT_AFTERMATH_S for a, b in incidents),
        "reason": result["reason"][:300], "timed_out": False,
    }


def releases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """[{spec, label, incidents, path, kind}] for the releases to run."""
    from safeship.benchmark.generate import REPLICAS, draw
    from safeship.benchmark.labels import label_release
    from safeship.config.models import DeploymentStrategy
    from safeship.config.scenario import load_scenario

    out = []
    if args.generate:
        for release in draw(args.generate, args.gen_seed):
            out.append({"spec": release.spec, "label": release.label.kind, "path": None, "kind": release.kind,
                        "shapes": list(release.shapes), "why": release.label.reason,
                        "incidents": [list(w) for w in release.incident_windows]})
        return out
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for folder in args.scenarios:
        for path in sorted(Path(folder).glob("*.yaml")):
            loaded = load_scenario(path)
            for strategy in strategies or [loaded.strategy.value]:
                scenario = loaded.model_copy(update={"strategy": DeploymentStrategy.parse(strategy)})
                label = label_release(scenario, bad=scenario.expect == "rollback", replicas=REPLICAS)
                spec = scenario.model_dump(mode="json", exclude_none=True)
                out.append({"spec": spec, "label": label.kind, "path": str(path), "kind": "file", "shapes": [],
                            "why": label.reason,
                            "incidents": [[i.at_s, i.at_s + i.duration_s] for i in scenario.traffic.incidents]})
    return out


def run_all(jobs: list[Any], workers: int) -> list[dict[str, Any]]:
    """Run the jobs on `workers` processes, with a progress bar and an estimate of the time left."""
    order = list(range(len(jobs)))
    random.Random(7).shuffle(order)  # spread slow releases over the run, so the estimate holds
    results: list[dict[str, Any]] = []
    started = time.time()
    with multiprocessing.Pool(workers) as pool:
        for done, result in enumerate(pool.imap_unordered(_run, [jobs[i] for i in order], chunksize=4), 1):
            results.append(result)
            if done % 20 == 0 or done == len(jobs):
                elapsed = time.time() - started
                left = elapsed / done * (len(jobs) - done)
                bar = "#" * int(30 * done / len(jobs))
                print(f"\r[{bar:<30}] {done}/{len(jobs)} {elapsed / 60:5.1f} min, ~{left / 60:4.1f} min left",
                      end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return results


def worst(runs: list[dict[str, Any]], given: dict[str, dict[str, Any]], folder: Path,
          count: int = 10) -> list[dict[str, Any]]:
    """The releases safeship handled worst: must-catch misses, then false rollbacks, then
    should-catch misses, then the largest blast radius against the best peer."""
    from safeship.benchmark.stats import FLOOR, best_peer, per_scenario_means

    blast = per_scenario_means(runs, "candidate_failed_requests_horizon")
    scored = []
    for r in runs:
        if r["policy"] != "safeship":
            continue
        missed = r["decision"] != "rollback"
        grade = (3 if r["label"] == "must" and missed else
                 2 if r["label"] == "good" and r["decision"] == "rollback" and r.get("rollback_kind") != "incident"
                 else 1 if r["label"] == "should" and missed else 0)
        best = best_peer(blast, r["strategy"], r["scenario"])
        ratio = max(r["candidate_failed_requests_horizon"], FLOOR) / max(best if best is not None else 0.0, FLOOR)
        scored.append((grade, ratio if r["label"] != "good" else 0.0, r))
    scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
    out = []
    seen: set[str] = set()
    for grade, ratio, r in scored:
        if r["scenario"] in seen:
            continue  # one line per release: its worst seed
        seen.add(r["scenario"])
        if len(seen) > count:
            break
        release = given[r["scenario"]]
        path = release["path"]
        if path is None:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{r['scenario']}.yaml"
            target.write_text(yaml.safe_dump(release["spec"], sort_keys=False))
            path = str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target)
        what = {3: "must-catch missed", 2: "false rollback", 1: "should-catch missed", 0: "blast radius"}[grade]
        out.append({"scenario": r["scenario"], "strategy": r["strategy"], "seed": r["seed"], "what": what,
                    "label": r["label"], "why_labelled": release["why"], "decision": r["decision"],
                    "candidate_failed_requests_horizon": r["candidate_failed_requests_horizon"],
                    "vs_best_peer": round(ratio, 3), "reason": r["reason"],
                    "replay": f"safeship simulate --scenario {path} --seed {r['seed']} --policy safeship "
                              f"--horizon-after-promotion {HORIZON_AFTER_PROMOTION_S:g}"})
    return out


def chart(rows: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = sorted({r.strategy for r in rows})
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.2 * len(strategies), 4.6), squeeze=False)
    for ax, strategy in zip(axes[0], strategies, strict=True):
        mine = [r for r in rows if r.strategy == strategy]
        names = [r.policy for r in mine]
        values = [max(r.blast_mean, 0.1) for r in mine]
        # a log axis cannot show an interval reaching below zero: its lower arm stops short of it
        errors = [[min(r.blast_error, 0.9 * v) for r, v in zip(mine, values, strict=True)],
                  [r.blast_error for r in mine]]
        colours = ["tab:green" if n == "safeship" else "tab:grey" if n.endswith("-tuned") else "tab:blue"
                   for n in names]
        ax.bar(range(len(mine)), values, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(mine)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(strategy)
    axes[0][0].set_ylabel("candidate failed requests per bad release\n(mean over releases, 95% CI)")
    fig.suptitle("Blast radius on bad releases, per policy (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def blast_errors(rows: list[Any], runs: list[dict[str, Any]]) -> None:
    """Half-width of the 95% normal interval of each row's mean blast radius over bad releases."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        if r["label"] != "good":
            groups[(r["policy"], r["strategy"])].append(float(r["candidate_failed_requests_horizon"]))
    for row in rows:
        values = groups.get((row.policy, row.strategy), [])
        if len(values) > 1:
            m = sum(values) / len(values)
            sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
            row.blast_error = 1.96 * sd / math.sqrt(len(values))
        else:
            row.blast_error = 0.0


def markdown(args: argparse.Namespace, rows: list[Any], worst_rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from safeship.benchmark.stats import markdown_table

    what = (f"`python bench/analysis.py --generate {args.generate} --gen-seed {args.gen_seed} --seeds {args.seeds}`"
            if args.generate else f"`python bench/analysis.py --scenarios {' '.join(args.scenarios)} "
            f"--seeds {args.seeds}`")
    lines = [
        "# Analysis benchmark", "",
        f"Command: {what}. {meta['simulations']} simulations in {meta['elapsed_s'] / 60:.1f} minutes on "
        f"{meta['workers']} workers. Releases: {meta['releases']} ({meta['labels']}).", "",
        "Each rate is a count over runs with its one-sided 95% Clopper-Pearson upper bound. Blast radius "
        "is the mean over bad releases of the candidate's failed requests until the horizon (at least an "
        "hour after a promotion); 'vs best peer' is the geometric mean over bad releases of this policy's "
        "figure over the best other policy's on the same release (tuned rows included). How releases are "
        "drawn and labelled: bench/README.md.", "",
    ]
    for strategy in sorted({r.strategy for r in rows}):
        lines += [f"## {strategy}", "", markdown_table([r for r in rows if r.strategy == strategy]), ""]
    lines += ["![blast radius per policy](analysis.png)", "", "## The ten worst releases for safeship", "",
              "| release | strategy | what | label (why) | failed (vs best peer) | decision and reason | replay |",
              "|---|---|---|---|---|---|---|"]
    for w in worst_rows:
        reason = w["reason"].replace("|", "/")
        lines.append(f"| {w['scenario']} | {w['strategy']} | {w['what']} | {w['label']} ({w['why_labelled']}) | "
                     f"{w['candidate_failed_requests_horizon']} ({w['vs_best_peer']}x) | {w['decision']}: {reason} | "
                     f"`{w['replay']}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate", type=int, default=0, help="draw this many releases (a quarter per strategy)")
    parser.add_argument("--gen-seed", type=int, default=1, help="seed of the drawing (default 1)")
    parser.add_argument("--scenarios", nargs="*", default=[str(ROOT / "scenarios")])
    parser.add_argument("--seeds", type=int, default=None,
                        help="runs per release (default: 1 for generated releases, 20 for files)")
    parser.add_argument("--strategies", default="",
                        help="scenario files: run each under each of these strategies (default: the file's own)")
    parser.add_argument("--policies", default="", help="comma-separated (default: every registered policy)")
    parser.add_argument("--out", default=str(RESULTS / "analysis.json"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--retry-after-incident", action="store_true",
                        help="run safeship with analysis.retry_after_incident: an incident rollback deploys the "
                             "release again once the restored version is back within its record")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.generate else 20
    if args.generate < 0 or args.seeds < 1:
        print("--generate must be >= 0 and --seeds >= 1", file=sys.stderr)
        return 2
    from safeship.benchmark.stats import rows as make_rows
    from safeship.benchmark.stats import table, verdicts

    policies = [p.strip() for p in args.policies.split(",") if p.strip()] or _policies()
    given = releases(args)
    if not given:
        print(f"no releases: no scenario files in {args.scenarios}", file=sys.stderr)
        return 2
    jobs = [(policy, g["spec"], int(g["spec"].get("seed", 0)) + k, g["label"], g["incidents"],
             args.retry_after_incident)
            for g in given for policy in policies for k in range(args.seeds)]
    started = time.time()
    runs = run_all(jobs, args.workers)
    elapsed = time.time() - started
    rows = make_rows(runs)
    blast_errors(rows, runs)
    timed_out = [r for r in runs if r.get("timed_out")]
    for r in timed_out:
        print(f"timed out: {r['policy']} on {r['scenario']} seed {r['seed']}", file=sys.stderr)
    labels = defaultdict(int)
    for g in given:
        labels[g["label"]] += 1
    meta = {"simulations": len(jobs), "elapsed_s": round(elapsed, 1), "workers": args.workers,
            "releases": len(given), "labels": ", ".join(f"{n} {k}" for k, n in sorted(labels.items())),
            "timed_out": len(timed_out), "generate": args.generate, "gen_seed": args.gen_seed,
            "seeds": args.seeds, "policies": policies}
    for strategy in sorted({r.strategy for r in rows}):
        print(f"\n== {strategy}")
        print(table([r for r in rows if r.strategy == strategy]))
    by_name = {g["spec"]["name"]: g for g in given}
    worst_rows = worst(runs, by_name, Path(args.out).parent / "worst")
    print("\nworst releases for safeship:")
    for w in worst_rows:
        print(f"  {w['what']:<20} {w['scenario']:<40} {w['decision']:<8} {w['replay']}")
    print(f"\n{len(jobs)} simulations in {elapsed / 60:.1f} min on {args.workers} workers")
    ok = True
    for name, passed, detail in verdicts(rows):
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["policy", "strategy", "scenario", "seed", "label", "decision", "time_to_decision_s", "promoted_at_s",
            "candidate_failed_requests_horizon", "max_candidate_weight", "rollback_kind", "in_incident",
            "retry_decision"]
    out.write_text(json.dumps({"meta": meta, "tables": [r.to_json() for r in rows], "worst": worst_rows,
                               "runs": [[r[k] for k in keys] for r in runs], "run_fields": keys},
                              separators=(",", ":")))
    out.with_suffix(".md").write_text(markdown(args, rows, worst_rows, meta))
    chart(rows, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
