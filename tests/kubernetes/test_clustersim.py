"""The cluster simulator moves status as Kubernetes' controllers and the kubelet would: rollouts
within maxSurge/maxUnavailable at every tick, Recreate that empties the old version first, failing
templates that never become available and hit the progress deadline, Endpoints, HTTPRoute status."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from clustersim import FAIL_ANNOTATION, HASH_LABEL, REVISION, ClusterSim, pod_ready, put_gateway, rolling_bounds
from emulator import ApiHandle

MAX_TICKS = 200


def deployment(
    name: str = "web",
    replicas: int = 4,
    image: str = "registry.example/web:1",
    strategy: dict[str, Any] | None = None,
    fail: str | None = None,
    deadline: int | None = None,
) -> dict[str, Any]:
    labels = {"app": name}
    template: dict[str, Any] = {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": "app", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]},
    }
    if fail:
        template["metadata"]["annotations"] = {FAIL_ANNOTATION: fail}
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)}, "template": template},
    }
    if strategy is not None:
        obj["spec"]["strategy"] = strategy
    if deadline is not None:
        obj["spec"]["progressDeadlineSeconds"] = deadline
    return obj


def read_deployment(api: ApiHandle, name: str = "web") -> dict[str, Any]:
    found = api.read("apps/v1", "Deployment", name)
    assert found is not None
    return found


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind]
    assert found, f"no {kind} condition in {obj.get('status')}"
    return found[0]


def pods_by_image(api: ApiHandle) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for pod in api.items("v1", "Pod"):
        groups.setdefault(pod["spec"]["containers"][0]["image"], []).append(pod)
    return groups


def rolled_out(api: ApiHandle, name: str = "web") -> bool:
    obj = read_deployment(api, name)
    status = obj.get("status") or {}
    progressing = [c for c in status.get("conditions") or [] if c["type"] == "Progressing"]
    return (
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and bool(progressing)
        and progressing[0]["reason"] == "NewReplicaSetAvailable"
    )


def set_image(api: ApiHandle, image: str, name: str = "web", fail: str | None = None) -> None:
    annotations = {FAIL_ANNOTATION: fail} if fail else None
    api.emulator.patch_object(
        "apps/v1",
        "Deployment",
        name,
        {
            "spec": {
                "template": {
                    "metadata": {"annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                }
            }
        },
        api.namespace,
    )


async def test_a_deployment_becomes_available(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=3))
    ticks = await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    assert ticks >= cluster_sim.ready_after

    obj = read_deployment(kube_api)
    status = obj["status"]
    assert status["observedGeneration"] == 1
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"], status["availableReplicas"]) == (
        3,
        3,
        3,
        3,
    )
    assert condition(obj, "Available")["status"] == "True"
    assert condition(obj, "Progressing")["status"] == "True"
    assert obj["metadata"]["annotations"][REVISION] == "1"

    [replica_set] = kube_api.items("apps/v1", "ReplicaSet")
    pod_hash = replica_set["metadata"]["labels"][HASH_LABEL]
    assert replica_set["metadata"]["name"] == f"web-{pod_hash}"
    assert replica_set["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    pods = kube_api.items("v1", "Pod")
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"].startswith("10.244.")
        assert pod_ready(pod)
        assert pod["metadata"]["labels"][HASH_LABEL] == pod_hash
    assert len({p["status"]["podIP"] for p in pods}) == 3


@pytest.mark.cluster_sim(running_after=2, ready_after=4)
async def test_pods_run_then_become_ready_over_ticks(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=1))
    phases: list[tuple[str, bool, bool]] = []
    for _ in range(8):
        await cluster_sim.tick()
        for pod in kube_api.items("v1", "Pod"):
            phases.append((pod["status"]["phase"], "podIP" in pod["status"], pod_ready(pod)))
    assert phases[0] == ("Pending", False, False)
    assert ("Running", True, False) in phases
    assert phases[-1] == ("Running", True, True)
    order = [phases.index(p) for p in [("Pending", False, False), ("Running", True, False), ("Running", True, True)]]
    assert order == sorted(order)


@pytest.mark.parametrize(
    ("surge", "unavailable"),
    [(1, 1), ("25%", 0), (0, 1), ("50%", "50%"), (2, 0)],
)
async def test_a_rolling_update_stays_within_surge_and_unavailable_at_every_tick(
    kube_api: ApiHandle, cluster_sim: ClusterSim, surge: Any, unavailable: Any
) -> None:
    replicas = 4
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    kube_api.write(deployment(replicas=replicas, strategy=strategy))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    max_surge, max_unavailable = rolling_bounds(read_deployment(kube_api)["spec"])

    set_image(kube_api, "registry.example/web:2")
    seen_both = False
    for _ in range(MAX_TICKS):
        await cluster_sim.tick()
        pods = kube_api.items("v1", "Pod")
        ready = [p for p in pods if pod_ready(p)]
        assert len(pods) <= replicas + max_surge, f"{len(pods)} pods with maxSurge {max_surge}"
        assert len(ready) >= replicas - max_unavailable, f"{len(ready)} ready with maxUnavailable {max_unavailable}"
        images = pods_by_image(kube_api)
        seen_both = seen_both or len(images) == 2
        if rolled_out(kube_api) and set(images) == {"registry.example/web:2"}:
            break
    else:
        raise AssertionError("the rollout did not finish")
    assert seen_both  # old and new pods served side by side during the rollout
    obj = read_deployment(kube_api)
    assert obj["status"]["updatedReplicas"] == replicas
    assert obj["metadata"]["annotations"][REVISION] == "2"
    sets = {rs["metadata"]["annotations"][REVISION]: rs for rs in kube_api.items("apps/v1", "ReplicaSet")}
    assert sets["1"]["spec"]["replicas"] == 0
    assert sets["2"]["spec"]["replicas"] == replicas


async def test_recreate_scales_the_old_version_to_zero_first(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=3, strategy={"type": "Recreate"}))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)

    set_image(kube_api, "registry.example/web:2")
    saw_gap = False
    for _ in range(MAX_TICKS):
        await cluster_sim.tick()
        images = pods_by_image(kube_api)
        assert len(images) <= 1, "old and new pods at the same time under Recreate"
        saw_gap = saw_gap or not images
        if rolled_out(kube_api) and set(images) == {"registry.example/web:2"}:
            break
    else:
        raise AssertionError("the rollout did not finish")
    assert saw_gap
    assert len(kube_api.items("v1", "Pod")) == 3


@pytest.mark.parametrize("failure", ["crashloop", "imagepull", "oom", "unready"])
async def test_a_failing_template_never_becomes_available_and_hits_the_deadline(
    kube_api: ApiHandle, cluster_sim: ClusterSim, failure: str
) -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    kube_api.write(deployment(replicas=2, strategy=strategy, deadline=15))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)

    set_image(kube_api, "registry.example/web:bad", fail=failure)

    def exceeded() -> bool:
        progressing = condition(read_deployment(kube_api), "Progressing")
        return progressing["reason"] == "ProgressDeadlineExceeded"

    ticks = await cluster_sim.run_until(exceeded, max_ticks=MAX_TICKS)
    assert ticks * cluster_sim.tick_seconds > 15
    obj = read_deployment(kube_api)
    assert condition(obj, "Progressing")["status"] == "False"
    assert condition(obj, "Available")["status"] == "True"  # the old pods still serve
    assert obj["status"].get("updatedReplicas", 0) >= 1
    assert obj["status"]["availableReplicas"] == 2

    bad = pods_by_image(kube_api)["registry.example/web:bad"]
    assert bad and not any(pod_ready(p) for p in bad)
    statuses = [p["status"]["containerStatuses"][0] for p in bad]
    if failure == "crashloop":
        assert all(s["state"]["waiting"]["reason"] == "CrashLoopBackOff" for s in statuses)
        assert all(s["lastState"]["terminated"]["reason"] == "Error" for s in statuses)
        assert all(p["status"]["phase"] == "Running" for p in bad)
    elif failure == "oom":
        assert all(s["lastState"]["terminated"]["reason"] == "OOMKilled" for s in statuses)
        assert all(s["lastState"]["terminated"]["exitCode"] == 137 for s in statuses)
    elif failure == "imagepull":
        assert all(s["state"]["waiting"]["reason"] in ("ErrImagePull", "ImagePullBackOff") for s in statuses)
        assert all(p["status"]["phase"] == "Pending" for p in bad)
    else:
        assert all("running" in s["state"] and s["ready"] is False for s in statuses)
        assert all(p["status"]["phase"] == "Running" for p in bad)

    if failure in ("crashloop", "oom"):
        before = statuses[0]["restartCount"]
        await cluster_sim.tick(3)
        pod = kube_api.read("v1", "Pod", bad[0]["metadata"]["name"])
        assert pod is not None and pod["status"]["containerStatuses"][0]["restartCount"] > before
    if failure == "imagepull":
        reasons = set()
        for _ in range(2):
            await cluster_sim.tick()
            pod = kube_api.read("v1", "Pod", bad[0]["metadata"]["name"])
            assert pod is not None
            reasons.add(pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"])
        assert reasons == {"ErrImagePull", "ImagePullBackOff"}


async def test_a_first_rollout_of_a_failing_template_hits_the_deadline(
    kube_api: ApiHandle, cluster_sim: ClusterSim
) -> None:
    kube_api.write(deployment(replicas=2, fail="crashloop", deadline=5))

    def exceeded() -> bool:
        status = read_deployment(kube_api).get("status") or {}
        return any(c["reason"] == "ProgressDeadlineExceeded" for c in status.get("conditions") or [])

    await cluster_sim.run_until(exceeded, max_ticks=MAX_TICKS)
    obj = read_deployment(kube_api)
    assert condition(obj, "Available")["status"] == "False"
    assert condition(obj, "Available")["reason"] == "MinimumReplicasUnavailable"
    assert obj["status"].get("availableReplicas", 0) == 0


async def test_restoring_the_previous_template_reuses_its_replica_set(
    kube_api: ApiHandle, cluster_sim: ClusterSim
) -> None:
    kube_api.write(deployment(replicas=2))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    original = copy.deepcopy(read_deployment(kube_api)["spec"]["template"])
    first_set = kube_api.items("apps/v1", "ReplicaSet")[0]["metadata"]["name"]

    set_image(kube_api, "registry.example/web:bad", fail="crashloop")
    await cluster_sim.tick(3)
    assert len(kube_api.items("apps/v1", "ReplicaSet")) == 2

    # What `kubectl rollout undo` does: put the previous pod template back.
    current = read_deployment(kube_api)
    current["spec"]["template"] = original
    kube_api.write(current)
    await cluster_sim.run_until(
        lambda: rolled_out(kube_api) and set(pods_by_image(kube_api)) == {"registry.example/web:1"},
        max_ticks=MAX_TICKS,
    )
    sets = {rs["metadata"]["name"]: rs for rs in kube_api.items("apps/v1", "ReplicaSet")}
    assert len(sets) == 2
    assert sets[first_set]["spec"]["replicas"] == 2
    assert sets[first_set]["metadata"]["annotations"][REVISION] == "3"
    assert read_deployment(kube_api)["metadata"]["annotations"][REVISION] == "3"


async def test_scaling_without_a_new_template(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=2))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    kube_api.emulator.patch_object("apps/v1", "Deployment", "web", {"spec": {"replicas": 5}}, kube_api.namespace)
    await cluster_sim.run_until(
        lambda: rolled_out(kube_api) and len(kube_api.items("v1", "Pod")) == 5, max_ticks=MAX_TICKS
    )
    kube_api.emulator.patch_object("apps/v1", "Deployment", "web", {"spec": {"replicas": 1}}, kube_api.namespace)
    await cluster_sim.run_until(
        lambda: rolled_out(kube_api) and len(kube_api.items("v1", "Pod")) == 1, max_ticks=MAX_TICKS
    )
    assert len(kube_api.items("apps/v1", "ReplicaSet")) == 1


async def test_min_ready_seconds_delays_availability(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    obj = deployment(replicas=1)
    obj["spec"]["minReadySeconds"] = 5
    kube_api.write(obj)
    await cluster_sim.run_until(
        lambda: (read_deployment(kube_api).get("status") or {}).get("readyReplicas") == 1, max_ticks=MAX_TICKS
    )
    assert (read_deployment(kube_api).get("status") or {}).get("availableReplicas", 0) == 0
    ticks = await cluster_sim.run_until(
        lambda: (read_deployment(kube_api).get("status") or {}).get("availableReplicas") == 1, max_ticks=MAX_TICKS
    )
    assert ticks * cluster_sim.tick_seconds >= 5


async def test_deleting_a_deployment_removes_its_replica_sets_and_pods(
    kube_api: ApiHandle, cluster_sim: ClusterSim
) -> None:
    kube_api.write(deployment(replicas=2))
    kube_api.write(deployment(name="other", replicas=1))
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    async with kube_api.client() as kube:
        await kube.delete("apps/v1", "Deployment", "web")
    await cluster_sim.tick()
    assert [rs["metadata"]["name"].split("-")[0] for rs in kube_api.items("apps/v1", "ReplicaSet")] == ["other"]
    assert {p["metadata"]["labels"]["app"] for p in kube_api.items("v1", "Pod")} == {"other"}


async def test_endpoints_list_ready_pods_of_each_service(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=2))
    kube_api.write(deployment(name="slow", replicas=1, fail="unready"))
    for name, app in (("web", "web"), ("slow", "slow")):
        kube_api.write(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            }
        )
    await cluster_sim.run_until(lambda: rolled_out(kube_api), max_ticks=MAX_TICKS)
    await cluster_sim.tick()

    endpoints = kube_api.read("v1", "Endpoints", "web")
    assert endpoints is not None
    [subset] = endpoints["subsets"]
    ready_ips = {p["status"]["podIP"] for p in kube_api.items("v1", "Pod", labels={"app": "web"})}
    assert {a["ip"] for a in subset["addresses"]} == ready_ips
    assert subset["ports"] == [{"port": 8080, "protocol": "TCP", "name": "http"}]
    assert all(a["targetRef"]["kind"] == "Pod" for a in subset["addresses"])

    slow = kube_api.read("v1", "Endpoints", "slow")
    assert slow is not None
    assert "addresses" not in slow["subsets"][0]
    assert len(slow["subsets"][0]["notReadyAddresses"]) == 1

    kube_api.emulator.patch_object("apps/v1", "Deployment", "web", {"spec": {"replicas": 0}}, kube_api.namespace)
    await cluster_sim.tick(2)
    emptied = kube_api.read("v1", "Endpoints", "web")
    assert emptied is not None and "subsets" not in emptied


async def test_http_route_status_follows_its_generation(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    put_gateway(kube_api.emulator, "public", kube_api.namespace)
    kube_api.write(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }
    )
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web", "port": 80, "weight": 90},
                        {"name": "web-canary", "port": 80, "weight": 10},
                    ]
                }
            ],
        },
    }
    kube_api.write(route)
    await cluster_sim.tick()
    stored = kube_api.read("gateway.networking.k8s.io/v1", "HTTPRoute", "web")
    assert stored is not None
    [parent] = stored["status"]["parents"]
    assert parent["parentRef"] == {"name": "public"}
    conditions = {c["type"]: c for c in parent["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert conditions["ResolvedRefs"]["status"] == "False"
    assert conditions["ResolvedRefs"]["reason"] == "BackendNotFound"
    assert all(c["observedGeneration"] == 1 for c in parent["conditions"])

    kube_api.write(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-canary"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }
    )
    kube_api.emulator.patch_object(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "web",
        {
            "spec": {
                "rules": [
                    {
                        "backendRefs": [
                            {"name": "web", "port": 80, "weight": 50},
                            {"name": "web-canary", "port": 80, "weight": 50},
                        ]
                    }
                ]
            }
        },
        kube_api.namespace,
    )
    await cluster_sim.tick()
    stored = kube_api.read("gateway.networking.k8s.io/v1", "HTTPRoute", "web")
    assert stored is not None and stored["metadata"]["generation"] == 2
    conditions = {c["type"]: c for c in stored["status"]["parents"][0]["conditions"]}
    assert conditions["ResolvedRefs"]["status"] == "True"
    assert all(c["observedGeneration"] == 2 for c in conditions.values())


@pytest.mark.cluster_sim(istio_status=True)
async def test_istio_objects_get_their_observed_generation(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "web"},
            "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        }
    )
    await cluster_sim.tick()
    stored = kube_api.read("networking.istio.io/v1", "DestinationRule", "web")
    assert stored is not None and stored["status"]["observedGeneration"] == 1


async def test_running_in_the_background_is_bounded_and_stops(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.write(deployment(replicas=2))
    async with cluster_sim.running(interval=0.001, max_ticks=50), kube_api.client() as kube:
        for _ in range(500):
            found = await kube.get("apps/v1", "Deployment", "web")
            if found and found.get("status", {}).get("availableReplicas") == 2:
                break
    assert rolled_out(kube_api)
    ticks = cluster_sim.ticks
    assert ticks <= 50
    await cluster_sim.stop()
    assert cluster_sim.ticks == ticks


async def test_a_pod_put_there_running_is_not_restarted(kube_api: ApiHandle, cluster_sim: ClusterSim) -> None:
    kube_api.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "lone", "labels": {"app": "lone"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/lone:1"}]},
            "status": {"phase": "Running", "podIP": "10.9.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    for _ in range(3):
        await cluster_sim.tick()
        pod = kube_api.read("v1", "Pod", "lone")
        assert pod is not None and pod_ready(pod) and pod["status"]["phase"] == "Running"
