"""The operator's edge cases in the stand-in cluster: a rollback or an abort of a Release's first
version (nothing earlier to return to), a new image at the same version, a deleted Release
re-created, and a spec changed while a deployment rolls back."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from conftest import SERVICE, OperatorRig, release_body

from safeship.engine.phases import Phase
from safeship.kube import objects
from safeship.kube.client import KubeClient
from safeship.operator import release as rel
from safeship.operator.runner import Tracked

ACTIVE = ("pending", "preparing", "progressing", "monitoring", "awaiting_approval", "rolling_back")


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def _pods(rig: OperatorRig, version: str) -> list[dict[str, Any]]:
    return [p for p in rig.api.items("v1", "Pod", labels=objects.selector(SERVICE))
            if objects.object_version(p) == version]


def _slow_canary() -> dict[str, Any]:
    """A canary that holds each step long enough for a command to land in the middle of it."""
    return {"canary": {"traffic_percentages": [25, 50, 100], "step_duration": "60s", "min_step_duration": "60s"}}


async def _v2_canary_at_25(rig: OperatorRig) -> tuple[Any, str]:
    """An operator that has deployed v1 and holds v2's slow canary at 25%; the canary's deployment id."""
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    await rig.apply(release_body(rig.api, "v2", strategies=_slow_canary()))
    await rig.until(lambda: rig.status().get("candidateWeight") == 25, what="v2's canary at 25%")
    return operator, str(rig.status()["deploymentId"])


@pytest.mark.parametrize(("command", "served"), [(rel.ROLLBACK, False), (rel.ABORT, False), (rel.ROLLBACK, True)])
async def test_undoing_a_first_version_stops_it_and_says_nothing_earlier_serves(operator_rig: OperatorRig,
                                                                                command: str, served: bool) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1", strategies=None if served else _slow_canary()))
    wanted = ("succeeded",) if served else ("progressing", "monitoring")
    await rig.until(lambda: rig.status().get("phase") in wanted and len(_pods(rig, "v1")) == 2,
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


async def test_a_new_image_at_the_same_version_is_rolled_out_as_its_own_build(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    first_image = "registry.example/user-service@sha256:" + "a" * 64
    await rig.apply(release_body(rig.api, "v1", image=first_image))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    first_id = rig.status()["deploymentId"]

    # Only the image changes (a digest bumped by GitOps): it is rolled out, as a canary from v1.
    second_image = "registry.example/user-service@sha256:" + "b" * 64
    await rig.apply(release_body(rig.api, "v1", image=second_image))
    await rig.until(lambda: rig.status().get("image") == second_image and rig.status().get("phase") == "succeeded"
                    and rig.status().get("deploymentId") != first_id, timeout=40, what="the new image rolled out")
    status = rig.status()
    build = rel.ReleaseSpec.model_validate(release_body(rig.api, "v1", image=second_image)["spec"]).revision()
    assert build.startswith("v1+img.") and status["stableVersion"] == build, status
    assert status["version"] == "v1" and status["weights"] == {build: 100}
    record = operator.store.get_deployment(status["deploymentId"])
    assert (record.version, record.from_version) == (build, "v1")
    seen = [w["status"].get("candidateWeight") for w in rig.status_writes()]
    assert 25 in seen and 50 in seen, seen  # the canary's steps, not a switch
    assert _image(rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, build))) == second_image
    assert _image(rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "v1"))) == first_image
    assert rig.api.read("v1", "Service", SERVICE)["spec"]["selector"][objects.VERSION_LABEL] == \
        objects.version_label(build)
    assert {p["spec"]["containers"][0]["image"] for p in _pods(rig, build)} == {second_image}

    # Back to the first image: v1's own objects run it, so it is v1 again.
    await rig.apply(release_body(rig.api, "v1", image=first_image))
    await rig.until(lambda: rig.status().get("image") == first_image and rig.status().get("phase") == "succeeded",
                    timeout=40, what="the first image back")
    status = rig.status()
    assert status["stableVersion"] == "v1" and status["weights"] == {"v1": 100}, status
    assert operator.store.get_deployment(status["deploymentId"]).from_version == build


def _image(deployment: dict[str, Any] | None) -> str:
    assert deployment is not None
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


async def test_a_new_image_at_a_version_too_long_for_a_build_name_is_refused_clearly(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    version = "v" + "1" * 120  # a valid version; with `+img.<8 hex>` it is longer than 128 characters
    await rig.apply(release_body(rig.api, version, image="registry.example/user-service:a"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="the long version deployed")
    submitted = operator.stats["submitted"]
    await rig.apply(release_body(rig.api, version, image="registry.example/user-service:b"))
    await rig.until(lambda: _condition(rig.status(), "Progressing")["reason"] == "SameVersion", what="refused")
    status = rig.status()
    progressing = _condition(status, "Progressing")
    assert progressing["status"] == "False" and progressing["message"] == status["message"]
    assert "spec.image 'registry.example/user-service:b'" in status["message"]
    assert f"spec.version {version!r}" in status["message"] and "change spec.version" in status["message"]
    assert operator.stats["submitted"] == submitted  # nothing started
    assert status["stableVersion"] == version and status["phase"] == "succeeded"
    assert {p["spec"]["containers"][0]["image"] for p in _pods(rig, version)} == {"registry.example/user-service:a"}
    # Reconciled again (an annotation changed), it still says so.
    await rig.annotate("example.com/touched", "yes")
    tracked = operator.releases[(rig.api.namespace, SERVICE)]
    await rig.until(lambda: tracked.obj["metadata"].get("annotations", {}).get("example.com/touched") == "yes"
                    and not tracked.running and tracked.due == math.inf, what="reconciled again")
    assert _condition(rig.status(), "Progressing") == progressing and rig.status()["message"] == status["message"]


def _owned_objects_gone(rig: OperatorRig, *versions: str) -> bool:
    return (all(rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, v)) is None for v in versions)
            and rig.api.read("v1", "Service", SERVICE) is None
            and rig.api.read(objects.ISTIO_API, "VirtualService", SERVICE) is None
            and not rig.api.items("v1", "Pod", labels=objects.selector(SERVICE)))


@pytest.mark.parametrize("while_rolling_out", [False, True])
async def test_a_deleted_release_leaves_honest_history_and_a_recreated_one_starts_first(
        operator_rig: OperatorRig, while_rolling_out: bool) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    if while_rolling_out:
        await rig.apply(release_body(rig.api, "v2", strategies=_slow_canary()))
        await rig.until(lambda: rig.status().get("version") == "v2" and rig.status().get("candidateWeight") == 25,
                        what="v2's canary at 25%")
    last = rig.status()["deploymentId"]
    assert operator.store.current_version(SERVICE, "production") == "v1"
    await rig.delete()

    # The running deployment ended, and says why; the service is no longer deployed there.
    await rig.until(lambda: operator.store.current_version(SERVICE, "production") is None
                    and not Phase(operator.store.get_deployment(last).phase).is_active, timeout=15,
                    what="the store told of the deletion")
    ended = operator.store.get_deployment(last)
    if while_rolling_out:
        assert ended.phase == "cancelled" and f"Release {rig.api.namespace}/{SERVICE} deleted" in (ended.reason or "")
    else:
        assert ended.phase == "succeeded"  # its history is not rewritten
    assert operator.store.active_deployment(SERVICE, "production") is None
    await rig.until(lambda: _owned_objects_gone(rig, "v1", "v2"), timeout=15, what="the Release's objects deleted")

    # Re-created: a first deployment (nothing to compare with or return to), which succeeds.
    await rig.apply(release_body(rig.api, "v3"))
    await rig.until(lambda: rig.status_or_none() is not None and rig.status().get("phase") == "succeeded",
                    timeout=40, what="v3 deployed")
    status = rig.status()
    record = operator.store.get_deployment(status["deploymentId"])
    assert record.version == "v3" and record.from_version is None, record
    assert status["stableVersion"] == "v3" and status["weights"] == {"v3": 100}
    assert len(_pods(rig, "v3")) == 2 and not _pods(rig, "v1")
    versions = [d.version for d in operator.store.list_deployments(service=SERVICE, environment="production")]
    assert sorted(versions) == (["v1", "v2", "v3"] if while_rolling_out else ["v1", "v3"])  # the history stays


async def test_an_invalid_spec_mid_canary_is_reported_and_the_running_canary_is_still_judged(
        operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator, running = await _v2_canary_at_25(rig)

    # A spec the CRD accepts but the operator cannot act on (no such environment in its config).
    await rig.apply(release_body(rig.api, "v2", environment="nowhere", strategies=_slow_canary()))
    await rig.until(lambda: _condition(rig.status(), "Progressing")["reason"] == "InvalidSpec", what="refused")
    assert "spec.environment: 'nowhere'" in rig.status()["message"]
    # The canary it had under way is still driven by the last valid spec: v2 goes bad, it is rolled back.
    rig.traffic.failing.add("v2")
    await rig.until(lambda: operator.store.get_deployment(running).phase == "rolled_back", timeout=40,
                    what="v2 rolled back under the last valid spec")
    await rig.until(lambda: rig.status().get("phase") == "rolled_back", what="the status shows it")
    status = rig.status()
    assert _condition(status, "Progressing")["reason"] == "InvalidSpec"  # the spec is still refused
    assert _condition(status, "RolledBack")["status"] == "True" and status["stableVersion"] == "v1"
    assert "spec.environment: 'nowhere'" in status["message"]
    assert rig.api.read("v1", "Service", SERVICE)["spec"]["selector"][objects.VERSION_LABEL] == "v1"
    submitted = operator.stats["submitted"]

    # Fixed: the refusal goes; v2 was rolled back and is not retried (image and version unchanged).
    await rig.apply(release_body(rig.api, "v2"))
    await rig.until(lambda: _condition(rig.status(), "Progressing")["reason"] == "RolledBack", what="accepted again")
    assert rig.status()["phase"] == "rolled_back" and operator.stats["submitted"] == submitted


async def test_a_deletion_handled_late_leaves_the_release_recreated_under_its_name(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    earlier = copy.deepcopy(rig.release())  # as an earlier Release of this name, deleted, would be (at v1)
    earlier["metadata"]["uid"] = "an-earlier-uid"
    await rig.apply(release_body(rig.api, "v2", strategies=_slow_canary()))
    await rig.until(lambda: rig.status().get("candidateWeight") == 25, what="v2's canary at 25%")
    running = rig.status()["deploymentId"]

    await operator._forget(Tracked(obj=earlier))  # its DELETED event, handled only now

    assert Phase(operator.store.get_deployment(running).phase).is_active
    assert operator.store.current_version(SERVICE, "production") == "v1"


async def test_a_new_version_mid_canary_cancels_the_running_one_then_rolls_out(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator, replaced = await _v2_canary_at_25(rig)
    await rig.apply(release_body(rig.api, "v3"))
    await rig.until(lambda: rig.status().get("version") == "v3" and rig.status().get("phase") == "succeeded",
                    timeout=40, what="v3 rolled out")
    status = rig.status()
    assert status["stableVersion"] == "v3" and status["deploymentId"] != replaced
    ended = operator.store.get_deployment(replaced)
    assert ended.phase == "cancelled" and "Release spec changed to v3" in (ended.reason or ""), ended.reason
    assert operator.store.get_deployment(status["deploymentId"]).from_version == "v1"


async def test_deleting_a_second_release_of_the_service_leaves_the_first_ones_version_deployed(
        operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    copy_body = release_body(rig.api, "v1")
    copy_body["metadata"]["name"] = "user-service-copy"  # a copy-pasted Release of the same service
    rig.api.write(copy_body)
    await rig.api.emulator.publish()
    key = (rig.api.namespace, "user-service-copy")

    def copy_status() -> dict[str, Any]:
        found = rig.api.read(rel.API_VERSION, rel.KIND, "user-service-copy", rig.api.namespace)
        return dict((found or {}).get("status") or {})

    await rig.until(lambda: "already serves" in copy_status().get("message", ""), what="the copy refused")
    async with KubeClient.from_kubeconfig(str(rig.api.kubeconfig), context=rig.api.context,
                                          namespace=rig.api.namespace) as kube:
        await kube.delete(rel.API_VERSION, rel.KIND, "user-service-copy", rig.api.namespace)
    await rig.until(lambda: key not in operator.releases and not operator._forgetting, what="the copy forgotten")
    assert operator.store.current_version(SERVICE, "production") == "v1"
    assert len(_pods(rig, "v1")) == 2 and rig.status()["stableVersion"] == "v1"


async def test_the_engines_retry_after_an_incident_counts_as_the_releases_own(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    first = operator.store.get_deployment(rig.status()["deploymentId"])
    retry = first.replace(id="deploy-retry", request={**first.request,
                                                      "requested_by": f"retry after the incident of {first.id}"})
    assert operator._started_by(retry) == f"Release {rig.api.namespace}/{SERVICE}"
    lost = first.replace(request={**first.request, "requested_by": "retry after the incident of deploy-gone"})
    assert operator._started_by(lost) == "retry after the incident of deploy-gone"
