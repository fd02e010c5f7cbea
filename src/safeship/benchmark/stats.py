"""The benchmark's figures: counts of misses with their exact bounds, means (never medians) of
what users saw, and ratios to the best peer on the same release.

Every rate is a count over runs with its one-sided 95% Clopper-Pearson upper bound, so that a
small sample cannot pass for a good one: 0 misses in 30 runs is "0/30, <= 9.5%", not "0%".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import beta

CONFIDENCE = 0.95
FLOOR = 0.5  # failed requests: a release that hurt nobody counts as half a request in a ratio
OWN = "safeship"


def upper_bound(misses: int, runs: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen as misses / runs."""
    if runs <= 0:
        return 1.0
    if misses >= runs:
        return 1.0
    return float(beta.ppf(confidence, misses + 1, runs - misses))


@dataclass(frozen=True)
class Count:
    hits: int
    runs: int

    @property
    def rate(self) -> float:
        return self.hits / self.runs if self.runs else math.nan

    @property
    def bound(self) -> float:
        return upper_bound(self.hits, self.runs)

    def show(self) -> str:
        if not self.runs:
            return "-"
        return f"{self.hits}/{self.runs} ({self.rate:.1%}, <={self.bound:.1%})"

    def to_json(self) -> dict[str, Any]:
        return {"count": self.hits, "runs": self.runs, "rate": None if not self.runs else self.rate,
                "upper95": None if not self.runs else round(self.bound, 5)}


def geometric_mean(values: Iterable[float]) -> float:
    logs = [math.log(v) for v in values]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class Row:
    """One policy's figures on one strategy."""

    policy: str
    strategy: str
    false_rollbacks: Count = field(default_factory=lambda: Count(0, 0))
    incident_rollbacks: Count = field(default_factory=lambda: Count(0, 0))
    rollbacks_in_incidents: Count = field(default_factory=lambda: Count(0, 0))  # of the false ones
    # good releases' incident rollbacks whose retry (analysis.retry_after_incident) promoted, over
    # those retried
    retried_promoted: Count = field(default_factory=lambda: Count(0, 0))
    must_missed: Count = field(default_factory=lambda: Count(0, 0))
    should_missed: Count = field(default_factory=lambda: Count(0, 0))
    undecided: int = 0
    blast_mean: float = math.nan  # mean over bad releases of their mean candidate failed requests
    blast_ratio: float = math.nan  # geometric mean over bad releases of this / the best peer's
    promote_time_mean: float = math.nan  # mean seconds to promote a good release that was promoted
    blast_error: float = 0.0  # half-width of the 95% interval of blast_mean (for the chart)

    def to_json(self) -> dict[str, Any]:
        def number(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {"policy": self.policy, "strategy": self.strategy,
                "false_rollbacks": self.false_rollbacks.to_json(),
                "incident_rollbacks": self.incident_rollbacks.to_json(),
                "incident_retries_promoted": self.retried_promoted.to_json(),
                "false_rollbacks_during_incidents": self.rollbacks_in_incidents.to_json(),
                "must_catch_missed": self.must_missed.to_json(),
                "should_catch_missed": self.should_missed.to_json(),
                "undecided": self.undecided,
                "blast_radius_mean": number(self.blast_mean),
                "blast_radius_vs_best_peer": number(self.blast_ratio),
                "time_to_promote_mean_s": number(self.promote_time_mean)}


def per_scenario_means(runs: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, str, str], float]:
    """(policy, strategy, scenario) -> mean of `key` over that scenario's seeds."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in runs:
        groups[(r["policy"], r["strategy"], r["scenario"])].append(float(r[key]))
    return {k: mean(v) for k, v in groups.items()}


def best_peer(blast: dict[tuple[str, str, str], float], strategy: str, scenario: str, *,
              excluding: str = OWN) -> float | None:
    """The lowest mean blast radius any other policy (tuned rows included) had on one release."""
    theirs = [v for (p, s, sc), v in blast.items() if s == strategy and sc == scenario and p != excluding]
    return min(theirs) if theirs else None


def _missed(run: dict[str, Any]) -> bool:
    """A bad release promoted, left undecided, or rolled back and then promoted by its retry after
    an incident rollback (`analysis.retry_after_incident`): its users got it all the same."""
    return run["decision"] != "rollback" or run.get("retry_decision") == "promote"


def rows(runs: Sequence[dict[str, Any]]) -> list[Row]:
    """One row per (policy, strategy). A run needs: policy, strategy, scenario, decision, expected,
    label ('good', 'must', 'should'), candidate_failed_requests_horizon, promoted_at_s,
    rollback_kind (None, or 'incident' when the policy itself labelled its rollback so) and
    in_incident (the decision fell during a shared incident or within a minute after one)."""
    blast = per_scenario_means(runs, "candidate_failed_requests_horizon")
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_key[(r["policy"], r["strategy"])].append(r)
    out = []
    for (policy, strategy), mine in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0] != OWN, kv[0][0])):
        good = [r for r in mine if r["label"] == "good"]
        rolled = [r for r in good if r["decision"] == "rollback"]
        false_ones = [r for r in rolled if r.get("rollback_kind") != "incident"]
        must = [r for r in mine if r["label"] == "must"]
        should = [r for r in mine if r["label"] == "should"]
        row = Row(policy, strategy,
                  false_rollbacks=Count(len(false_ones), len(good)),
                  incident_rollbacks=Count(len(rolled) - len(false_ones), len(good)),
                  rollbacks_in_incidents=Count(sum(1 for r in false_ones if r.get("in_incident")), len(good)),
                  retried_promoted=Count(sum(1 for r in good if r.get("retry_decision") == "promote"),
                                         sum(1 for r in good if r.get("retry_decision") is not None)),
                  must_missed=Count(sum(1 for r in must if _missed(r)), len(must)),
                  should_missed=Count(sum(1 for r in should if _missed(r)), len(should)),
                  undecided=sum(1 for r in mine if r["decision"] == "none"))
        bad_names = sorted({r["scenario"] for r in mine if r["label"] != "good"})
        row.blast_mean = mean([blast[(policy, strategy, name)] for name in bad_names])
        ratios = []
        for name in bad_names:
            best = best_peer(blast, strategy, name, excluding=policy)
            if best is not None:
                ratios.append(max(blast[(policy, strategy, name)], FLOOR) / max(best, FLOOR))
        row.blast_ratio = geometric_mean(ratios)
        times = [float(r["promoted_at_s"]) for r in good if r.get("promoted_at_s") is not None]
        row.promote_time_mean = mean(times)
        out.append(row)
    return out


HEADER = (f"{'policy':<15} {'false rollbacks':>24} {'incident RB':>8} {'must-catch missed':>24} "
          f"{'should-catch missed':>24} {'undec':>5} {'blast mean':>10} {'vs best':>7} {'promote s':>9}")
WIDTHS = (-15, 24, 8, 24, 24, 5, 10, 7, 9)  # negative: left-aligned


def cells(row: Row) -> list[str]:
    """One row's figures as the tables show them."""
    ratio = "-" if math.isnan(row.blast_ratio) else f"{row.blast_ratio:.3f}"
    promote = "-" if math.isnan(row.promote_time_mean) else f"{row.promote_time_mean:.0f}"
    incidents = str(row.incident_rollbacks.hits)
    if row.retried_promoted.runs:
        incidents += f" ({row.retried_promoted.hits}/{row.retried_promoted.runs} good ones retried and promoted)"
    return [row.policy, row.false_rollbacks.show(), incidents, row.must_missed.show(),
            row.should_missed.show(), str(row.undecided), f"{row.blast_mean:.1f}", ratio, promote]


def table(strategy_rows: Sequence[Row]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for r in strategy_rows:
        lines.append(" ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells(r), WIDTHS, strict=True)))
    return "\n".join(lines)


def markdown_table(strategy_rows: Sequence[Row]) -> str:
    head = ("| policy | false rollbacks | incident rollbacks | must-catch missed | should-catch missed | "
            "undecided | blast radius (mean) | vs best peer (geo. mean) | time to promote (mean s) |")
    return "\n".join([head, "|" + "---|" * 9] + ["| " + " | ".join(cells(r)) + " |" for r in strategy_rows])


# The judge's targets, per strategy (false rollbacks exclude rollbacks the policy labelled incidents).
MAX_FALSE_ROLLBACK = 0.01
MAX_FALSE_ROLLBACK_BOUND = 0.02
MAX_MUST_MISSED = 0.01
MAX_BLAST_RATIO = 0.2
MAX_PROMOTE_RATIO = 0.5


def verdicts(all_rows: Sequence[Row]) -> list[tuple[str, bool, str]]:
    """(target, met, figures) for safeship on each strategy."""
    out: list[tuple[str, bool, str]] = []
    for strategy in sorted({r.strategy for r in all_rows}):
        mine = [r for r in all_rows if r.strategy == strategy]
        own = next((r for r in mine if r.policy == OWN), None)
        if own is None:
            continue
        fr = own.false_rollbacks
        if fr.runs:
            out.append((f"[{strategy}] false rollbacks <= 1% (bound <= 2%)",
                        fr.rate <= MAX_FALSE_ROLLBACK and fr.bound <= MAX_FALSE_ROLLBACK_BOUND, fr.show()))
        mm = own.must_missed
        if mm.runs:
            out.append((f"[{strategy}] must-catch misses <= 1%", mm.rate <= MAX_MUST_MISSED, mm.show()))
        if not math.isnan(own.blast_ratio):
            out.append((f"[{strategy}] blast radius <= 0.2x the best peer's (geometric mean)",
                        own.blast_ratio <= MAX_BLAST_RATIO, f"{own.blast_ratio:.3f}"))
        eligible = [r.promote_time_mean for r in mine if r.policy != OWN and r.false_rollbacks.runs
                    and r.false_rollbacks.rate <= MAX_FALSE_ROLLBACK and not math.isnan(r.promote_time_mean)]
        if eligible and not math.isnan(own.promote_time_mean):
            fastest = min(eligible)
            out.append((f"[{strategy}] time to promote <= 0.5x the fastest peer's with <= 1% false rollbacks",
                        own.promote_time_mean <= MAX_PROMOTE_RATIO * fastest,
                        f"{own.promote_time_mean:.0f}s vs {fastest:.0f}s"))
    return out
