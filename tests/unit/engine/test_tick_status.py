"""A tick knows its status as read without writing it out again when the record it works on
carries a status that a tick's result wrote: that holds only because such a status comes back
unchanged through DeploymentStatus.from_json and to_json, which is checked here over every
status a few simulations write."""

from __future__ import annotations

from typing import Any

import pytest

from safeship.analysis.policies import get_policy
from safeship.config.scenario import Scenario
from safeship.engine.context import Tick
from safeship.engine.simulate import simulate
from safeship.engine.status import DeploymentStatus
from safeship.store import DeploymentRecord, Store

SPECS: list[dict[str, Any]] = [
    {"name": "good", "expect": "promote", "duration_s": 900, "traffic": {"rps": 50}},
    {"name": "bad", "expect": "rollback", "duration_s": 900, "traffic": {"rps": 50}, "candidate": {"error_rate": 0.2}},
    {"name": "crash", "expect": "rollback", "duration_s": 900, "traffic": {"rps": 50},
     "candidate": {"crash_after_s": 400}},
    {"name": "bg", "expect": "rollback", "duration_s": 900, "traffic": {"rps": 50}, "strategy": "blue_green",
     "candidate": {"error_rate": 0.05}},
]


@pytest.mark.parametrize("policy", ["safeship", "kayenta"])
def test_every_status_a_tick_writes_comes_back_unchanged(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[dict[str, Any]] = []
    save = Store.save_transition

    def keep(self: Store, before: DeploymentRecord, after: DeploymentRecord, *args: Any, **kwargs: Any) -> Any:
        written.append(after.status)
        return save(self, before, after, *args, **kwargs)

    monkeypatch.setattr(Store, "save_transition", keep)
    for spec in SPECS:
        simulate(Scenario.model_validate(spec), policy=policy, policy_for=get_policy, seed=2)
    assert len(written) > 50
    for status in written:
        assert DeploymentStatus.from_json(status).to_json() == status


def test_a_status_with_keys_no_one_reads_is_unchanged_by_a_tick_that_changes_nothing() -> None:
    status = {**DeploymentStatus(replicas=2).to_json(), "start_counters": {"v1": {"requests": 3}}}
    record = DeploymentRecord(
        id="deploy-1", service="svc", environment="prod", version="v2", from_version="v1", strategy="canary",
        strategy_reason="", policy="safeship", phase="progressing", step_index=0, plan=[], status=status,
        request={}, created_at=1.0, updated_at=1.0, phase_started_at=1.0, step_started_at=1.0,
    )
    tick = Tick(record, 2.0)
    assert not tick.dirty and tick.outcome() is None
    tick.status.replicas = 3
    after = tick.outcome()
    assert after is not None and after.status == {"replicas": 3}
    # the next tick of what this one wrote knows its form as read without writing it out
    again = Tick(after, 3.0)
    assert not again.dirty and again.outcome() is None
