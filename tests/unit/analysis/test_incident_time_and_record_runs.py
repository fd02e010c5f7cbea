"""Two rules of the judge, on constructed evidence (docs/analysis.md):

- the candidate's failures are judged with the replaced version's dispersion where its record
  measured it (at least MIN_RECORD_FAILURES failures): runs the candidate shows and the record
  does not are part of a regression, not noise;
- the seconds an incident made the policy set aside (from the checkpoint before the alarm to the
  alarm, and the split) judged nothing: the window lasts that much longer.
"""

from __future__ import annotations

from typing import Any

from safeship.analysis.base import SplitEvidence, SplitKind, StepContext, TickSample, Verdict
from safeship.analysis.judge import new_e_process
from safeship.analysis.policies.safeship import MIN_RECORD_FAILURES, SafeshipPolicy
from safeship.traffic import TrafficCounters


def _single_ctx(record: TrafficCounters | None, dispersion: float | None, *, t: float,
                duration: float = 300.0) -> StepContext:
    return StepContext(step_index=0, time_in_step=t, time_in_analysis=t, compare=False, step_duration=duration,
                       promoted=True, history=record, history_span_s=86_400.0, history_dispersion=dispersion,
                       strategy="recreate")


def _run_in_runs(record: TrafficCounters | None, dispersion: float | None, looks: int = 300) -> list[Verdict]:
    """A candidate at 100 requests a second that fails 1% of them in runs of 20 (one run every 20 s),
    judged alone against the record: the verdict of every look."""
    policy, state, verdicts = SafeshipPolicy(), SafeshipPolicy().start(), []
    for i in range(looks):
        failed = 20 if i % 20 == 10 else 0
        sample = TickSample(t=float(i + 1), dt=1.0, baseline=TrafficCounters(),
                            candidate=TrafficCounters(requests=100, errors=failed), candidate_weight=100)
        state, decision = policy.observe(state, sample, _single_ctx(record, dispersion, t=float(i + 1), duration=1e9))
        verdicts.append(decision.verdict)
        if decision.verdict is Verdict.FAILED:
            break
    return verdicts


def test_runs_the_record_never_showed_are_judged_as_the_record_fails_and_rolled_back() -> None:
    # 0.5% over a day, failures measured independent (dispersion 1): the candidate's 1% in runs of
    # 20 is twice the rate and a new kind of failure
    record = TrafficCounters(requests=1_000_000, errors=5_000)
    verdicts = _run_in_runs(record, 1.0)
    assert verdicts[-1] is Verdict.FAILED, verdicts[-5:]
    assert len(verdicts) < 300


def test_a_record_that_shows_the_same_runs_judges_them_as_runs() -> None:
    # the old version fails in runs as long (its record's dispersion 39 = 2 x 20 - 1): no alarm
    record = TrafficCounters(requests=1_000_000, errors=5_000)
    assert Verdict.FAILED not in _run_in_runs(record, 39.0)


def test_a_record_with_too_few_failures_to_show_runs_leaves_the_candidates_own_estimate() -> None:
    # the same rate in a record with fewer than MIN_RECORD_FAILURES failures: its dispersion of 1
    # may only mean that its runs did not show, so the candidate's runs count as runs
    few = MIN_RECORD_FAILURES - 1
    record = TrafficCounters(requests=few * 200, errors=few)
    assert Verdict.FAILED not in _run_in_runs(record, 1.0)


def test_side_by_side_the_candidates_runs_are_judged_with_the_baselines_dispersion() -> None:
    # a canary step at 50%: the baseline fails 0.5% independently, the candidate 1% in runs of 20
    record = TrafficCounters(requests=1_000_000, errors=5_000)

    def verdicts(dispersion: float) -> list[Verdict]:
        policy, state, out = SafeshipPolicy(), SafeshipPolicy().start(), []
        for i in range(300):
            base = TrafficCounters(requests=100, errors=1 if i % 2 else 0)
            cand = TrafficCounters(requests=100, errors=20 if i % 20 == 10 else 0)
            ctx = StepContext(step_index=3, time_in_step=float(i + 1), time_in_analysis=float(i + 1), compare=True,
                              step_duration=1e9, min_step_duration=1e9, history=record, history_span_s=86_400.0,
                              history_dispersion=dispersion, strategy="canary")
            state, decision = policy.observe(state, TickSample(float(i + 1), 1.0, base, cand, 50), ctx)
            out.append(decision.verdict)
            if decision.verdict is Verdict.FAILED:
                break
        return out

    assert verdicts(1.0)[-1] is Verdict.FAILED
    assert Verdict.FAILED not in verdicts(39.0)


def _resume(ledger: dict[str, Any], seconds: float) -> dict[str, Any]:
    record = TrafficCounters(requests=100_000, errors=500)
    calm = TrafficCounters(requests=3000, errors=15)
    split = SplitEvidence(alarm={"test": "single_errors"}, reason="error rate 1.5% vs 0.5%", baseline_version="v1",
                          candidate=calm, baseline=TrafficCounters(requests=3000, errors=300), recent_baseline=calm,
                          history=record, seconds=seconds, incident_since=10.0)
    outcome = SafeshipPolicy().settle_split(ledger, split)
    assert outcome.kind is SplitKind.RESUME and outcome.ledger is not None
    return outcome.ledger


def test_the_seconds_an_incident_set_aside_are_added_to_the_window() -> None:
    raised = {**new_e_process(), "marker": "raised"}
    # the alarm at 205 s; checkpoints every 20 s: the last one at least 20 s before the alarm is at 180 s
    ledger = {"clock": 205.0, "tests": {"single_errors": raised},
              "checkpoints": [[160.0, {}], [180.0, {}], [200.0, {}]]}
    resumed = _resume(ledger, seconds=90.0)
    assert resumed["unjudged_s"] == 25.0 + 90.0
    # a second incident adds its own; one with no checkpoint early enough sets aside the whole ledger
    again = _resume({**resumed, "clock": 30.0, "checkpoints": [[20.0, {}]]}, seconds=60.0)
    assert again["unjudged_s"] == 115.0 + 30.0 + 60.0


def test_a_window_with_seconds_set_aside_watches_that_much_longer_and_then_passes() -> None:
    policy = SafeshipPolicy()
    record = TrafficCounters(requests=1_000_000, errors=5_000)
    state = {**policy.start(), "unjudged_s": 100.0}
    clean = TickSample(t=1.0, dt=1.0, baseline=TrafficCounters(), candidate=TrafficCounters(requests=100),
                       candidate_weight=100)
    decided = {}
    for t in (10.0, 299.0, 301.0, 399.0, 401.0):
        state, decision = policy.observe(state, clean, _single_ctx(record, 1.0, t=t))
        decided[t] = decision
    assert [decided[t].verdict for t in (10.0, 299.0, 301.0, 399.0)] == [Verdict.INCONCLUSIVE] * 4
    assert "100s longer" in decided[301.0].reason
    assert decided[401.0].verdict is Verdict.SUCCESSFUL
    # without seconds set aside the window ends at its duration
    plain = policy.start()
    plain, decision = policy.observe(plain, clean, _single_ctx(record, 1.0, t=301.0))
    assert decision.verdict is Verdict.SUCCESSFUL


def test_a_record_with_long_runs_does_not_lend_them_to_a_candidate_whose_failures_are_independent() -> None:
    # the old version failed in runs (dispersion 20); the candidate fails 1% one at a time, twice
    # the record's rate: judged with its own, smaller dispersion, as before the record's was used
    record = TrafficCounters(requests=1_000_000, errors=5_000)
    policy, state, verdicts = SafeshipPolicy(), SafeshipPolicy().start(), []
    for i in range(600):
        sample = TickSample(t=float(i + 1), dt=1.0, baseline=TrafficCounters(),
                            candidate=TrafficCounters(requests=100, errors=1), candidate_weight=100)
        state, decision = policy.observe(state, sample, _single_ctx(record, 20.0, t=float(i + 1), duration=1e9))
        verdicts.append(decision.verdict)
        if decision.verdict is Verdict.FAILED:
            break
    assert verdicts[-1] is Verdict.FAILED
