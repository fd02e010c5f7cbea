"""The operator in the stand-in cluster: the API emulator serving Releases (from the installed CRD)
and Leases, the cluster simulator moving pods, and users whose requests follow the
VirtualService's weights to the ready pods of each version (a version listed in
`UsersTraffic.failing` fails 40% of its requests).

`operator_rig` yields an `OperatorRig`: `start(identity)` runs an `Operator` as a task (a loop with
its own API clients and store connection, as a second replica would have), `apply(...)` writes a
Release as `kubectl apply` does, `annotate(...)`, `delete(...)`, `release()` reads it back, and
`status_writes()` lists every status patch the API server received, in order. Everything started
is stopped when the test ends, also when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from emulator import ApiHandle

from safeship.config.models import SafeshipConfig
from safeship.kube import objects
from safeship.kube.client import KubeClient
from safeship.operator import release as rel
from safeship.operator.crd import release_crd
from safeship.operator.lease import LeaseSettings
from safeship.operator.runner import Operator, OperatorSettings
from safeship.routing.base import RouteKey
from safeship.store import Store
from safeship.traffic import TrafficCounters, TrafficWindow

SERVICE = "user-service"
USERS = 1000  # requests per read of the counters
LEASE_NAMESPACE = "kube-system"


def serve_release_kinds(api: ApiHandle) -> None:
    """Install the Release CRD as a cluster admin would (the stand-in then serves the kind, validated
    against the CRD's schema, with its status subresource); Leases are built in."""
    api.write(release_crd())
    assert (rel.GROUP, rel.VERSION, rel.PLURAL) in api.emulator.kinds
    assert ("coordination.k8s.io", "v1", "leases") in api.emulator.kinds


@dataclass
class UsersTraffic:
    """Users whose requests go where the VirtualService sends them, to the ready pods of each version."""

    api: ApiHandle
    failing: set[str] = field(default_factory=set)
    totals: dict[str, TrafficCounters] = field(default_factory=dict)

    def _ready(self, selector: Mapping[str, str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for pod in self.api.items("v1", "Pod", labels=dict(selector)):
            version = objects.object_version(pod)
            if version is not None and objects.pod_ready(pod):
                found[version] = found.get(version, 0) + 1
        return found

    def split(self) -> dict[str, int]:
        virtual = self.api.read(objects.ISTIO_API, "VirtualService", SERVICE)
        shares: dict[str, float] = {}
        for route in ((virtual or {}).get("spec") or {}).get("http", [{}])[0].get("route", []):
            service = self.api.read("v1", "Service", route["destination"]["host"])
            if service is None:
                continue
            pods = self._ready(service["spec"]["selector"])
            for version, count in pods.items():
                shares[version] = shares.get(version, 0.0) + float(route.get("weight", 0)) * count / sum(pods.values())
        whole = sum(shares.values())
        if not whole:
            return {}
        counts = {v: math.floor(USERS * s / whole) for v, s in shares.items()}
        for version in sorted(shares, key=lambda v: -shares[v])[: USERS - sum(counts.values())]:
            counts[version] += 1
        return counts

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        for version, count in self.split().items():
            total = self.totals.setdefault(version, TrafficCounters())
            for i in range(count):
                failed = version in self.failing and i % 5 < 2
                total.observe(20.0 + (i % 7), status=503 if failed else 200)
        return {v: c.plus(TrafficCounters()) for v, c in self.totals.items()}

    async def before(self, route: RouteKey, at: float, span: float) -> TrafficWindow | None:
        return None

    async def close(self) -> None:
        return None


def operator_config(api: ApiHandle, db: Path) -> SafeshipConfig:
    common = {"platform": "kubernetes", "cluster": api.context, "kubeconfig": str(api.kubeconfig),
              "namespace": api.namespace, "traffic_router": "istio", "type": "production"}
    return SafeshipConfig.model_validate({
        "intelligent_deployment": {
            "strategies": {"canary": {"traffic_percentages": [25, 50, 100], "step_duration": "2s",
                                      "min_step_duration": "0s"}},
            "rollback": {"monitoring": {"duration": "1s", "interval": "1s"},
                         "triggers": [{"type": "health_check_failure", "timeout": "60s"}]},
            "analysis": {"ramp_time": "1s", "interval": "1s"},
        },
        "environment_management": {"environments": [
            {"name": "production", **common},
            {"name": "gated", **common, "approval": "required"},
        ]},
        "store": {"url": f"sqlite:///{db}"},
    })


def release_body(api: ApiHandle, version: str, *, environment: str = "production",
                 strategy: str | None = "canary", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": rel.API_VERSION, "kind": rel.KIND,
        "metadata": {"name": SERVICE, "namespace": api.namespace},
        "spec": {"service": SERVICE, "image": "registry.example/user-service:{version}", "version": version,
                 "environment": environment, "replicas": 2, **spec},
    }
    if strategy is not None:
        body["spec"]["strategy"] = strategy
    return body


@dataclass
class OperatorRig:
    api: ApiHandle
    sim: Any
    tmp: Path
    traffic: UsersTraffic
    lease_duration_s: float = 3.0
    operators: dict[str, tuple[Operator, asyncio.Task[None], asyncio.Event]] = field(default_factory=dict)
    closing: list[Any] = field(default_factory=list)

    def start(self, identity: str, **settings: Any) -> Operator:
        config = operator_config(self.api, self.tmp / "state.db")
        lease = LeaseSettings(name="safeship-operator", namespace=LEASE_NAMESPACE, identity=identity,
                              duration_s=self.lease_duration_s, renew_deadline_s=self.lease_duration_s * 2 / 3,
                              retry_s=self.lease_duration_s / 6)
        options = {"resync_s": 300.0, "watch_timeout_s": 30, "max_wait_s": 0.5, **settings}
        store = Store(config.store.url)
        kube = KubeClient.from_kubeconfig(str(self.api.kubeconfig), context=self.api.context,
                                          namespace=self.api.namespace)
        operator = Operator(OperatorSettings(config=config, environment="production", lease=lease,
                                             namespace=self.api.namespace, state_dir=self.tmp, **options),
                            store, kube, traffic_for=lambda _c, _e, _r: self.traffic,
                            router_options={"wait_s": 30.0, "poll_s": 0.05})
        stop = asyncio.Event()
        task = asyncio.create_task(operator.run(stop), name=f"operator-{identity}")
        self.operators[identity] = (operator, task, stop)
        self.closing.extend([kube, store])
        return operator

    async def stop(self, identity: str, *, cleanly: bool = True) -> None:
        """Stop one operator: cleanly (it releases the Lease), or as a killed process would stop
        (its task cancelled; the Lease stays until it expires)."""
        operator, task, stop = self.operators.pop(identity)
        if cleanly:
            stop.set()
            operator.stop()
            await asyncio.wait_for(task, timeout=10)
            return
        operator.elector.release = _nothing  # type: ignore[method-assign]  # a killed process releases nothing
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        current = self.api.read(rel.API_VERSION, rel.KIND, SERVICE, self.api.namespace)
        desired = copy.deepcopy(dict(body))
        if current is not None:
            desired["metadata"] = {**current["metadata"], **desired["metadata"]}
            desired["status"] = current.get("status")
            if desired["status"] is None:
                desired.pop("status")
        written = self.api.write(desired)
        await self.api.emulator.publish()
        return written

    async def annotate(self, key: str, value: str) -> None:
        current = self.api.read(rel.API_VERSION, rel.KIND, SERVICE, self.api.namespace)
        assert current is not None
        current["metadata"].setdefault("annotations", {})[key] = value
        self.api.write(current)
        await self.api.emulator.publish()

    async def delete(self) -> None:
        async with KubeClient.from_kubeconfig(str(self.api.kubeconfig), context=self.api.context,
                                              namespace=self.api.namespace) as kube:
            await kube.delete(rel.API_VERSION, rel.KIND, SERVICE, self.api.namespace)

    def release(self) -> dict[str, Any]:
        found = self.api.read(rel.API_VERSION, rel.KIND, SERVICE, self.api.namespace)
        assert found is not None
        return found

    def status(self) -> dict[str, Any]:
        return dict(self.release().get("status") or {})

    def status_writes(self) -> list[dict[str, Any]]:
        """The body of every status patch the API server accepted or refused, in order."""
        found = []
        for request in self.api.emulator.requests_made:
            if str(request.method.value).upper() == "PATCH" and request.url.path.endswith(
                    f"/{rel.PLURAL}/{SERVICE}/status"):
                found.append(json.loads(request.body))
        return found

    async def until(self, check: Any, *, timeout: float = 30.0, what: str = "") -> None:
        """Wait (polling every 50 ms, at most `timeout` s) until `check()` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            for _, task, _ in self.operators.values():
                if task.done():
                    task.result()  # an operator that crashed fails the test with its error
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what or check}; status: {self.status_or_none()}")
            await asyncio.sleep(0.05)

    def status_or_none(self) -> dict[str, Any] | None:
        found = self.api.read(rel.API_VERSION, rel.KIND, SERVICE, self.api.namespace)
        return None if found is None else found.get("status")


async def _nothing() -> None:
    return None


@pytest_asyncio.fixture
async def operator_rig(kube_api: ApiHandle, cluster_sim: Any, tmp_path: Path) -> AsyncIterator[OperatorRig]:
    serve_release_kinds(kube_api)
    rig = OperatorRig(kube_api, cluster_sim, tmp_path, UsersTraffic(kube_api))
    async with cluster_sim.running():
        try:
            yield rig
        finally:
            for identity in list(rig.operators):
                with contextlib.suppress(Exception):  # bounded: a stuck stop must not hold the suite
                    await asyncio.wait_for(rig.stop(identity, cleanly=False), timeout=15)
            for item in rig.closing:
                with contextlib.suppress(Exception):
                    result = item.close()
                    if asyncio.iscoroutine(result):
                        await result
