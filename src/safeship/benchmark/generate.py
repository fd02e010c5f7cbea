"""Releases drawn from a broad, declared distribution, for a benchmark nobody can tune to.

`draw(n, gen_seed)` returns n releases; release i depends only on (gen_seed, i), so a subset can be
drawn again, and the same seed always gives the same scenarios and the same labels. The
distribution is written down in bench/README.md; the constants below are that text's numbers.

Each release is a scenario (the same format as the files in scenarios/, validated by the same
model) plus what the benchmark needs to know about it: its kind, the shapes that modify it, and
its label (good, must-catch or should-catch; see `labels.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safeship.benchmark.labels import Label, label_release
from safeship.config.scenario import Scenario

STRATEGIES = ("canary", "blue_green", "rolling", "recreate")
HORIZON_S = 3600.0  # each scenario's duration; the benchmark charges a promotion at least an hour more
RPS_RANGE = (1.0, 2000.0)  # log-uniform
BASE_ERROR_RANGE = (0.0005, 0.03)  # log-uniform; a share ZERO_ERROR_SHARE of services fail nothing
ZERO_ERROR_SHARE = 0.15
BURST_RANGE = (1.0, 20.0)  # log-uniform mean failure-run length; INDEPENDENT_SHARE have runs of 1
INDEPENDENT_SHARE = 0.4
P50_RANGE_MS = (2.0, 500.0)  # log-uniform
TAIL_RATIO_RANGE = (1.5, 20.0)  # p99 / p50, log-uniform
INCIDENT_COUNTS = ((0, 0.6), (1, 0.3), (2, 0.1))
# How long the replaced version served alone before the deployment (its record's longest span),
# log-uniform: from a release ten minutes after the last one to a version a few days old. Drawn
# from a generator of its own, so that every other part of a release is as it was without it.
RECORD_RANGE_S = (600.0, 259_200.0)
INCIDENT_DURATION_RANGE_S = (5.0, 300.0)  # log-uniform
INCIDENT_START_RANGE_S = (0.0, 1500.0)  # uniform, from the deployment's start: any phase
GOOD_SHARE = 0.4
GOOD_KINDS = (("identical", 0.4), ("slightly_better", 0.3), ("slightly_worse", 0.3))
WITHIN_TOLERANCE = 1.1  # a slightly worse good release: errors and p99 at most this many times the baseline's
BAD_KINDS = (("errors", 0.35), ("latency", 0.25), ("crash", 0.1), ("crash_loop", 0.07),
             ("memory_growth", 0.08), ("queue_growth", 0.15))
ERROR_FACTOR_RANGE = (1.3, 20.0)  # log-uniform
ERROR_FLOOR_RANGE = (0.001, 0.05)  # a service that fails nothing regresses to this (log-uniform)
LATENCY_INCREASE_RANGE = (0.1, 5.0)  # p99 grows by this fraction (+10% .. +500%), log-uniform
# Shapes that modify an errors or latency regression, each drawn on its own with this chance.
MODIFIER_CHANCES = {"onset": 0.3, "ramp": 0.3, "intermittent": 0.15, "load_dependent": 0.15,
                    "per_instance": 0.15, "runs": 0.2}
ONSET_RANGE_S = (10.0, 600.0)
RAMP_RANGE_S = (30.0, 900.0)
INTERMITTENT_PERIOD_RANGE_S = (20.0, 300.0)
INTERMITTENT_DUTY_RANGE = (0.1, 0.5)
LOAD_THRESHOLD_RANGE = (25.0, 100.0)  # the regression shows at and above this share of traffic
CANDIDATE_BURST_RANGE = (2.0, 50.0)  # the candidate's extra failures come in runs this long
CRASH_AFTER_RANGE_S = (10.0, 1800.0)  # log-uniform: a crash at a random time
CRASH_LOOP_RANGE_S = (3.0, 30.0)
MEMORY_RAMP_RANGE_S = (120.0, 1800.0)
QUEUE_FACTOR_RANGE = (3.0, 20.0)
QUEUE_RAMP_RANGE_S = (60.0, 1200.0)
REPLICAS = 2  # instances per version in the simulation (safeship.engine.simulate.REPLICAS)


@dataclass(frozen=True)
class Release:
    index: int
    kind: str  # a good kind or a bad kind above
    shapes: tuple[str, ...]  # modifiers of a regression
    spec: dict[str, Any]  # the scenario, as a scenario file would hold it
    label: Label
    incident_windows: tuple[tuple[float, float], ...] = field(default=())

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def strategy(self) -> str:
        return str(self.spec["strategy"])

    def scenario(self) -> Scenario:
        return Scenario.model_validate(self.spec)


def draw(n: int, gen_seed: int) -> list[Release]:
    return [draw_one(gen_seed, i) for i in range(n)]


def draw_one(gen_seed: int, index: int) -> Release:
    rng = np.random.default_rng([gen_seed, index, 0x5AFE])
    strategy = STRATEGIES[index % len(STRATEGIES)]  # each strategy gets a quarter
    rps = _log_uniform(rng, *RPS_RANGE)
    traffic: dict[str, Any] = {"rps": round(rps, 3), **_pattern(rng)}
    incidents = _incidents(rng)
    if incidents:
        traffic["incidents"] = incidents
    p50 = _log_uniform(rng, *P50_RANGE_MS)
    p99 = p50 * _log_uniform(rng, *TAIL_RATIO_RANGE)
    base_error = 0.0 if rng.random() < ZERO_ERROR_SHARE else _log_uniform(rng, *BASE_ERROR_RANGE)
    burst = 1.0 if rng.random() < INDEPENDENT_SHARE else _log_uniform(rng, *BURST_RANGE)
    baseline = {"error_rate": round(base_error, 6), "latency_ms": {"p50": round(p50, 3), "p99": round(p99, 3)},
                "error_burst": round(burst, 3)}
    good = rng.random() < GOOD_SHARE
    kind = _choice(rng, GOOD_KINDS if good else BAD_KINDS)
    candidate, shapes = (_good(rng, kind, baseline) if good else _bad(rng, kind, baseline))
    spec: dict[str, Any] = {
        "name": f"gen{gen_seed}-{index:05d}-{strategy.replace('_', '-')}-{kind.replace('_', '-')}",
        "description": _describe(kind, shapes, rps, baseline, candidate, incidents),
        "seed": int(rng.integers(0, 2**31)),
        "duration_s": HORIZON_S,
        "history_s": round(_log_uniform(np.random.default_rng([gen_seed, index, 0x4849]), *RECORD_RANGE_S), 1),
        "strategy": strategy,
        "traffic": traffic,
        "baseline": baseline,
        "candidate": candidate,
        "expect": "promote" if good else "rollback",
    }
    windows = tuple((float(i["at_s"]), float(i["at_s"] + i["duration_s"])) for i in incidents)
    label = label_release(Scenario.model_validate(spec), bad=not good, replicas=REPLICAS)
    return Release(index, kind, tuple(shapes), spec, label, windows)


# ---------------------------------------------------------------- the parts of a release


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _choice(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in weighted]
    weights = np.array([w for _, w in weighted])
    return str(names[int(rng.choice(len(names), p=weights / weights.sum()))])


def _pattern(rng: np.random.Generator) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.5:
        return {"pattern": "constant"}
    if roll < 0.75:  # a day's swing compressed so that it matters within the horizon
        return {"pattern": "diurnal", "amplitude": round(rng.uniform(0.2, 0.8), 3),
                "period_s": round(rng.uniform(1800, 7200), 1)}
    return {"pattern": "bursty", "amplitude": round(rng.uniform(0.3, 1.0), 3),
            "period_s": round(rng.uniform(60, 600), 1)}


def _incidents(rng: np.random.Generator) -> list[dict[str, Any]]:
    count = int(_choice(rng, tuple((str(c), p) for c, p in INCIDENT_COUNTS)))
    out = []
    for _ in range(count):
        errors = rng.random() < 0.6
        slow = not errors or rng.random() < 0.4
        out.append({
            "at_s": round(rng.uniform(*INCIDENT_START_RANGE_S), 1),
            "duration_s": round(_log_uniform(rng, *INCIDENT_DURATION_RANGE_S), 1),
            "error_rate": round(rng.uniform(0.02, 0.3), 4) if errors else 0.0,
            "latency_factor": round(rng.uniform(1.5, 5.0), 3) if slow else 1.0,
        })
    return out


def _good(rng: np.random.Generator, kind: str, baseline: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    latency = baseline["latency_ms"]
    if kind == "identical":
        return {}, []
    if kind == "slightly_better":
        error_factor, latency_factor = rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.0)
    else:
        error_factor, latency_factor = rng.uniform(1.0, WITHIN_TOLERANCE), rng.uniform(1.0, WITHIN_TOLERANCE)
    return {"error_rate": round(min(1.0, baseline["error_rate"] * error_factor), 6),
            "latency_ms": {"p50": latency["p50"], "p99": round(latency["p99"] * latency_factor, 3)}}, []


def _bad(rng: np.random.Generator, kind: str, baseline: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    latency = baseline["latency_ms"]
    candidate: dict[str, Any] = {}
    shapes: list[str] = []
    if kind == "errors":
        base = baseline["error_rate"]
        target = base * _log_uniform(rng, *ERROR_FACTOR_RANGE) if base > 0 else _log_uniform(rng, *ERROR_FLOOR_RANGE)
        candidate["error_rate"] = round(min(0.95, target), 6)
    elif kind == "latency":
        growth = 1.0 + _log_uniform(rng, *LATENCY_INCREASE_RANGE)
        body = 1.0 + (growth - 1.0) * rng.uniform(0.0, 0.5)
        candidate["latency_ms"] = {"p50": round(latency["p50"] * body, 3), "p99": round(latency["p99"] * growth, 3)}
    elif kind == "crash":
        candidate["crash_after_s"] = round(_log_uniform(rng, *CRASH_AFTER_RANGE_S), 1)
    elif kind == "crash_loop":
        candidate["crash_after_s"] = round(rng.uniform(*CRASH_LOOP_RANGE_S), 1)
    elif kind == "memory_growth":
        ramp = rng.uniform(*MEMORY_RAMP_RANGE_S)
        # memory climbs from 300 MB to 900 MB over the ramp: the custom-metric trigger at 600 MB fires
        # halfway, and the process is killed for memory at the top
        candidate["metrics"] = {"memory_mb": {"baseline": 300.0, "candidate": 900.0, "noise": 5.0,
                                              "fail_above": 600.0}}
        candidate["ramp_s"] = round(ramp, 1)
        candidate["crash_after_s"] = round(ramp + 2.0, 1)
    elif kind == "queue_growth":
        factor = rng.uniform(*QUEUE_FACTOR_RANGE)
        candidate["latency_ms"] = {"p50": round(latency["p50"] * factor, 3),
                                   "p99": round(latency["p99"] * factor, 3)}
        candidate["ramp_s"] = round(rng.uniform(*QUEUE_RAMP_RANGE_S), 1)
    if kind in ("errors", "latency"):
        shapes = [s for s, chance in MODIFIER_CHANCES.items() if rng.random() < chance]
        if "runs" in shapes and kind != "errors":
            shapes.remove("runs")
        _modify(rng, candidate, shapes)
    return candidate, shapes


def _modify(rng: np.random.Generator, candidate: dict[str, Any], shapes: list[str]) -> None:
    if "onset" in shapes:
        candidate["onset_s"] = round(rng.uniform(*ONSET_RANGE_S), 1)
    if "ramp" in shapes:
        candidate["ramp_s"] = round(rng.uniform(*RAMP_RANGE_S), 1)
    if "intermittent" in shapes:
        candidate["intermittent"] = {"period_s": round(rng.uniform(*INTERMITTENT_PERIOD_RANGE_S), 1),
                                     "duty": round(rng.uniform(*INTERMITTENT_DUTY_RANGE), 3)}
    if "load_dependent" in shapes:
        candidate["min_weight_percent"] = round(rng.uniform(*LOAD_THRESHOLD_RANGE), 1)
    if "per_instance" in shapes:
        candidate["bad_instances"] = 1
    if "runs" in shapes:
        candidate["error_burst"] = round(_log_uniform(rng, *CANDIDATE_BURST_RANGE), 2)


def _describe(kind: str, shapes: list[str], rps: float, baseline: dict[str, Any], candidate: dict[str, Any],
              incidents: list[dict[str, Any]]) -> str:
    parts = [f"{kind.replace('_', ' ')} at {rps:.4g} req/s, baseline errors {baseline['error_rate']:.3%} "
             f"(runs of {baseline['error_burst']:g}), p50/p99 {baseline['latency_ms']['p50']:g}/"
             f"{baseline['latency_ms']['p99']:g} ms"]
    if "error_rate" in candidate:
        parts.append(f"candidate errors {candidate['error_rate']:.3%}")
    if "latency_ms" in candidate:
        parts.append(f"candidate p50/p99 {candidate['latency_ms']['p50']:g}/{candidate['latency_ms']['p99']:g} ms")
    if "crash_after_s" in candidate:
        parts.append(f"crashes {candidate['crash_after_s']:g}s after each start")
    if shapes:
        parts.append("shapes: " + ", ".join(shapes))
    if incidents:
        parts.append(f"{len(incidents)} shared incident{'s' if len(incidents) > 1 else ''}")
    return "; ".join(parts)
