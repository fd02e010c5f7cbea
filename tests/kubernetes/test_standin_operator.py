"""What an operator needs from an API server, answered by the stand-in as a real one answers, over
real HTTP: CustomResourceDefinitions (served kinds, discovery, schema validation, pruning and
defaults, the status subresource, non-structural schemas refused, deleting a CRD deletes its
objects), Leases with optimistic concurrency, watches (resourceVersion, bookmarks, 410 Expired
after compaction, timeoutSeconds) and garbage collection by ownerReferences.

Each behaviour is the one documented in the Kubernetes reference:
- CRDs: "Extend the Kubernetes API with CustomResourceDefinitions" (kubernetes.io/docs/tasks/
  extend-kubernetes/custom-resources/custom-resource-definitions/: structural schemas, field
  pruning, defaulting, the status subresource, "Delete a CustomResourceDefinition");
- watches: "Kubernetes API Concepts" (kubernetes.io/docs/reference/using-api/api-concepts/:
  efficient detection of changes, watch bookmarks, 410 Gone responses) and KEP-956 (bookmarks);
- garbage collection: "Garbage Collection" and "Owners and Dependents" (kubernetes.io/docs/
  concepts/architecture/garbage-collection/, .../working-with-objects/owners-dependents/:
  background, foreground and orphan propagation; cross-namespace owner references are treated
  as absent; blockOwnerDeletion).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from emulator import ApiHandle

GROUP = "test.safeship.dev"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
WIDGETS = f"/apis/{GROUP}/v1/namespaces/test/widgets"
CONFIGMAPS = "/api/v1/namespaces/test/configmaps"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/test/leases"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest_asyncio.fixture
async def http(kube_api: ApiHandle) -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(base_url=kube_api.url, timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


def widget_crd(**schema_changes: Any) -> dict[str, Any]:
    spec_schema: dict[str, Any] = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "pattern": "^[a-z0-9./:-]+$"},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 2},
            "strategy": {"type": "string", "enum": ["canary", "blueGreen"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "port": {"x-kubernetes-int-or-string": True},
        },
    }
    spec_schema.update(schema_changes)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": {"type": "object", "properties": {
                            "phase": {"type": "string"}, "observedGeneration": {"type": "integer"}}},
                    },
                }},
            }],
        },
    }


def widget(name: str = "w", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"image": "registry.example/web:1", **spec}}


async def install(http: httpx.AsyncClient, crd: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await http.post(CRDS, json=crd or widget_crd())
    assert response.status_code == 201, response.text
    return dict(response.json())


# ------------------------------------------------------------------ CustomResourceDefinitions


async def test_a_crd_is_established_and_its_kind_is_served_and_discovered(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    assert (await http.get(WIDGETS)).status_code == 404  # not served before its CRD
    await install(http)
    crd = (await http.get(f"{CRDS}/widgets.{GROUP}")).json()
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget" and crd["status"]["storedVersions"] == ["v1"]

    discovery = (await http.get(f"/apis/{GROUP}/v1")).json()
    resources = {r["name"]: r for r in discovery["resources"]}
    assert set(resources) == {"widgets", "widgets/status"}
    assert resources["widgets"]["kind"] == "Widget" and resources["widgets"]["namespaced"] is True
    assert {"create", "get", "list", "watch", "patch", "update", "delete"} <= set(resources["widgets"]["verbs"])
    groups = [g["name"] for g in (await http.get("/apis")).json()["groups"]]
    assert GROUP in groups and "coordination.k8s.io" in groups

    # lightkube's generic resources come from the CRDs the server lists
    import lightkube
    from lightkube.generic_resource import async_load_in_cluster_generic_resources, get_generic_resource

    client = lightkube.AsyncClient(lightkube.KubeConfig.from_file(str(kube_api.kubeconfig)), namespace="test")
    try:
        await async_load_in_cluster_generic_resources(client)
        widget_class = get_generic_resource(f"{GROUP}/v1", "Widget")
        assert widget_class is not None
        await client.create(widget_class(widget("made-by-lightkube")))
        names = [w.metadata.name async for w in client.list(widget_class)]
    finally:
        await client.close()
    assert names == ["made-by-lightkube"]
    stored = kube_api.read(f"{GROUP}/v1", "Widget", "made-by-lightkube")
    assert stored is not None and stored["spec"]["replicas"] == 2  # the schema's default


async def test_custom_objects_are_validated_against_the_crd_schema(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    await install(http)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"replicas": "two"}, 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type '
                              'integer: "string"'),
        ({"replicas": 0}, "spec.replicas in body should be greater than or equal to 1"),
        ({"replicas": 11}, "spec.replicas in body should be less than or equal to 10"),
        ({"strategy": "rolling"}, 'spec.strategy: Unsupported value: "rolling": supported values: "canary", '
                                  '"blueGreen"'),
        ({"image": "Not An Image"}, "spec.image in body should match '^[a-z0-9./:-]+$'"),
        ({"labels": {"team": 3}}, "spec.labels.team in body must be of type string"),
        ({"port": 1.5}, "spec.port in body must be of type integer,string"),
    ]
    for spec, message in cases:
        response = await http.post(WIDGETS, json=widget(**spec))
        assert response.status_code == 422, spec
        status = response.json()
        assert status["reason"] == "Invalid"
        assert status["message"].startswith(f'Widget.{GROUP} "w" is invalid: ')
        assert message in status["message"], (spec, status["message"])
    missing = widget()
    del missing["spec"]["image"]
    response = await http.post(WIDGETS, json=missing)
    assert response.status_code == 422 and "spec.image: Required value" in response.json()["message"]
    assert kube_api.items(f"{GROUP}/v1", "Widget") == []  # nothing refused was stored

    # unknown fields are pruned, except under x-kubernetes-preserve-unknown-fields; defaults fill in
    body = widget(port="http", unknown="dropped", extra={"anything": {"kept": True}})
    body["surprise"] = 1
    created = (await http.post(WIDGETS, json=body)).json()
    assert "unknown" not in created["spec"] and "surprise" not in created
    assert created["spec"]["extra"] == {"anything": {"kept": True}}
    assert created["spec"]["replicas"] == 2 and created["spec"]["port"] == "http"
    strict = await http.post(WIDGETS, params={"fieldValidation": "Strict"},
                             json=widget("strict", unknown=1, labels={"a": "b"}, extra={"free": 1}))
    assert strict.status_code == 400  # what kubectl's default --validate=strict asks for
    assert strict.json()["message"] == 'strict decoding error: unknown field "spec.unknown"'
    response = await http.patch(f"{WIDGETS}/w", content=json.dumps({"spec": {"replicas": 99}}), headers=MERGE)
    assert response.status_code == 422
    stored = kube_api.read(f"{GROUP}/v1", "Widget", "w")
    assert stored is not None and stored["spec"]["replicas"] == 2


async def test_the_status_subresource_splits_spec_and_status_and_generation_follows_spec(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    await install(http)
    body = widget()
    body["status"] = {"phase": "Faked"}
    created = (await http.post(WIDGETS, json=body)).json()
    assert "status" not in created and created["metadata"]["generation"] == 1  # status ignored on create

    status = {"status": {"phase": "Progressing", "observedGeneration": 1}, "spec": {"replicas": 5}}
    response = await http.patch(f"{WIDGETS}/w/status", content=json.dumps(status), headers=MERGE)
    assert response.status_code == 200
    after_status = response.json()
    assert after_status["status"]["phase"] == "Progressing"
    assert after_status["spec"]["replicas"] == 2  # /status changes only the status
    assert after_status["metadata"]["generation"] == 1

    change = {"spec": {"replicas": 3}, "status": {"phase": "Overwritten"}}
    after_spec = (await http.patch(f"{WIDGETS}/w", content=json.dumps(change), headers=MERGE)).json()
    assert after_spec["spec"]["replicas"] == 3 and after_spec["status"]["phase"] == "Progressing"
    assert after_spec["metadata"]["generation"] == 2
    labels = {"metadata": {"labels": {"team": "payments"}}}
    after_labels = (await http.patch(f"{WIDGETS}/w", content=json.dumps(labels), headers=MERGE)).json()
    assert after_labels["metadata"]["generation"] == 2  # metadata is not spec
    assert int(after_labels["metadata"]["resourceVersion"]) > int(after_spec["metadata"]["resourceVersion"])


async def test_a_non_structural_crd_is_refused(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    untyped = widget_crd()
    untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["image"] = {
        "pattern": "^x$"}
    response = await http.post(CRDS, json=untyped)
    assert response.status_code == 422
    message = response.json()["message"]
    assert message.startswith(f'CustomResourceDefinition.apiextensions.k8s.io "widgets.{GROUP}" is invalid: ')
    assert ("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[image].type: Required value: "
            "must not be empty for specified object fields") in message

    typed_in_junctor = widget_crd(anyOf=[{"type": "object", "required": ["image"]}])
    response = await http.post(CRDS, json=typed_in_junctor)
    assert response.status_code == 422
    assert "properties[spec].anyOf[0].type: Forbidden: must be empty to be structural" in response.json()["message"]

    metadata = widget_crd()
    metadata["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] = {
        "type": "object", "properties": {"labels": {"type": "object"}}}
    response = await http.post(CRDS, json=metadata)
    assert response.status_code == 422
    assert "properties[metadata].properties[labels]: Forbidden" in response.json()["message"]

    no_schema = widget_crd()
    del no_schema["spec"]["versions"][0]["schema"]
    response = await http.post(CRDS, json=no_schema)
    assert response.status_code == 422
    assert "openAPIV3Schema: Required value: schemas are required" in response.json()["message"]

    misnamed = widget_crd()
    misnamed["metadata"]["name"] = "widgets"
    response = await http.post(CRDS, json=misnamed)
    assert response.status_code == 422
    assert 'metadata.name: Invalid value: "widgets": must be spec.names.plural+"."+spec.group' in response.json()[
        "message"]
    assert kube_api.emulator.items("apiextensions.k8s.io/v1", "CustomResourceDefinition") == []
    assert (await http.get(WIDGETS)).status_code == 404


async def test_deleting_a_crd_deletes_its_objects_then_itself(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    await install(http)
    await http.post(WIDGETS, json=widget("plain"))
    held = widget("held")
    held["metadata"]["finalizers"] = ["safeship.dev/cleanup"]
    await http.post(WIDGETS, json=held)

    response = await http.delete(f"{CRDS}/widgets.{GROUP}")
    assert response.status_code == 200
    crd = (await http.get(f"{CRDS}/widgets.{GROUP}")).json()  # Terminating while an object is held
    assert crd["metadata"]["deletionTimestamp"]
    assert "customresourcecleanup.apiextensions.k8s.io" in crd["metadata"]["finalizers"]
    assert any(c["type"] == "Terminating" and c["status"] == "True" for c in crd["status"]["conditions"])
    assert (await http.get(f"{WIDGETS}/plain")).status_code == 404
    remaining = (await http.get(f"{WIDGETS}/held")).json()
    assert remaining["metadata"]["deletionTimestamp"]
    refused = await http.post(WIDGETS, json=widget("late"))
    assert refused.status_code == 405 and "terminating" in refused.json()["message"]

    # the operator removes its finalizer: the object goes, then the CRD and its served kind
    release = {"metadata": {"finalizers": None}}
    assert (await http.patch(f"{WIDGETS}/held", content=json.dumps(release), headers=MERGE)).status_code == 200
    assert (await http.get(f"{CRDS}/widgets.{GROUP}")).status_code == 404
    assert (await http.get(WIDGETS)).status_code == 404
    assert (await http.get(f"/apis/{GROUP}/v1")).status_code == 404


# ------------------------------------------------------------------ Leases


async def test_a_lease_is_served_with_optimistic_concurrency(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "safeship-operator"},
             "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}}
    created = (await http.post(LEASES, json=lease)).json()
    taken = dict(created, spec=dict(created["spec"], holderIdentity="pod-b"))
    also_taken = dict(created, spec=dict(created["spec"], holderIdentity="pod-c"))
    assert (await http.put(f"{LEASES}/safeship-operator", json=taken)).status_code == 200
    lost = await http.put(f"{LEASES}/safeship-operator", json=also_taken)  # same resourceVersion: too late
    assert lost.status_code == 409 and lost.json()["reason"] == "Conflict"
    stored = kube_api.read("coordination.k8s.io/v1", "Lease", "safeship-operator")
    assert stored is not None and stored["spec"]["holderIdentity"] == "pod-b"
    bad = dict(lease, metadata={"name": "bad"}, spec={"leaseDurationSeconds": "long"})
    assert (await http.post(LEASES, json=bad)).status_code == 422


# ------------------------------------------------------------------ watches


async def watch_events(http: httpx.AsyncClient, path: str, params: dict[str, str], until: int = 1000,
                       seconds: float = 10) -> list[dict[str, Any]]:
    """The events of a watch until it ends (or `until` events), bounded by `seconds`."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async with http.stream("GET", path, params={"watch": "true", **params}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= until:
                    return

    await asyncio.wait_for(read(), timeout=seconds)
    return events


def configmap(name: str, namespace: str = "test", owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"k": name}}


async def test_a_watch_from_a_resource_version_sees_only_later_changes(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    await http.post(CONFIGMAPS, json=configmap("before"))
    listed = (await http.get(CONFIGMAPS)).json()
    since = listed["metadata"]["resourceVersion"]
    await http.post(CONFIGMAPS, json=configmap("after"))
    await http.delete(f"{CONFIGMAPS}/before")
    replay = await watch_events(http, CONFIGMAPS, {"resourceVersion": since}, until=2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replay] == [("ADDED", "after"), ("DELETED", "before")]
    # without a resourceVersion: the current objects first, as ADDED; a field selector narrows it
    initial = await watch_events(http, CONFIGMAPS, {"timeoutSeconds": "1"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "after")]
    named = await watch_events(http, CONFIGMAPS, {"resourceVersion": since, "fieldSelector": "metadata.name=before",
                                                  "timeoutSeconds": "1"})
    assert [e["type"] for e in named] == ["DELETED"]
    # sendInitialEvents (watch-list): the current objects, then a bookmark marking their end
    streamed = await watch_events(http, CONFIGMAPS, {"sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                                     "resourceVersionMatch": "NotOlderThan"}, until=2)
    assert [e["type"] for e in streamed] == ["ADDED", "BOOKMARK"]
    assert streamed[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    labelled = await watch_events(http, CONFIGMAPS, {"labelSelector": "team=none", "timeoutSeconds": "1"})
    assert labelled == []


@pytest.mark.kube_api(bookmark_interval=0.2)
async def test_bookmarks_carry_the_current_resource_version_and_timeout_ends_the_watch(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    await http.post(CONFIGMAPS, json=configmap("a"))
    since = (await http.get(CONFIGMAPS)).json()["metadata"]["resourceVersion"]
    other = await http.post("/api/v1/namespaces/default/configmaps", json=configmap("elsewhere", "default"))
    latest = other.json()["metadata"]["resourceVersion"]
    events = await watch_events(http, CONFIGMAPS, {"resourceVersion": since, "allowWatchBookmarks": "true",
                                                   "timeoutSeconds": "1"})
    # the watch ended by itself after timeoutSeconds; nothing in its namespace changed, but its
    # bookmarks say how far the server has gone
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[-1]["object"]["metadata"]["resourceVersion"] == latest
    assert events[-1]["object"]["kind"] == "ConfigMap"
    plain = await watch_events(http, CONFIGMAPS, {"resourceVersion": since, "timeoutSeconds": "1"})
    assert plain == []  # no bookmarks unless asked for


async def test_a_watch_from_a_compacted_resource_version_gets_410_expired(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    old = (await http.post(CONFIGMAPS, json=configmap("a"))).json()["metadata"]["resourceVersion"]
    await http.patch(f"{CONFIGMAPS}/a", content=json.dumps({"data": {"k": "changed"}}), headers=MERGE)
    floor = kube_api.emulator.compact()
    events = await watch_events(http, CONFIGMAPS, {"resourceVersion": old}, until=1)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"] == f"too old resource version: {old} ({floor + 1})"
    # a client that lists again and watches from there goes on
    fresh = (await http.get(CONFIGMAPS)).json()["metadata"]["resourceVersion"]
    await http.post(CONFIGMAPS, json=configmap("b"))
    resumed = await watch_events(http, CONFIGMAPS, {"resourceVersion": fresh}, until=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("ADDED", "b")]


# ------------------------------------------------------------------ garbage collection


def owner_ref(owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    return ref


async def make(http: httpx.AsyncClient, obj: dict[str, Any], path: str = CONFIGMAPS) -> dict[str, Any]:
    response = await http.post(path, json=obj)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_deleting_an_owner_deletes_its_dependents_in_the_background(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    owner = await make(http, configmap("owner"))
    child = await make(http, configmap("child", owners=[owner_ref(owner)]))
    await make(http, configmap("grandchild", owners=[owner_ref(child)]))
    await make(http, configmap("bystander"))
    assert (await http.delete(f"{CONFIGMAPS}/owner")).status_code == 200
    names = [o["metadata"]["name"] for o in kube_api.items("v1", "ConfigMap")]
    assert names == ["bystander"]


async def test_orphan_propagation_keeps_dependents_without_the_owner_reference(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    owner = await make(http, configmap("owner"))
    other = await make(http, configmap("other-owner"))
    await make(http, configmap("child", owners=[owner_ref(owner), owner_ref(other)]))
    await make(http, configmap("only-child", owners=[owner_ref(owner)]))
    response = await http.request("DELETE", f"{CONFIGMAPS}/owner",
                                  json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"})
    assert response.status_code == 200
    assert kube_api.read("v1", "ConfigMap", "owner") is None
    child = kube_api.read("v1", "ConfigMap", "child")
    only_child = kube_api.read("v1", "ConfigMap", "only-child")
    assert child is not None and [r["name"] for r in child["metadata"]["ownerReferences"]] == ["other-owner"]
    assert only_child is not None and "ownerReferences" not in only_child["metadata"]
    bad = await http.delete(f"{CONFIGMAPS}/other-owner", params={"propagationPolicy": "Sideways"})
    assert bad.status_code == 422 and 'Unsupported value: "Sideways"' in bad.json()["message"]


async def test_foreground_deletion_waits_for_blocking_dependents(kube_api: ApiHandle, http: httpx.AsyncClient) -> None:
    owner = await make(http, configmap("owner"))
    blocking = configmap("blocking", owners=[owner_ref(owner, block=True)])
    blocking["metadata"]["finalizers"] = ["example.com/slow"]
    await make(http, blocking)
    await make(http, configmap("quick", owners=[owner_ref(owner)]))
    response = await http.delete(f"{CONFIGMAPS}/owner", params={"propagationPolicy": "Foreground"})
    assert response.status_code == 200
    waiting = kube_api.read("v1", "ConfigMap", "owner")
    assert waiting is not None and waiting["metadata"]["deletionTimestamp"]
    assert waiting["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert kube_api.read("v1", "ConfigMap", "quick") is None
    held = kube_api.read("v1", "ConfigMap", "blocking")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    done = {"metadata": {"finalizers": None}}
    assert (await http.patch(f"{CONFIGMAPS}/blocking", content=json.dumps(done), headers=MERGE)).status_code == 200
    assert kube_api.read("v1", "ConfigMap", "blocking") is None
    assert kube_api.read("v1", "ConfigMap", "owner") is None


async def test_dangling_and_cross_namespace_owner_references_are_absent_owners(
    kube_api: ApiHandle, http: httpx.AsyncClient
) -> None:
    owner = await make(http, configmap("owner"))
    elsewhere = await make(http, configmap("owner", "default"), "/api/v1/namespaces/default/configmaps")
    dangling = dict(owner_ref(owner), uid="00000000-0000-0000-0000-000000000000")
    cross = owner_ref(elsewhere)  # names an object of another namespace: not an owner here
    await http.post(CONFIGMAPS, json=configmap("dangling", owners=[dangling]))
    await http.post(CONFIGMAPS, json=configmap("cross", owners=[cross]))
    await http.post(CONFIGMAPS, json=configmap("mixed", owners=[owner_ref(owner), dangling]))
    namespace = kube_api.read("v1", "Namespace", "test", None)
    assert namespace is not None
    await http.post(CONFIGMAPS, json=configmap("cluster-owned", owners=[owner_ref(namespace)]))
    assert (await http.get(f"{CONFIGMAPS}/dangling")).status_code == 404
    assert (await http.get(f"{CONFIGMAPS}/cross")).status_code == 404
    mixed = (await http.get(f"{CONFIGMAPS}/mixed")).json()  # a solid owner keeps it; the dangling one goes
    assert [r["uid"] for r in mixed["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    assert (await http.get(f"{CONFIGMAPS}/cluster-owned")).status_code == 200  # cluster-scoped owners count
    assert (await http.get("/api/v1/namespaces/default/configmaps/owner")).status_code == 200
