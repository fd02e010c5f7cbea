"""`analysis.retry_after_incident`: a rollback labelled an incident (the restored version was
raised just as much) deploys the same release again once the restored version is back within its
record, and says so; without the setting, or while the incident lasts, nothing is retried."""

from __future__ import annotations

import asyncio
from typing import Any

from safeship.analysis.policies import get_policy
from safeship.config.models import SafeshipConfig
from safeship.config.scenario import Scenario
from safeship.engine.simulate import run_simulation
from safeship.store import Store


def _recreate_through(incident_s: float, *, retry: bool, seed: int = 1) -> tuple[dict[str, Any], Store]:
    # a good release deployed while a dependency fails 10% of every version's requests
    scenario = Scenario.model_validate({
        "name": "incident", "strategy": "recreate", "duration_s": 1800, "history_s": 86_400,
        "traffic": {"rps": 100, "incidents": [{"at_s": 20, "duration_s": incident_s, "error_rate": 0.1}]},
        "baseline": {"error_rate": 0.002, "latency_ms": {"p50": 20, "p99": 60}},
        "candidate": {}, "expect": "promote",
    })
    config = SafeshipConfig()
    config.intelligent_deployment.analysis.retry_after_incident = retry
    store = Store("sqlite://", deferred=True)
    result = asyncio.run(run_simulation(scenario, policy="safeship", policy_for=get_policy, seed=seed,
                                        config=config, store=store))
    return result, store


def test_an_incident_rollback_is_retried_once_the_incident_passes() -> None:
    result, store = _recreate_through(120, retry=True)
    assert result["decision"] == "rollback" and result["rollback_kind"] == "incident", result["reason"]
    assert result["retry_decision"] == "promote"
    first, retry = sorted(store.list_deployments(), key=lambda d: d.created_at)
    assert first.phase == "rolled_back" and retry.phase == "succeeded"
    assert retry.version == first.version
    assert retry.request["requested_by"] == f"retry after the incident of {first.id}"
    messages = [e.message for e in store.events(first.id)]
    assert any("is back within its record" in m and "retrying" in m for m in messages), messages
    assert f"retrying {first.version}: deployment {retry.id}" in messages
    # the retry started after the incident had passed (it ends at 140 s)
    assert retry.created_at - first.created_at >= 140


def test_without_the_setting_nothing_is_retried() -> None:
    result, store = _recreate_through(120, retry=False)
    assert result["rollback_kind"] == "incident" and result["retry_decision"] is None
    assert len(store.list_deployments()) == 1


def test_an_incident_that_does_not_pass_is_not_waited_out_for_ever() -> None:
    result, store = _recreate_through(3000, retry=True)
    assert result["rollback_kind"] == "incident" and result["retry_decision"] is None
    assert len(store.list_deployments()) == 1
    first = store.list_deployments()[0]
    assert any("still raised" in e.message and "not retrying" in e.message for e in store.events(first.id))
