"""A Release rolled out by the operator in the stand-in cluster: applied, its version changed, a
canary run to success with the status showing each step; a bad version rolled back with the
judge's sentence; an approval given by annotation."""

from __future__ import annotations

import itertools
import math
from typing import Any

from conftest import SERVICE, OperatorRig, release_body

from safeship.kube import objects
from safeship.operator import release as rel


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


async def test_a_release_is_rolled_out_and_its_status_shows_each_step(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded" and rig.status().get("version") == "v1",
                    what="v1 deployed")
    first = rig.status()
    assert first["stableVersion"] == "v1" and first["candidate"] == ""
    assert _condition(first, "Healthy")["status"] == "True"

    writes_before = len(rig.status_writes())
    await rig.apply(release_body(rig.api, "v2", analysis={"error_tolerance": 1.5}))
    await rig.until(lambda: rig.status().get("version") == "v2" and rig.status().get("phase") == "succeeded",
                    timeout=40, what="v2 rolled out")
    status = rig.status()
    assert status["stableVersion"] == "v2", status
    assert _condition(status, "Progressing")["status"] == "False"
    assert _condition(status, "Progressing")["reason"] == "Succeeded"
    assert _condition(status, "RolledBack")["status"] == "False"
    assert status["observedGeneration"] == rig.release()["metadata"]["generation"]
    assert status["leader"] == "operator-a" and status["leaderEpoch"] == 0

    # Each canary weight was written into the status while the candidate had it.
    writes = rig.status_writes()[writes_before:]
    seen = [(w["status"].get("candidateWeight"), w["status"].get("step")) for w in writes]
    weights = [w for w, _ in seen if w is not None]
    for weight in (25, 50):
        assert weight in weights, seen
    assert weights.index(25) < weights.index(50), seen
    assert any(step and "analyze 25%" in step for _, step in seen), seen
    phases = [w["status"]["phase"] for w in writes if "phase" in w["status"]]
    assert phases[0] in ("pending", "preparing") and phases[-1] == "succeeded", phases
    # Status is written only when it changed: never two identical writes in a row.
    bodies = [w["status"] for w in writes]
    assert all(a != b for a, b in itertools.pairwise(bodies))

    # What the engine made for the Release is owned by it.
    release_uid = rig.release()["metadata"]["uid"]
    deployment = rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "v2"))
    virtual = rig.api.read(objects.ISTIO_API, "VirtualService", SERVICE)
    for obj in (deployment, virtual, rig.api.read("v1", "Service", SERVICE)):
        assert obj is not None
        [owner] = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("Release", SERVICE, release_uid, True)


async def test_a_bad_version_is_rolled_back_with_the_judges_sentence(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    rig.traffic.failing.add("v2-bad")
    await rig.apply(release_body(rig.api, "v2-bad"))
    await rig.until(lambda: rig.status().get("version") == "v2-bad" and rig.status().get("phase") == "rolled_back",
                    timeout=40, what="v2-bad rolled back")
    status = rig.status()
    rolled_back = _condition(status, "RolledBack")
    assert rolled_back["status"] == "True", status
    assert "error" in rolled_back["message"].lower(), rolled_back  # the judge's sentence: why
    assert rolled_back["message"] == status["message"]
    assert status["stableVersion"] == "v1" and _condition(status, "Healthy")["status"] == "False"
    assert rig.api.read("v1", "Service", SERVICE)["spec"]["selector"][objects.VERSION_LABEL] == "v1"


async def test_an_approval_is_given_by_annotation_once(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1", environment="gated"))
    await rig.until(lambda: rig.status().get("phase") == "awaiting_approval", what="awaiting approval")
    paused = _condition(rig.status(), "Paused")
    assert paused["status"] == "True" and "safeship.dev/approve" in paused["message"]
    await rig.annotate(rel.APPROVE, "alice")
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed after approval")
    status = rig.status()
    assert status["handled"] == {rel.APPROVE: "alice"}
    assert _condition(status, "Paused")["status"] == "False"
    approvals = [e.message for e in operator.store.events(status["deploymentId"]) if "approved by" in e.message]
    assert approvals == [f"approved by annotation {rel.APPROVE} on Release test/{SERVICE}"], approvals

    # The same annotation value is not acted on again (a re-applied manifest carries it still).
    writes = len(rig.status_writes())
    await rig.annotate("example.com/touched", "yes")
    tracked = operator.releases[(rig.api.namespace, SERVICE)]
    await rig.until(lambda: tracked.obj["metadata"].get("annotations", {}).get("example.com/touched") == "yes"
                    and not tracked.running and tracked.due == math.inf, what="the annotated Release reconciled")
    assert len(rig.status_writes()) == writes  # nothing changed, nothing written
    assert rig.status()["handled"] == {rel.APPROVE: "alice"}
    assert len([e for e in operator.store.events(status["deploymentId"]) if "approved by" in e.message]) == 1
