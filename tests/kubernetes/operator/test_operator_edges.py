"""The operator's edge cases in the stand-in cluster: a rollback or an abort of a Release's first
version (nothing earlier to return to), a new image at the same version, a deleted Release
re-created, and a spec changed while a deployment rolls back."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import SERVICE, OperatorRig, release_body

from safeship.kube import objects
from safeship.operator import release as rel

ACTIVE = ("pending", "preparing", "progressing", "monitoring", "awaiting_approval", "rolling_back")


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def _pods(rig: OperatorRig, version: str) -> list[dict[str, Any]]:
    return [p for p in rig.api.items("v1", "Pod", labels=objects.selector(SERVICE))
            if objects.object_version(p) == version]


def _slow_canary() -> dict[str, Any]:
    """A canary that holds each step long enough for a command to land in the middle of it."""
    return {"canary": {"traffic_percentages": [25, 50, 100], "step_duration": "60s", "min_step_duration": "60s"}}


@pytest.mark.parametrize("command", [rel.ROLLBACK, rel.ABORT])
async def test_undoing_a_first_version_stops_it_and_says_nothing_earlier_serves(operator_rig: OperatorRig,
                                                                                command: str) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1", strategies=_slow_canary()))
    await rig.until(lambda: rig.status().get("phase") in ("progressing", "monitoring") and len(_pods(rig, "v1")) == 2,
                    what="v1, the first version, running")
    deployment_id = rig.status()["deploymentId"]
    await rig.annotate(command, "now")
    await rig.until(lambda: rig.status().get("phase") not in ACTIVE and rig.status().get("handled"),
                    timeout=40, what="v1 undone")

    status = rig.status()
    ended = "rolled_back" if command == rel.ROLLBACK else "cancelled"
    assert status["phase"] == ended, status
    assert "no earlier version of user-service to return to" in status["message"], status["message"]
    assert "pods are stopped" in status["message"]
    assert status["stableVersion"] == "" and status["candidate"] == "" and status["weights"] == {}
    assert _condition(status, "Progressing")["status"] == "False"
    assert _condition(status, "Healthy")["status"] == "False"
    rolled_back = _condition(status, "RolledBack")
    if command == rel.ROLLBACK:
        assert (rolled_back["status"], rolled_back["reason"]) == ("True", "ManualNothingEarlier"), rolled_back
        assert rolled_back["message"] == status["message"]
    else:
        assert rolled_back["status"] == "False"
    # The candidate's pods stopped; no router refused a split on the way.
    await rig.until(lambda: not _pods(rig, "v1"), timeout=10, what="v1's pods gone")
    deployment = rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "v1"))
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    events = [e.message for e in operator.store.events(deployment_id)]
    assert not any("must sum to 100" in e or "rollback failed" in e for e in events), events
    assert operator.store.current_version(SERVICE, "production") is None
