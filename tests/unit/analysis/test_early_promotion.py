"""Early promotion on evidence: a canary step ends before its pacing allows once the candidate is
shown, side by side, within the declared tolerance on errors, p95 and p99, each by its own test of
"worse than tolerated". A busy service that fails nothing shows that within a minute or two; a
release worse than its tolerance on any metric never does."""

from __future__ import annotations

import asyncio
from typing import Any

from safeship.analysis.policies import get_policy
from safeship.config.models import SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.simulate import run_simulation
from safeship.store import Store

CLEAN = {"error_rate": 0.0, "latency_ms": {"p50": 30, "p99": 200}}
EARLY = "within the declared tolerance on evidence"


def _run(candidate: dict[str, Any], *, config: SafeshipConfig | None = None,
         expect: str = "promote") -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    scenario = Scenario.model_validate({
        "name": "early", "strategy": "canary", "duration_s": 1800, "history_s": 3600,
        "traffic": {"rps": 1000}, "baseline": CLEAN, "candidate": candidate, "expect": expect,
    })
    store = Store("sqlite://", deferred=True)
    result = asyncio.run(run_simulation(scenario, policy="safeship", policy_for=get_policy, seed=1, store=store,
                                        config=config))
    deployment = store.list_deployments()[0]
    return result, [(e.at - deployment.created_at, e.kind, e.message) for e in store.events(deployment.id)]


def test_a_good_release_on_a_busy_service_ends_its_steps_early() -> None:
    result, events = _run({})
    assert result["decision"] == "promote", result["reason"]
    early = [m for _t, kind, m in events if kind == "analysis_passed" and EARLY in m]
    assert early, [m for _t, kind, m in events if kind == "analysis_passed"]
    assert "errors e=" in early[0] and "p95 e=" in early[0] and "p99 e=" in early[0]

    config = SafeshipConfig()
    config.intelligent_deployment.analysis.early_promotion = False
    paced, paced_events = _run({}, config=config)
    assert not any(EARLY in m for _t, _k, m in paced_events)
    # the same release, the same seed: promoted sooner with the evidence than by the pacing
    assert result["promoted_at_s"] < paced["promoted_at_s"]


def test_a_release_slower_than_its_tolerance_never_ends_a_step_early() -> None:
    # p99 1.6x the baseline's, beyond the declared 1.25x
    result, events = _run({"latency_ms": {"p50": 30, "p99": 320}}, expect="rollback")
    assert not any(EARLY in m for _t, _k, m in events)
    assert result["decision"] == "rollback", result["reason"]


def test_a_release_with_errors_where_the_baseline_has_none_never_ends_a_step_early() -> None:
    # 0.3% errors: above the declared absolute tolerance (0.1%) and infinitely many times 0
    result, events = _run({"error_rate": 0.003}, expect="rollback")
    assert not any(EARLY in m for _t, _k, m in events)
    assert result["decision"] == "rollback", result["reason"]
