"""KubeClient against the API server emulator over real HTTP: what it reads and writes, and how the
server's answers reach callers (TemporaryError, PermanentError with the server's message, None)."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
from emulator import ApiHandle, Permission, write_kubeconfig

from safeship.errors import InputError, PermanentError, TemporaryError
from safeship.kube.client import KubeClient, guess_plural


def deployment(name: str = "web", image: str = "registry.example/web:1.0", replicas: int = 2) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]},
            },
        },
    }


def http_route(name: str = "web", weights: tuple[int, int] = (100, 0)) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "public", "namespace": "gateways"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": name, "port": 80, "weight": weights[0]},
                        {"name": f"{name}-canary", "port": 80, "weight": weights[1]},
                    ]
                }
            ],
        },
    }


async def test_create_get_list_delete_round_trip(kube_api: ApiHandle) -> None:
    async with KubeClient.for_environment(kube_api.environment()) as kube:
        created = await kube.create(deployment())
        assert created["metadata"]["namespace"] == kube_api.namespace
        assert created["metadata"]["resourceVersion"]
        assert created["spec"]["replicas"] == 2

        fetched = await kube.get("apps/v1", "Deployment", "web")
        assert fetched == created
        assert await kube.get("apps/v1", "Deployment", "missing") is None

        await kube.create(deployment("api"))
        names = sorted(o["metadata"]["name"] for o in await kube.list("apps/v1", "Deployment"))
        assert names == ["api", "web"]
        only = await kube.list("apps/v1", "Deployment", labels={"app.kubernetes.io/name": "api"})
        assert [o["metadata"]["name"] for o in only] == ["api"]

        await kube.delete("apps/v1", "Deployment", "web")
        assert kube_api.read("apps/v1", "Deployment", "web") is None
        await kube.delete("apps/v1", "Deployment", "web")  # absent: a no-op


async def test_custom_resources_and_cluster_scoped_kinds_use_the_same_calls(kube_api: ApiHandle) -> None:
    kube_api.ensure_namespace("gateways")
    async with kube_api.client() as kube:
        route = await kube.create(http_route())
        assert route["kind"] == "HTTPRoute"
        assert kube_api.read("gateway.networking.k8s.io/v1", "HTTPRoute", "web") is not None

        ns = await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "extra"}})
        assert "namespace" not in ns["metadata"]
        assert (await kube.get("v1", "Namespace", "extra")) is not None
        await kube.delete("v1", "Namespace", "extra")
        terminating = await kube.get("v1", "Namespace", "extra")  # until the namespace controller empties it
        assert terminating is not None and terminating["status"]["phase"] == "Terminating"
        assert kube_api.emulator.finalize_namespace("extra")
        assert await kube.get("v1", "Namespace", "extra") is None


async def test_merge_patch_deletes_with_null_and_replaces_lists(kube_api: ApiHandle) -> None:
    obj = deployment()
    obj["metadata"]["annotations"] = {"keep": "1", "drop": "2"}
    async with kube_api.client() as kube:
        await kube.create(obj)
        patched = await kube.patch(
            "apps/v1",
            "Deployment",
            "web",
            {
                "metadata": {"annotations": {"drop": None}},
                "spec": {
                    "replicas": 5,
                    "template": {"spec": {"containers": [{"name": "app", "image": "registry.example/web:2.0"}]}},
                },
            },
        )
    assert patched["metadata"]["annotations"] == {"keep": "1"}
    assert patched["spec"]["replicas"] == 5
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "app", "image": "registry.example/web:2.0"}]  # ports went with the old list
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored is not None and stored["spec"]["replicas"] == 5


async def test_patch_status_changes_only_the_status(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        await kube.create(deployment())
        result = await kube.patch_status(
            "apps/v1", "Deployment", "web", {"status": {"replicas": 2}, "spec": {"replicas": 9}}
        )
    assert result["status"] == {"replicas": 2}
    assert result["spec"]["replicas"] == 2


async def test_apply_creates_then_patches_and_is_idempotent(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        first = await kube.apply(deployment())
        again = await kube.apply(deployment())
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        assert again["metadata"]["generation"] == 1

        changed = await kube.apply(deployment(image="registry.example/web:2.0"))
    assert changed["metadata"]["generation"] == 2
    assert changed["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:2.0"
    assert int(changed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


async def test_apply_of_an_object_read_back_keeps_its_resource_version_as_a_guard(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        current = await kube.apply(deployment())
        stale = copy.deepcopy(current)
        await kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 3}})
        stale["spec"]["replicas"] = 4
        with pytest.raises(TemporaryError, match="has been modified"):
            await kube.apply(stale)
    stored = kube_api.read("apps/v1", "Deployment", "web")
    assert stored is not None and stored["spec"]["replicas"] == 3


async def test_a_stale_resource_version_is_a_temporary_error(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        created = await kube.create(deployment())
        await kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 3}})
        stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"replicas": 7}}
        with pytest.raises(TemporaryError) as caught:
            await kube.patch("apps/v1", "Deployment", "web", stale)
    assert "the object has been modified" in str(caught.value)
    assert caught.value.delay > 0


async def test_creating_an_existing_object_is_a_conflict(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        await kube.create(deployment())
        with pytest.raises(TemporaryError, match="already exists"):
            await kube.create(deployment())


async def test_an_invalid_object_is_permanent_with_the_servers_message(kube_api: ApiHandle) -> None:
    bad = deployment()
    bad["spec"]["replicas"] = "many"
    async with kube_api.client() as kube:
        with pytest.raises(PermanentError) as caught:
            await kube.create(bad)
        message = str(caught.value)
        assert 'Deployment.apps "web" is invalid' in message
        assert "spec.replicas" in message
        assert "HTTP 422" in message

        await kube.create(deployment())
        with pytest.raises(PermanentError, match="is invalid"):
            await kube.patch("apps/v1", "Deployment", "web", {"spec": {"unknownField": 1}})
    assert kube_api.read("apps/v1", "Deployment", "web") is not None


async def test_a_missing_namespace_is_permanent(kube_api: ApiHandle) -> None:
    async with kube_api.client(namespace="nowhere") as kube:
        with pytest.raises(PermanentError, match='namespaces "nowhere" not found'):
            await kube.create(deployment())
        with pytest.raises(PermanentError, match='namespaces "nowhere" not found'):
            await kube.apply(deployment())
        # As on a real server, only creation checks the namespace; other calls find no object.
        with pytest.raises(PermanentError, match=r'deployments\.apps "web" not found'):
            await kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 1}})
        assert await kube.get("apps/v1", "Deployment", "web") is None
        assert await kube.list("apps/v1", "Deployment") == []


async def test_patching_a_missing_object_is_permanent(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        with pytest.raises(PermanentError, match=r'deployments\.apps "web" not found'):
            await kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 1}})


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_delay"),
    [(429, 7, 7.0), (503, None, None), (500, 3, 3.0), (409, None, None)],
)
async def test_throttling_and_server_errors_are_temporary_with_the_servers_delay(
    kube_api: ApiHandle, status: int, retry_after: int | None, expected_delay: float | None
) -> None:
    kube_api.emulator.fail("GET", "deployments", status=status, message="try later", retry_after=retry_after)
    async with kube_api.client() as kube:
        with pytest.raises(TemporaryError, match="try later") as caught:
            await kube.get("apps/v1", "Deployment", "web")
        assert caught.value.delay > 0
        if expected_delay is not None:
            assert caught.value.delay == expected_delay
        assert await kube.get("apps/v1", "Deployment", "web") is None  # the fault was used up


async def test_forbidden_is_permanent(kube_api: ApiHandle) -> None:
    kube_api.emulator.fail("POST", "deployments", status=403, message='deployments.apps is forbidden: User "x"')
    async with kube_api.client() as kube:
        with pytest.raises(PermanentError, match="forbidden"):
            await kube.create(deployment())


async def test_an_unreachable_server_is_temporary(tmp_path: Path) -> None:
    # A port on loopback with nothing listening (bound, then closed before the client calls).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "gone", "default")
    async with KubeClient.from_kubeconfig(str(config), context="gone") as kube:
        with pytest.raises(TemporaryError, match="cannot reach the API server") as caught:
            await kube.get("v1", "Pod", "web")
    assert caught.value.delay > 0


async def test_kubeconfig_problems_are_permanent(tmp_path: Path, kube_api: ApiHandle) -> None:
    with pytest.raises(PermanentError, match="not found"):
        KubeClient.from_kubeconfig(str(tmp_path / "absent"), context="x")
    with pytest.raises(PermanentError, match="Context 'other' not found"):
        KubeClient.from_kubeconfig(str(kube_api.kubeconfig), context="other")


async def test_an_object_without_a_name_is_bad_input(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        with pytest.raises(InputError, match=r"metadata\.name"):
            await kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})


async def test_the_environment_names_context_kubeconfig_and_namespace(kube_api: ApiHandle) -> None:
    kube_api.ensure_namespace("prod")
    environment = kube_api.environment(namespace="prod")
    async with KubeClient.for_environment(environment) as kube:
        assert kube.namespace == "prod"
        created = await kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert created["metadata"]["namespace"] == "prod"
    assert kube_api.emulator.read("v1", "ConfigMap", "c", "prod") is not None


async def test_can_i_asks_the_server(kube_api: ApiHandle) -> None:
    kube_api.emulator.permissions = [
        Permission(verb="get", resource="deployments", group="apps"),
        Permission(verb="*", resource="configmaps", namespace=kube_api.namespace),
    ]
    async with kube_api.client() as kube:
        assert await kube.can_i("get", "deployments", group="apps")
        assert not await kube.can_i("delete", "deployments", group="apps")
        assert await kube.can_i("update", "configmaps")
        assert not await kube.can_i("update", "configmaps", namespace="elsewhere")
    reviews = [r for r in kube_api.emulator.requests_made if "selfsubjectaccessreviews" in r.url.path]
    assert len(reviews) == 4


def test_plurals_follow_kubernetes_guess() -> None:
    assert guess_plural("Widget") == "widgets"
    assert guess_plural("Policy") == "policies"
    assert guess_plural("Ingress") == "ingresses"


async def test_without_a_kubeconfig_the_default_loading_applies(
    kube_api: ApiHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    environment = kube_api.environment(kubeconfig=None, cluster="")  # current context, $KUBECONFIG
    async with KubeClient.for_environment(environment) as kube:
        assert await kube.list("v1", "ConfigMap") == []


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (502, b"<html>Bad Gateway</html>", "text/html", TemporaryError),
        (500, b"{not json", "application/json", TemporaryError),
        (403, b"denied by the proxy", "text/plain", PermanentError),
    ],
)
async def test_error_answers_that_are_not_a_status_are_still_translated(
    kube_api: ApiHandle, status: int, body: bytes, content_type: str, expected: type[Exception]
) -> None:
    kube_api.emulator.fail("PATCH", "configmaps", status=status, body=body, content_type=content_type)
    kube_api.write({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    async with kube_api.client() as kube:
        with pytest.raises(expected, match=f"HTTP {status}"):
            await kube.patch("v1", "ConfigMap", "c", {"data": {"a": "1"}})


async def test_a_success_answer_that_is_not_json_is_temporary(kube_api: ApiHandle) -> None:
    kube_api.emulator.fail("GET", "configmaps", status=200, body=b"<html>portal</html>", content_type="text/html")
    async with kube_api.client() as kube:
        with pytest.raises(TemporaryError, match="unreadable response"):
            await kube.get("v1", "ConfigMap", "c")


async def test_empty_names_are_bad_input(kube_api: ApiHandle) -> None:
    async with kube_api.client() as kube:
        with pytest.raises(InputError, match="name must be a non-empty string"):
            await kube.get("v1", "ConfigMap", "")
        with pytest.raises(InputError, match="name must be a non-empty string"):
            await kube.delete("v1", "ConfigMap", "a/b")
