"""The operator's watch of Releases: list, then watch from the list's resourceVersion with
bookmarks; resumed from the last version seen when the server ends a watch; on 410 Gone, listed
again and resumed, with nothing missed (a Release created or deleted meanwhile is seen). And the
owned objects going with their Release when it is deleted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import SERVICE, OperatorRig, release_body

from safeship.kube import objects
from safeship.kube.client import KubeClient, WatchExpired
from safeship.operator import release as rel
from safeship.operator.lease import LeaseSettings
from safeship.operator.runner import Operator, OperatorSettings


def _release(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": rel.API_VERSION, "kind": rel.KIND,
            "metadata": {"name": name, "namespace": "prod", "resourceVersion": version},
            "spec": {"service": name, "image": "x:{version}", "version": "v1"}}


class ScriptedServer:
    """A KubeClient stand-in whose lists and watches follow a script."""

    def __init__(self) -> None:
        self.lists = [([_release("a", "10")], "10"), ([_release("b", "13")], "14")]
        self.watch_from: list[str] = []
        self.done = asyncio.Event()

    async def list_at(self, *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
        return self.lists.pop(0)

    async def watch(self, *args: Any, resource_version: str,
                    **kwargs: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watch_from.append(resource_version)
        if len(self.watch_from) == 1:  # a change, a bookmark, then the server ends the watch
            yield "MODIFIED", {**_release("a", "11"), "spec": {**_release("a", "11")["spec"], "version": "v2"}}
            yield "BOOKMARK", {"kind": rel.KIND, "apiVersion": rel.API_VERSION, "metadata": {"resourceVersion": "12"}}
            return
        if len(self.watch_from) == 2:  # meanwhile "a" was deleted and "b" created, and history compacted
            raise WatchExpired("Kubernetes API: watch Release objects: too old resource version: 12 (HTTP 410)")
        self.done.set()
        await asyncio.Event().wait()


async def test_a_410_relists_and_resumes_without_missing_a_change() -> None:
    server = ScriptedServer()
    operator = Operator(OperatorSettings(config=None, environment="production",  # type: ignore[arg-type]
                                         lease=LeaseSettings(identity="x")), None, server)  # type: ignore[arg-type]
    task = asyncio.create_task(operator._watch_loop())
    try:
        await asyncio.wait_for(server.done.wait(), timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert server.watch_from == ["10", "12", "14"]  # from the list, from the bookmark, from the new list
    assert operator.stats["lists"] == 2 and operator.stats["expired"] == 1 and operator.stats["bookmarks"] == 1
    assert list(operator.releases) == [("prod", "b")]  # "a" deleted meanwhile is gone, "b" is known


async def test_the_operator_resumes_after_410_gone_in_the_stand_in(operator_rig: OperatorRig) -> None:
    """The operator's first watch starts from a resourceVersion the stand-in has compacted away
    (as after a long disconnection): 410 Expired, a new list, and the Release is rolled out."""
    rig = operator_rig
    compact = getattr(rig.api.emulator, "compact", None)
    if compact is None:
        pytest.skip("the stand-in does not compact its watch history (no 410 Gone)")
    await rig.apply(release_body(rig.api, "v1"))
    compact()
    operator = rig.start("operator-a")
    operator.resource_version = "1"
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed after the relist")
    assert operator.stats["expired"] == 1 and operator.stats["lists"] == 1
    # and a change after the relist is still seen
    await rig.annotate("example.com/note", "seen")
    await rig.until(lambda: operator.releases[(rig.api.namespace, SERVICE)].obj["metadata"].get("annotations", {})
                    .get("example.com/note") == "seen", what="the change after the relist")


async def _collects_garbage(rig: OperatorRig) -> bool:
    """Whether the stand-in deletes the dependents of a deleted owner."""
    owner = rig.api.write({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gc-owner"}})
    rig.api.write({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gc-dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-owner", "uid": owner["metadata"]["uid"]}]}})
    async with KubeClient.from_kubeconfig(str(rig.api.kubeconfig), context=rig.api.context,
                                          namespace=rig.api.namespace) as kube:
        await kube.delete("v1", "ConfigMap", "gc-owner")
    for _ in range(20):
        if rig.api.read("v1", "ConfigMap", "gc-dependent") is None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_deleting_the_release_deletes_what_it_owned(operator_rig: OperatorRig) -> None:
    rig = operator_rig
    if not await _collects_garbage(rig):
        pytest.skip("the stand-in does not delete the dependents of a deleted owner")
    operator = rig.start("operator-a")
    await rig.apply(release_body(rig.api, "v1"))
    await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed")
    assert rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "v1")) is not None
    await rig.delete()

    def gone() -> bool:
        return (rig.api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, "v1")) is None
                and rig.api.read("v1", "Service", SERVICE) is None
                and rig.api.read(objects.ISTIO_API, "VirtualService", SERVICE) is None
                and not rig.api.items("v1", "Pod", labels=objects.selector(SERVICE)))

    await rig.until(gone, timeout=10, what="the Release's objects deleted")
    await rig.until(lambda: (rig.api.namespace, SERVICE) not in operator.releases, what="the operator forgets it")
