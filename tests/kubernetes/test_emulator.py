"""The API server emulator answers as a real API server does: validation (422), resourceVersion
conflicts (409), generation, JSON merge patch (and 415 for other patch types), namespaces (404),
status subresources, label selectors, SelfSubjectAccessReview. Checked over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from emulator import ApiHandle, Permission, merge_patch, parse_selector

DEPLOYMENTS = "/apis/apps/v1/namespaces/test/deployments"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest_asyncio.fixture
async def http(kube_api: ApiHandle) -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(base_url=kube_api.url, timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


def deployment(name: str = "web", replicas: int = 2, image: str = "registry.example/web:1") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def route(weight: Any = 100) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": weight}]}],
        },
    }


async def patch(http: httpx.AsyncClient, path: str, body: Any, content_type: str = "application/merge-patch+json"):
    return await http.patch(path, content=json.dumps(body), headers={"Content-Type": content_type})


# ------------------------------------------------------------------ validation


async def test_an_invalid_built_in_object_is_refused_with_422_naming_the_problem(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    bad = deployment()
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    bad["spec"]["paused"] = "yes"
    response = await http.post(DEPLOYMENTS, json=bad)
    assert response.status_code == 422
    status = response.json()
    assert status["kind"] == "Status" and status["reason"] == "Invalid" and status["code"] == 422
    assert 'Deployment.apps "web" is invalid' in status["message"]
    assert "spec.paused" in status["message"]
    assert "imagePullPolicy" in status["message"]
    assert kube_api.read("apps/v1", "Deployment", "web") is None


async def test_unknown_fields_are_refused_in_strict_mode(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    bad = deployment()
    bad["spec"]["replica"] = 2
    response = await http.post(DEPLOYMENTS, json=bad)
    assert response.status_code == 422
    assert "'replica' was unexpected" in response.json()["message"]


async def test_a_patch_whose_result_is_invalid_changes_nothing(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    response = await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": "three"}})
    assert response.status_code == 422
    assert "spec.replicas" in response.json()["message"]
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored == created


async def test_custom_resources_are_checked_against_their_crd_schema(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    assert (await http.post(ROUTES, json=route(weight=100))).status_code == 201
    response = await patch(
        http, f"{ROUTES}/web", {"spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": "half"}]}]}}
    )
    assert response.status_code == 422
    assert 'HTTPRoute.gateway.networking.k8s.io "web" is invalid' in response.json()["message"]
    stored = kube_api.read("gateway.networking.k8s.io/v1", "HTTPRoute", "web")
    assert stored is not None
    assert stored["spec"]["rules"][0]["backendRefs"][0]["weight"] == 100


@pytest.mark.kube_api(use_schemas=False)
async def test_without_the_crd_schemas_built_ins_are_still_checked(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    assert (await http.post(ROUTES, json=route(weight="half"))).status_code == 201  # not checked
    bad = deployment()
    bad["spec"]["replicas"] = "two"
    response = await http.post(DEPLOYMENTS, json=bad)
    assert response.status_code == 422
    assert "spec.replicas" in response.json()["message"]


# ------------------------------------------------------------------ concurrency


async def test_resource_version_grows_on_every_write_and_a_stale_one_conflicts(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    rv1 = int(created["metadata"]["resourceVersion"])
    patched = (await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": 3}})).json()
    rv2 = int(patched["metadata"]["resourceVersion"])
    assert rv2 > rv1

    stale_patch = await patch(
        http, f"{DEPLOYMENTS}/web", {"metadata": {"resourceVersion": str(rv1)}, "spec": {"replicas": 4}}
    )
    assert stale_patch.status_code == 409
    assert stale_patch.json()["reason"] == "Conflict"
    assert "the object has been modified" in stale_patch.json()["message"]

    stale_put = await http.put(f"{DEPLOYMENTS}/web", json=created)
    assert stale_put.status_code == 409

    fresh = dict(patched)
    fresh["spec"] = {**patched["spec"], "replicas": 5}
    put = await http.put(f"{DEPLOYMENTS}/web", json=fresh)
    assert put.status_code == 200
    assert int(put.json()["metadata"]["resourceVersion"]) > rv2
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored is not None and stored["spec"]["replicas"] == 5


async def test_a_patch_with_the_current_resource_version_is_accepted(http: httpx.AsyncClient) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    current = created["metadata"]["resourceVersion"]
    response = await patch(
        http, f"{DEPLOYMENTS}/web", {"metadata": {"resourceVersion": current}, "spec": {"replicas": 4}}
    )
    assert response.status_code == 200
    assert response.json()["spec"]["replicas"] == 4


async def test_generation_grows_when_spec_changes_only(http: httpx.AsyncClient) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    assert created["metadata"]["generation"] == 1
    labelled = (await patch(http, f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"team": "a"}}})).json()
    assert labelled["metadata"]["generation"] == 1
    status = (await patch(http, f"{DEPLOYMENTS}/web/status", {"status": {"replicas": 2}})).json()
    assert status["metadata"]["generation"] == 1
    scaled = (await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": 7}})).json()
    assert scaled["metadata"]["generation"] == 2


async def test_a_write_that_changes_nothing_keeps_the_resource_version(http: httpx.AsyncClient) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    same = (await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": 2}})).json()
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_creating_twice_is_already_exists(http: httpx.AsyncClient) -> None:
    assert (await http.post(DEPLOYMENTS, json=deployment())).status_code == 201
    again = await http.post(DEPLOYMENTS, json=deployment())
    assert again.status_code == 409
    assert again.json()["reason"] == "AlreadyExists"


async def test_server_set_fields_and_defaults(http: httpx.AsyncClient) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert created["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert created["spec"]["progressDeadlineSeconds"] == 600
    forged = (await patch(http, f"{DEPLOYMENTS}/web", {"metadata": {"uid": "forged"}})).json()
    assert forged["metadata"]["uid"] == created["metadata"]["uid"]


# ------------------------------------------------------------------ patches


def test_merge_patch_follows_rfc_7386() -> None:
    # The examples of RFC 7386, appendix A.
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, change, expected in cases:
        assert merge_patch(target, change) == expected, (target, change)


async def test_merge_patch_over_http_deletes_with_null_and_replaces_lists(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    obj = deployment()
    obj["metadata"]["annotations"] = {"a": "1", "b": "2"}
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    await http.post(DEPLOYMENTS, json=obj)
    response = await patch(
        http,
        f"{DEPLOYMENTS}/web",
        {
            "metadata": {"annotations": {"a": None}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.example/web:2"}]}}},
        },
    )
    assert response.status_code == 200
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"b": "2"}
    assert stored["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "registry.example/web:2"}]


@pytest.mark.parametrize(
    "content_type",
    ["application/json-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"],
)
async def test_other_patch_types_are_refused_with_415(
    kube_api: ApiHandle, http: httpx.AsyncClient, content_type: str
) -> None:
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    body: Any = [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    if content_type != "application/json-patch+json":
        body = {"spec": {"replicas": 5}}
    response = await patch(http, f"{DEPLOYMENTS}/web", body, content_type)
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"
    assert kube_api.read("apps/v1", "Deployment", "web") == created


# ------------------------------------------------------------------ namespaces


async def test_an_object_in_a_missing_namespace_is_404_naming_the_namespace(http: httpx.AsyncClient) -> None:
    response = await http.post("/apis/apps/v1/namespaces/ghost/deployments", json=deployment())
    assert response.status_code == 404
    status = response.json()
    assert status["reason"] == "NotFound"
    assert status["message"] == 'namespaces "ghost" not found'
    assert status["details"] == {"name": "ghost", "kind": "namespaces"}


async def test_a_deleted_namespace_is_terminating_until_emptied(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    kube_api.ensure_namespace("temp")
    assert (await http.post("/apis/apps/v1/namespaces/temp/deployments", json=deployment())).status_code == 201
    created = (await http.get("/api/v1/namespaces/temp")).json()
    assert created["spec"]["finalizers"] == ["kubernetes"]  # given by the API server to every Namespace
    assert (await http.delete("/api/v1/namespaces/temp")).status_code == 200
    # Terminating, held by its finalizer: its objects are still there, and nothing new may come in.
    terminating = (await http.get("/api/v1/namespaces/temp")).json()
    assert terminating["status"]["phase"] == "Terminating" and terminating["metadata"]["deletionTimestamp"]
    assert kube_api.emulator.read("apps/v1", "Deployment", "web", "temp") is not None
    refused = await http.post("/apis/apps/v1/namespaces/temp/deployments", json=deployment("other"))
    # k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go:
    #   "unable to create new content in namespace %s because it is being terminated" (Forbidden,
    #   cause NamespaceTerminating)
    assert refused.status_code == 403
    body = refused.json()
    assert body["reason"] == "Forbidden"
    assert body["message"] == ('deployments.apps "other" is forbidden: unable to create new content in namespace temp '
                               "because it is being terminated")
    assert body["details"]["causes"][0]["reason"] == "NamespaceTerminating"
    # the namespace controller empties it, then it goes
    assert kube_api.emulator.finalize_namespace("temp")
    assert kube_api.emulator.read("apps/v1", "Deployment", "web", "temp") is None
    assert (await http.get("/api/v1/namespaces/temp")).status_code == 404


# ------------------------------------------------------------------ status subresource


async def test_status_is_written_through_its_subresource_only(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    with_status = deployment()
    with_status["status"] = {"replicas": 9}
    created = (await http.post(DEPLOYMENTS, json=with_status)).json()
    assert "status" not in created  # dropped on create

    response = await patch(http, f"{DEPLOYMENTS}/web/status", {"status": {"readyReplicas": 1}, "spec": {"replicas": 8}})
    assert response.status_code == 200
    assert response.json()["status"] == {"readyReplicas": 1}
    assert response.json()["spec"]["replicas"] == 2

    ignored = await patch(http, f"{DEPLOYMENTS}/web", {"status": {"readyReplicas": 5}})
    assert ignored.json()["status"] == {"readyReplicas": 1}

    current = ignored.json()
    current["status"] = {"readyReplicas": 2}
    put = await http.put(f"{DEPLOYMENTS}/web/status", json=current)
    assert put.status_code == 200
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored is not None and stored["status"] == {"readyReplicas": 2}


async def test_kinds_without_a_status_subresource_have_no_status_path(http: httpx.AsyncClient) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert (await http.post("/api/v1/namespaces/test/configmaps", json=config_map)).status_code == 201
    response = await patch(http, "/api/v1/namespaces/test/configmaps/c/status", {"data": {"a": "2"}})
    assert response.status_code == 404


# ------------------------------------------------------------------ lists and access reviews


async def test_lists_honour_label_selectors(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        obj = deployment(name)
        obj["metadata"]["labels"]["tier"] = tier
        await http.post(DEPLOYMENTS, json=obj)

    async def names(selector: str) -> list[str]:
        listing = (await http.get(DEPLOYMENTS, params={"labelSelector": selector})).json()
        assert listing["kind"] == "DeploymentList"
        return [o["metadata"]["name"] for o in listing["items"]]

    assert await names("tier=web") == ["a", "b"]
    assert await names("tier!=web") == ["c"]
    assert await names("tier in (db, cache)") == ["c"]
    assert await names("tier notin (db),app") == ["a", "b"]
    assert await names("!tier") == []
    all_namespaces = (await http.get("/apis/apps/v1/deployments")).json()
    assert len(all_namespaces["items"]) == 3


async def test_a_listing_holds_the_live_objects_of_its_kind_and_copies_of_them(
        kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    emulator = kube_api.emulator
    for name in ("a", "b"):
        assert (await http.post(DEPLOYMENTS, json=deployment(name))).status_code == 201
    changed = emulator.changed_at("apps/v1", "Deployment")
    assert (await http.delete(f"{DEPLOYMENTS}/a")).status_code == 200
    assert emulator.changed_at("apps/v1", "Deployment") > changed
    assert emulator.changed_at("v1", "ConfigMap") == 0  # a kind never written
    assert (await http.post(DEPLOYMENTS, json=deployment("a", replicas=3))).status_code == 201
    listed = (await http.get(DEPLOYMENTS)).json()["items"]
    assert [(o["metadata"]["name"], o["spec"]["replicas"]) for o in listed] == [("a", 3), ("b", 2)]
    items = kube_api.items("apps/v1", "Deployment")
    items[0]["spec"]["replicas"] = 9  # a copy: the stored object stays as it was
    assert {o["spec"]["replicas"] for o in kube_api.items("apps/v1", "Deployment")} == {2, 3}
    # a write of another kind leaves the kind's mark where it was
    changed = emulator.changed_at("apps/v1", "Deployment")
    kube_api.write({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
    assert emulator.changed_at("apps/v1", "Deployment") == changed


async def test_held_requests_wait_unanswered_until_released(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    held = kube_api.emulator.hold("GET", "deployments")
    waiting = asyncio.create_task(http.get(f"{DEPLOYMENTS}/web"))
    try:
        for _ in range(500):  # bounded: until the server holds it
            if held.waiting == 1:
                break
            await asyncio.sleep(0.01)
        assert held.waiting == 1 and not waiting.done()
        assert (await http.post(DEPLOYMENTS, json=deployment())).status_code == 201  # other requests go on
    finally:
        held.release()
    answer = await asyncio.wait_for(waiting, timeout=10)
    assert answer.status_code == 200 and answer.json()["metadata"]["name"] == "web"  # answered as of now
    assert held.waiting == 0


def test_selector_parsing() -> None:
    assert parse_selector("a=1,b in (x, y),!c")({"a": "1", "b": "y"})
    assert not parse_selector("a=1,b in (x, y),!c")({"a": "1", "b": "y", "c": ""})
    with pytest.raises(ValueError, match="unable to parse"):
        parse_selector("a b c")


async def test_self_subject_access_review_answers_from_the_allow_list(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    def review(verb: str, resource: str, group: str = "", namespace: str = "test") -> dict[str, Any]:
        return {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
            },
        }

    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    assert (await http.post(path, json=review("delete", "pods"))).json()["status"]["allowed"] is True
    kube_api.emulator.permissions = [Permission(verb="patch", resource="deployments", group="apps", namespace="test")]
    assert (await http.post(path, json=review("patch", "deployments", "apps"))).json()["status"]["allowed"]
    assert not (await http.post(path, json=review("patch", "deployments", "apps", "prod"))).json()["status"]["allowed"]
    assert not (await http.post(path, json=review("delete", "pods"))).json()["status"]["allowed"]


async def test_injected_faults_answer_the_next_matching_requests(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    kube_api.emulator.fail("POST", "deployments", status=429, retry_after=3, times=2)
    for _ in range(2):
        response = await http.post(DEPLOYMENTS, json=deployment())
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
    assert (await http.post(DEPLOYMENTS, json=deployment())).status_code == 201


async def test_watch_streams_see_writes(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async with http.stream("GET", DEPLOYMENTS, params={"watch": "true"}) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= 2:
                    return

    task = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.1)
        await http.post(DEPLOYMENTS, json=deployment())
        await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": 3}})
        await asyncio.wait_for(task, timeout=10)
    finally:
        task.cancel()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    assert events[1]["object"]["spec"]["replicas"] == 3


async def test_direct_writes_get_the_same_checks(kube_api: ApiHandle) -> None:
    from emulator import ApiFailure

    kube_api.write(deployment())
    bad = deployment()
    bad["spec"]["replicas"] = -1
    with pytest.raises(ApiFailure) as caught:
        kube_api.write(bad)
    assert caught.value.code == 422
    unchecked = kube_api.put(bad)  # put stores as given
    assert unchecked["spec"]["replicas"] == -1


async def test_put_keeps_generation_server_managed(kube_api: ApiHandle) -> None:
    first = kube_api.put(deployment())
    assert first["metadata"]["generation"] == 1
    changed = dict(first)
    changed["spec"] = {**first["spec"], "replicas": 9}
    assert kube_api.put(changed)["metadata"]["generation"] == 2
    relabelled = kube_api.put({**changed, "metadata": {**changed["metadata"], "labels": {"x": "y"}}})
    assert relabelled["metadata"]["generation"] == 2


# ------------------------------------------------------------------ immutable fields
#
# Each refusal is the API server's own 422 message, quoted from the Kubernetes source named beside it.

SERVICES = "/api/v1/namespaces/test/services"
CLAIMS = "/api/v1/namespaces/test/persistentvolumeclaims"
BINDINGS = "/apis/rbac.authorization.k8s.io/v1/namespaces/test/rolebindings"


async def test_a_deployment_selector_cannot_change(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    # k8s.io/kubernetes/pkg/registry/apps/deployment/strategy.go (ValidateUpdate, apps/v1) calls
    # ValidateImmutableField(newDeployment.Spec.Selector, ...), whose message is
    # k8s.io/apimachinery/pkg/api/validation/generic.go: FieldImmutableErrorMsg = "field is immutable"
    created = (await http.post(DEPLOYMENTS, json=deployment())).json()
    changed = {"spec": {"selector": {"matchLabels": {"app": "web", "tier": "x"}},
                        "template": {"metadata": {"labels": {"app": "web", "tier": "x"}}}}}
    response = await patch(http, f"{DEPLOYMENTS}/web", changed)
    assert response.status_code == 422
    message = response.json()["message"]
    assert message.startswith('Deployment.apps "web" is invalid: spec.selector: Invalid value: ')
    assert message.endswith(": field is immutable")
    assert kube_api.read("apps/v1", "Deployment", "web") == created
    # the rest of the spec still changes
    assert (await patch(http, f"{DEPLOYMENTS}/web", {"spec": {"replicas": 5}})).status_code == 200


async def test_a_service_cluster_ip_cannot_change(http: httpx.AsyncClient) -> None:
    # k8s.io/kubernetes/pkg/apis/core/validation/validation.go, validateUpgradeDowngradeClusterIPs:
    # field.Invalid(field.NewPath("spec", "clusterIPs").Index(i), service.Spec.ClusterIPs, "may not change once set")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    created = (await http.post(SERVICES, json=service)).json()
    allocated = created["spec"]["clusterIP"]
    assert created["spec"]["clusterIPs"] == [allocated]
    moved = {"spec": {"clusterIP": "10.96.0.250", "clusterIPs": ["10.96.0.250"]}}
    response = await patch(http, f"{SERVICES}/web", moved)
    assert response.status_code == 422
    assert response.json()["message"] == ('Service "web" is invalid: spec.clusterIPs[0]: Invalid value: '
                                          '["10.96.0.250"]: may not change once set')
    # an update that leaves the cluster IP out keeps it, as the service registry does
    replaced = await http.put(f"{SERVICES}/web", json={**service, "spec": {**service["spec"], "ports": [{"port": 81}]}})
    assert replaced.status_code == 200
    assert replaced.json()["spec"]["clusterIP"] == allocated


async def test_a_claim_keeps_its_storage_class_and_never_shrinks(http: httpx.AsyncClient) -> None:
    # k8s.io/kubernetes/pkg/apis/core/validation/validation.go, ValidatePersistentVolumeClaimUpdate:
    # field.Forbidden(field.NewPath("spec"), "spec is immutable after creation except resources.requests and
    # volumeAttributesClassName for bound claims\n<diff>") and
    # field.Forbidden(field.NewPath("spec", "resources", "requests", "storage"),
    #                 "field can not be less than previous value")
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                      "resources": {"requests": {"storage": "2Gi"}}}}
    assert (await http.post(CLAIMS, json=claim)).status_code == 201
    moved = await patch(http, f"{CLAIMS}/data", {"spec": {"storageClassName": "slow"}})
    assert moved.status_code == 422
    assert moved.json()["message"].startswith(
        'PersistentVolumeClaim "data" is invalid: spec: Forbidden: spec is immutable after creation except '
        "resources.requests and volumeAttributesClassName for bound claims\n")
    assert 'storageClassName: "fast" -> "slow"' in moved.json()["message"]
    # bound: the request may grow, never shrink
    bound = await patch(http, f"{CLAIMS}/data/status", {"status": {"phase": "Bound"}})
    assert bound.status_code == 200
    def size(storage: str) -> dict[str, Any]:
        return {"spec": {"resources": {"requests": {"storage": storage}}}}

    assert (await patch(http, f"{CLAIMS}/data", size("4Gi"))).status_code == 200
    shrunk = await patch(http, f"{CLAIMS}/data", size("3072Mi"))
    assert shrunk.status_code == 422
    assert shrunk.json()["message"] == ('PersistentVolumeClaim "data" is invalid: spec.resources.requests.storage: '
                                        "Forbidden: field can not be less than previous value")


async def test_a_role_binding_role_ref_cannot_change(http: httpx.AsyncClient) -> None:
    # k8s.io/kubernetes/pkg/apis/rbac/validation/validation.go, ValidateRoleBindingUpdate:
    # field.Invalid(field.NewPath("roleRef"), roleBinding.RoleRef, "cannot change roleRef")
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
               "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": "test"}]}
    assert (await http.post(BINDINGS, json=binding)).status_code == 201
    response = await patch(http, f"{BINDINGS}/deployer", {"roleRef": {"name": "admin"}})
    assert response.status_code == 422
    message = response.json()["message"]
    assert message.startswith('RoleBinding.rbac.authorization.k8s.io "deployer" is invalid: roleRef: Invalid value: ')
    assert message.endswith(": cannot change roleRef")
    # subjects may change
    more = {"subjects": [*binding["subjects"], {"kind": "ServiceAccount", "name": "ci", "namespace": "test"}]}
    assert (await patch(http, f"{BINDINGS}/deployer", more)).status_code == 200
