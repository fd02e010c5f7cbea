"""Good releases that shared incidents and clustered failures used to roll back.

Each case is the shape of a generated good release that safeship rolled back before: an incident
that ended before the split could see it (gen1-00024, gen1-01081), a service that never fails
whose split could never show the incident as passed (gen1-00048), a latency incident at a
canary's 75% step on a quiet service (gen1-00716), and a busy service whose failures come in
runs, whose first run in the candidate's first seconds read as a regression (gen1-00392,
gen1-00010)."""

from __future__ import annotations

from typing import Any

from safeship import histogram
from safeship.analysis import judge
from safeship.analysis.base import SplitEvidence, SplitKind
from safeship.analysis.policies import get_policy
from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import simulate
from safeship.routing.base import TrafficCounters


def _good(strategy: str, *, rps: float, baseline: dict[str, Any], incidents: list[dict[str, Any]] | None = None,
          candidate: dict[str, Any] | None = None) -> Scenario:
    return Scenario.model_validate({
        "name": "good", "strategy": strategy, "duration_s": 1800, "history_s": 86_400,
        "traffic": {"rps": rps, "incidents": incidents or []}, "baseline": baseline,
        "candidate": candidate or {}, "expect": "promote",
    })


def _decisions(scenario: Scenario, seeds: range) -> list[dict[str, Any]]:
    return [simulate(scenario, policy="safeship", policy_for=get_policy, seed=s) for s in seeds]


def _at(latency_ms: float, count: int) -> list[int]:
    buckets = histogram.empty()
    buckets[histogram.bucket_of(latency_ms)] = count
    return buckets


def test_two_versions_that_failed_nothing_are_not_apart() -> None:
    # half a request added to each side read 35 standard errors for 0 of 1,000 against 0 of 5
    # million: every split of a service that never fails looked like an incident that never passed
    assert judge.z_above(0, 1000, 0, 5_000_000) == 0.0
    assert judge.z_above(30, 1000, 0, 5_000_000) > 10


def test_a_split_of_a_service_that_never_fails_is_no_incident() -> None:
    record = TrafficCounters(requests=5_000_000, errors=0, latency_buckets=_at(20.0, 5_000_000))
    quiet = TrafficCounters(requests=1900, errors=0, latency_buckets=_at(20.0, 1900))
    split = SplitEvidence(alarm={"test": "single_errors"}, reason="error rate 0.36% vs 0%", baseline_version="v1",
                          candidate=quiet, baseline=quiet, recent_baseline=quiet, history=record, seconds=60.0,
                          incident_since=None)
    assert SafeshipPolicy().settle_split(SafeshipPolicy().start(), split).kind is SplitKind.ROLLBACK


def test_an_incident_in_the_watch_is_seen_by_the_split_and_waited_out() -> None:
    # 15% errors for 20 s, 8 minutes in: the canary was promoted at 282 s and is watched to 900 s.
    # Looking every 30 s, the alarm came after the incident and the split saw nothing: rolled back.
    incident = [{"at_s": 480, "duration_s": 20, "error_rate": 0.15}]
    calm = {"error_rate": 0.0005, "latency_ms": {"p50": 20, "p99": 40}}
    for strategy in ("canary", "blue_green"):
        runs = _decisions(_good(strategy, rps=200, baseline=calm, incidents=incident), range(1, 5))
        assert [r["decision"] for r in runs] == ["promote"] * 4, (strategy, [r["reason"] for r in runs])


def test_a_latency_incident_on_a_quiet_canary_is_not_the_release() -> None:
    # 9 req/s: at 75% the baseline serves about 2 requests a second, often none in a look, and
    # the looks without a baseline request to tell a shared slowdown used to count
    incident = [{"at_s": 484, "duration_s": 11, "latency_factor": 3.7}]
    quiet = {"error_rate": 0.0, "latency_ms": {"p50": 17, "p99": 31}}
    runs = _decisions(_good("canary", rps=8.8, baseline=quiet, incidents=incident), range(1, 9))
    reasons = [r["reason"] for r in runs]
    assert not any("side by side" in reason for reason in reasons), reasons  # side by side: never
    # An incident that ends as the candidate takes all the traffic (seed 1: promoted at 494 s, the
    # incident over at 495 s) leaves only the candidate's own slow requests against the record,
    # and a split that can no longer see it: that alarm stands, as a failure alone must.
    assert sum(r["decision"] == "promote" for r in runs) >= 6, reasons


def test_a_busy_service_whose_failures_come_in_runs_is_judged_with_its_records_runs() -> None:
    # 2% of requests fail in runs of mean 5 (the record measures 10x the dispersion of
    # independent failures): a run in the candidate's first seconds used to roll it back
    bursty = {"error_rate": 0.021, "error_burst": 5.0, "latency_ms": {"p50": 10, "p99": 110}}
    runs = _decisions(_good("canary", rps=900, baseline=bursty), range(1, 9))
    assert sum(r["decision"] == "promote" for r in runs) >= 7, [r["reason"] for r in runs]


def test_a_run_of_failures_on_the_old_version_is_no_incident_when_its_record_shows_such_runs() -> None:
    # gen1-00977: 1.6% of requests fail in runs of 15 (the record reads 29x the dispersion of
    # independent failures). 71 of 2,243 in the split's first 5 s read as an incident in plain
    # standard errors, three times in a row, and a release with twice the errors was promoted.
    record = TrafficCounters(requests=51_280_188, errors=821_065, latency_buckets=_at(5.0, 51_280_188))
    early = TrafficCounters(requests=2243, errors=71, latency_buckets=_at(5.0, 2243))
    split = SplitEvidence(alarm={"test": "single_errors"}, reason="error rate 3.2% vs 1.6%", baseline_version="v1",
                          candidate=early, baseline=early, recent_baseline=early, history=record, seconds=5.0,
                          incident_since=None, early=True, history_dispersion=29.2)
    assert SafeshipPolicy().settle_split(SafeshipPolicy().start(), split).kind is SplitKind.ROLLBACK
    plain = SplitEvidence(**{**split.__dict__, "history_dispersion": None})
    assert SafeshipPolicy().settle_split(SafeshipPolicy().start(), plain).kind is SplitKind.INCIDENT


def test_a_doubled_error_rate_on_a_busy_bursty_service_is_not_set_aside() -> None:
    bursty = {"error_rate": 0.016, "error_burst": 14.8, "latency_ms": {"p50": 3, "p99": 24}}
    scenario = Scenario.model_validate({
        "name": "bursty", "strategy": "blue_green", "duration_s": 1800, "history_s": 43_894,
        "traffic": {"rps": 1168}, "baseline": bursty,
        "candidate": {"error_rate": 0.034, "error_burst": 12.4}, "expect": "rollback",
    })
    runs = _decisions(scenario, range(1, 4))
    assert [r["decision"] for r in runs] == ["rollback"] * 3, [r["reason"] for r in runs]
