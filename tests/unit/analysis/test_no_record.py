"""Blue-green with no record of the old colour from before the deployment (a router that has just
started, a source that cannot say): the new colour alone has nothing to be judged against, so it
is first judged side by side with the old colour, and takes all traffic only after that.

The shape is the live benchmark's: a fresh builtin router at 500 req/s, a release that fails 8%
of its requests where the old colour fails none. The seed's trigger (5% for 2 s) was the only
guard, did not fire, and the release was promoted. Here the errors are kept below any trigger
(2% against 0.2%), so that nothing but the comparison can stop it."""

from __future__ import annotations

import asyncio
from typing import Any

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.simulate import run_simulation
from safeship.store import Store

QUIET_OLD = {"error_rate": 0.002, "latency_ms": {"p50": 20, "p99": 90}}


def _scenario(candidate: dict[str, Any], *, history_s: float, expect: str) -> Scenario:
    return Scenario.model_validate({
        "name": "no-record", "strategy": "blue_green", "duration_s": 900, "history_s": history_s,
        "traffic": {"rps": 500}, "baseline": QUIET_OLD, "candidate": candidate, "expect": expect,
    })


def _run(scenario: Scenario, policy: str = "safeship") -> tuple[dict[str, Any], list[Any], list[dict[str, int]]]:
    store = Store("sqlite://", deferred=True)
    result = asyncio.run(run_simulation(scenario, policy=policy, policy_for=get_policy, seed=1, store=store))
    deployment = store.list_deployments()[0]
    events = store.events(deployment.id)
    weights = [dict(e.data["weights"]) for e in events if e.kind == "weights"]
    return result, events, weights


def test_a_bad_release_without_a_record_never_takes_all_traffic() -> None:
    result, events, weights = _run(_scenario({"error_rate": 0.02}, history_s=0, expect="rollback"))
    assert any(e.kind == "history_unavailable" for e in events)
    assert any(e.kind == "proving" for e in events)
    assert result["decision"] == "rollback", result["reason"]
    # the router was asked for the split and for the old colour back, never for the new one alone
    assert {"baseline": 50, "candidate": 50} in weights
    assert all(w.get("candidate", 0) < 100 for w in weights), weights
    # the sentence names the control: the old colour, side by side
    assert "error rate 2% vs 0.2" in result["reason"] and "for baseline side by side" in result["reason"], (
        result["reason"])


def test_a_good_release_without_a_record_is_promoted_after_the_side_by_side_proof() -> None:
    result, events, weights = _run(_scenario({}, history_s=0, expect="promote"))
    assert result["decision"] == "promote", result["reason"]
    assert weights[0] == {"baseline": 50, "candidate": 50} and weights[-1] == {"candidate": 100}, weights
    # the analysis after the switch judges the new colour against the split's counts of the old one
    looks = [e for e in events if e.kind == "look" and e.data.get("candidate_weight") == 100]
    assert looks


def test_with_a_record_there_is_no_split_before_the_switch() -> None:
    _result, events, weights = _run(_scenario({}, history_s=3600, expect="promote"))
    assert not any(e.kind == "proving" for e in events)
    assert weights[0] == {"candidate": 100}, weights


def test_models_of_other_tools_do_not_prove() -> None:
    _result, events, _weights = _run(_scenario({}, history_s=0, expect="promote"), policy="seed")
    assert not any(e.kind == "proving" for e in events)
