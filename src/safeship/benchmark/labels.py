"""Which bad releases any careful deployment system must catch: a rule on the release's own
parameters, the strategy's declared analysis windows and nothing about any policy.

The windows are the time a strategy spends judging the candidate at the default settings, laid
end to end from the candidate's first request:

- canary: each configured weight below 100% for `step_duration`, then the monitoring window at 100%;
- blue-green: `post_switch_analysis` at 100%, then the monitoring window;
- rolling (2 instances, surge 1, unavailable 1): 1/3, 1/2 and 2/3 of the traffic for `step_analysis`
  each, then the monitoring window;
- recreate: `analysis` at 100%, then the monitoring window.

Over those windows the rule integrates, second by second, the candidate's expected requests and
how much of its regression is in force (onset, ramp, intermittent duty, the share of instances
that carry it, and whether its weight reaches a load-dependent threshold). Then:

- errors: the expected failed requests beyond what the service declares it accepts (the default
  `analysis.error_tolerance`, 1.2x the baseline's rate), against the noise of the baseline's own
  failures over the same requests, counted twice (the candidate's and an equally large
  control's) and inflated by the baseline's failure runs (variance x (2 * run length - 1));
- latency: the expected requests slower than the most the candidate's p99 may be (the default
  `analysis.latency_tolerance`, 1.25x the baseline's p99) beyond the 1% a p99 allows, against the
  noise of 1% of the same requests, twice;
- a release is **must-catch** when either excess reaches both MIN_EXCESS events and Z_MUST
  standard deviations; when it never becomes ready; when an instance crashes inside the
  windows; or when a custom metric crosses its threshold early enough to stay above it for its
  trigger's duration (60 s) inside them. Every other bad release is **should-catch**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from safeship.config.models import AnalysisConfig, CustomMetricTrigger, MonitoringConfig, StrategiesConfig
from safeship.config.scenario import Scenario

MIN_EXCESS = 20.0  # events: below this no test on any policy's data could be held to catching it
Z_MUST = 5.0  # standard deviations of the control's own noise
SLOW_SHARE = 0.01  # the share of requests a p99 leaves above it
TOLERANCE = AnalysisConfig()  # what a service accepts unless it says otherwise
# A custom metric's trigger fires once the gauge has been above its threshold this long (the
# seed's rule, and the default `duration` of a custom_metric trigger).
METRIC_TRIGGER_S = float(CustomMetricTrigger.model_fields["duration"].default)
READY_DELAY_S = 2.0  # a new instance takes traffic about this long after it starts


@dataclass(frozen=True)
class Label:
    kind: str  # "good", "must" or "should"
    reason: str
    excess_errors: float = 0.0
    error_sd: float = 0.0
    excess_slow: float = 0.0
    slow_sd: float = 0.0
    window_s: float = 0.0

    @property
    def must(self) -> bool:
        return self.kind == "must"


def strategy_windows(strategy: str, replicas: int = 2) -> list[tuple[float, float]]:
    """(candidate weight percent, seconds) of each judged window, in order."""
    settings = StrategiesConfig()
    monitoring = (100.0, MonitoringConfig().duration)
    if strategy == "canary":
        canary = settings.canary
        return [(float(w), canary.step_duration) for w in canary.traffic_percentages if w < 100] + [monitoring]
    if strategy == "blue_green":
        return [(100.0, settings.blue_green.post_switch_analysis), monitoring]
    if strategy == "rolling":
        shares = [100.0 * new / (new + old) for new, old in _rolling_moves(replicas) if old]
        return [(share, settings.rolling.step_analysis) for share in shares] + [monitoring]
    if strategy == "recreate":
        return [(100.0, settings.recreate.analysis), monitoring]
    raise ValueError(f"unknown strategy {strategy!r}")


def _rolling_moves(replicas: int) -> list[tuple[int, int]]:
    """(new, old) instance counts with one surge and one unavailable: add one, remove one."""
    new, old, moves = 0, replicas, []
    while new < replicas:
        new += 1
        moves.append((new, old))
        if old:
            old -= 1
            moves.append((new, old))
    return moves


def label_release(scenario: Scenario, *, bad: bool, replicas: int = 2) -> Label:
    if not bad:
        return Label("good", "a good release")
    windows = strategy_windows(scenario.strategy.value, replicas)
    seconds = np.arange(int(sum(d for _, d in windows)), dtype=float) + 0.5
    weight = np.concatenate([np.full(int(d), w) for w, d in windows])
    share = _regression_share(scenario, seconds, weight, replicas)
    requests = scenario.traffic.rps * weight / 100.0  # per second
    total = float(seconds.size)
    cand = scenario.candidate
    base_error = scenario.baseline.error_rate
    full_error = base_error if cand.error_rate is None else cand.error_rate
    accepted = (TOLERANCE.error_tolerance - 1.0) * base_error  # above the baseline's own rate
    excess_errors = float(np.sum(requests * np.maximum(0.0, share * (full_error - base_error) - accepted)))
    inflation = 2.0 * scenario.baseline.error_burst - 1.0
    error_sd = math.sqrt(2.0 * inflation * float(requests.sum()) * base_error)
    slow_base, slow_full = _slow_shares(scenario)
    slow = (1.0 - share) * slow_base + share * slow_full
    excess_slow = float(np.sum(requests * np.maximum(0.0, slow - SLOW_SHARE)))
    slow_sd = math.sqrt(2.0 * float(requests.sum()) * SLOW_SHARE)
    common = {"excess_errors": excess_errors, "error_sd": error_sd, "excess_slow": excess_slow,
              "slow_sd": slow_sd, "window_s": total}
    if not cand.ready:
        return Label("must", "the candidate never passes its readiness probe", **common)
    if cand.crash_after_s is not None and cand.crash_after_s - READY_DELAY_S <= total:
        return Label("must", f"an instance crashes {cand.crash_after_s:g}s after start, inside the "
                     f"{total:.0f}s judged", **common)
    crossing = _metric_crossing(scenario)
    if crossing is not None and crossing + METRIC_TRIGGER_S <= total:
        return Label("must", f"a custom metric crosses its threshold {crossing:.0f}s in and stays above it "
                     f"for the trigger's {METRIC_TRIGGER_S:.0f}s inside the {total:.0f}s judged", **common)
    for excess, sd, what in ((excess_errors, error_sd, "failed"), (excess_slow, slow_sd, "too slow")):
        if excess >= MIN_EXCESS and excess >= Z_MUST * sd:
            return Label("must", f"{excess:.0f} {what} requests beyond the tolerance expected in the "
                         f"{total:.0f}s judged ({excess / sd if sd else math.inf:.1f} sd of the control's noise)",
                         **common)
    return Label("should", f"excess failed {excess_errors:.1f} (sd {error_sd:.1f}), excess slow "
                 f"{excess_slow:.1f} (sd {slow_sd:.1f}) in the {total:.0f}s judged", **common)


def _regression_share(scenario: Scenario, t: np.ndarray, weight: np.ndarray, replicas: int) -> np.ndarray:
    """How much of the candidate's regression is in force at each second (0..1), averaged over its
    instances: the simulator's own rule (`Scenario.regression_share`)."""
    carried = scenario.regressed_instances(replicas) / replicas
    return np.array([scenario.regression_share(float(s), float(w)) * carried for s, w in zip(t, weight, strict=True)])


def _slow_shares(scenario: Scenario) -> tuple[float, float]:
    """The shares of the baseline's and of the fully regressed candidate's requests slower than
    the most the candidate's p99 may be: the baseline's p99 times the declared tolerance."""
    base_mu, base_sigma = scenario.baseline.latency_ms.mu_sigma
    p99 = math.exp(base_mu + 2.3263478740408408 * base_sigma)
    bound = math.log(max(TOLERANCE.latency_tolerance * p99, p99 + TOLERANCE.latency_tolerance_ms))
    latency = scenario.candidate.latency_ms or scenario.baseline.latency_ms
    return _share_above(bound, base_mu, base_sigma), _share_above(bound, *latency.mu_sigma)


def _share_above(log_bound: float, mu: float, sigma: float) -> float:
    if sigma <= 0:
        return 1.0 if mu > log_bound else 0.0
    return 0.5 * math.erfc((log_bound - mu) / (sigma * math.sqrt(2.0)))


def _metric_crossing(scenario: Scenario) -> float | None:
    """Seconds after the first request at which a custom metric's centre reaches its threshold."""
    first: float | None = None
    cand = scenario.candidate
    for spec in cand.metrics.values():
        if spec.fail_above is None or spec.candidate is None or spec.candidate <= spec.fail_above:
            continue
        if spec.baseline > spec.fail_above:
            at = 0.0
        else:
            part = (spec.fail_above - spec.baseline) / (spec.candidate - spec.baseline)
            at = cand.onset_s + part * cand.ramp_s
        first = at if first is None else min(first, at)
    return first
