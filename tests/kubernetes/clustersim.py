"""A small cluster simulator for the tests, in the style of kwok: it moves the status of objects in
the API server emulator the way Kubernetes' controllers and the kubelet would, one explicit step at
a time (`await sim.tick()`), or in the background for a bounded time (`async with sim.running()`).

One tick is one pass of every controller over what the emulator holds, `tick_seconds` of sim time:

- **Deployment controller**: a ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`,
  the hash also a label and part of its selector, `deployment.kubernetes.io/revision` annotations),
  scaled as the strategy says. RollingUpdate: the new ReplicaSet grows while all pods stay within
  replicas + maxSurge, old ones shrink while available pods stay at least replicas -
  maxUnavailable (ints or percents: surge rounds up, unavailable down, both 0 means 1
  unavailable). Recreate: every old ReplicaSet goes to 0 and its pods are gone before the new one
  grows. Status: observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas,
  unavailableReplicas, and the conditions Available (MinimumReplicasAvailable or
  MinimumReplicasUnavailable) and Progressing (NewReplicaSetCreated / ReplicaSetUpdated while it
  moves, NewReplicaSetAvailable when done, ProgressDeadlineExceeded after
  `progressDeadlineSeconds` of sim time without progress). A paused Deployment does not roll.
  Restoring an earlier template makes its old ReplicaSet the new one, as `kubectl rollout undo`.
- **ReplicaSet controller**: pods from the template (owned by the ReplicaSet), extra pods removed
  (unready first, then newest); status replicas, readyReplicas, availableReplicas (ready for
  `minReadySeconds`), observedGeneration.
- **kubelet**: a pod is Running with its IP after `running_after` ticks and Ready after
  `ready_after` ticks. A pod template annotated `safeship.test/fail` never becomes available:
  `crashloop` (Running, container waiting in CrashLoopBackOff, restartCount growing, last state
  terminated with Error), `imagepull` (Pending, waiting in ErrImagePull then ImagePullBackOff),
  `oom` (Running, waiting in CrashLoopBackOff, last state terminated OOMKilled with exit code 137,
  restarts growing) or `unready` (Running, container running but never ready).
- **endpoints controller**: an Endpoints object per Service with a selector: ready pods as
  addresses, the others as notReadyAddresses, ports resolved from the pods' named ports.
- **garbage collector**: objects whose owner (ownerReferences uid) is gone are deleted.
- **Gateway API and Istio**: HTTPRoute status.parents[] per parentRef with Accepted (False when
  the Gateway is missing or none of its listeners admits the route: NoMatchingParent,
  NotAllowedByListeners, NoMatchingListenerHostname) and ResolvedRefs (False, BackendNotFound,
  when a backend Service is missing) at the route's observedGeneration; VirtualService and
  DestinationRule status.observedGeneration only with `istio_status=True` (Istio's status
  reporting, off by default).
- **namespace controller**: a Terminating namespace (deleted, held by its `kubernetes`
  finalizer) is emptied and then goes.

Every write goes through the emulator's own checks (validation, resourceVersion), so status the
simulator writes is status a real API server would accept. A tick runs without awaiting between
reads and writes, so it never interleaves with a request the emulator serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from emulator import ApiFailure, KubeEmulator, selector_matches

Obj = dict[str, Any]

FAIL_ANNOTATION = "safeship.test/fail"
FAILURES = ("crashloop", "imagepull", "oom", "unready")
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
CONTROLLER_NAME = "safeship.test/gateway-controller"
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template (the pod-template-hash label)."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def resolve_count(value: Any, total: int, *, round_up: bool) -> int:
    """An IntOrString (3 or "25%") against `total`."""
    if value is None:
        return 0
    if isinstance(value, str) and value.endswith("%"):
        share = float(value[:-1]) * total / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def rolling_bounds(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a Deployment as counts, as the deployment controller does."""
    replicas = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    surge = resolve_count(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = resolve_count(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _owner_ref(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _condition(conditions: list[Obj], kind: str) -> Obj | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def _hostnames_meet(first: str, second: str) -> bool:
    """Whether two hostnames (either may be a `*.` wildcard) can match one request's host."""
    def fits(host: str, pattern: str) -> bool:
        return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern[2:])
    return fits(first, second) or fits(second, first) or first == second


def put_gateway(emulator: KubeEmulator, name: str, namespace: str, *, allowed_from: str = "Same",
                selector: Mapping[str, str] | None = None, hostname: str | None = None,
                section: str = "http") -> Obj:
    """A Gateway with one HTTP listener on port 80 (`allowedRoutes.namespaces.from: allowed_from`)."""
    namespaces: Obj = {"from": allowed_from}
    if selector is not None:
        namespaces["selector"] = {"matchLabels": dict(selector)}
    listener: Obj = {"name": section, "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": namespaces}}
    if hostname is not None:
        listener["hostname"] = hostname
    emulator.ensure_namespace(namespace)
    existing = emulator.read("gateway.networking.k8s.io/v1", "Gateway", name, namespace)
    if existing is not None:
        emulator.remove("gateway.networking.k8s.io/v1", "Gateway", name, namespace)
    return emulator.write({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"gatewayClassName": "test", "listeners": [listener]}})


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = _condition(list(conditions), "Ready")
    return bool(ready and ready.get("status") == "True")


class ClusterSim:
    """Controllers and kubelet over a `KubeEmulator` (see the module docstring).

    Options: `running_after` and `ready_after` (ticks from a pod's creation), `tick_seconds` (sim
    time per tick, which the progress deadline and minReadySeconds count), `namespaces` (None: all).
    """

    def __init__(
        self,
        emulator: KubeEmulator,
        *,
        running_after: int = 1,
        ready_after: int = 2,
        tick_seconds: float = 1.0,
        namespaces: list[str] | None = None,
        istio_status: bool = False,
    ) -> None:
        if not 0 <= running_after <= ready_after:
            raise ValueError("running_after must be between 0 and ready_after")
        self.emulator = emulator
        self.running_after = running_after
        self.ready_after = ready_after
        self.tick_seconds = tick_seconds
        self.namespaces = namespaces
        # Istio writes status.observedGeneration only with its status reporting on
        # (values.pilot.env.PILOT_ENABLE_STATUS / meshConfig defaultConfig); it is off by default.
        self.istio_status = istio_status
        self.ticks = 0
        self.now = 0.0  # sim seconds since the simulator started
        self._born: dict[str, int] = {}  # pod uid -> tick it was first seen
        self._refused: dict[str, str] = {}  # replica set uid -> why the API server refused its last pod
        self._ready_since: dict[str, float] = {}  # pod uid -> sim time it became ready
        self._progress_at: dict[str, float] = {}  # deployment uid -> sim time of its last progress
        self._last_seen: dict[str, tuple[Any, ...]] = {}  # deployment uid -> what progress compares
        self._created: set[str] = set()  # deployments whose new ReplicaSet this tick created
        self._next_ip = 0
        self._pod_ips: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # (apiVersion, kind, namespace) -> (changed_at, objects, owner uid -> its objects): see `_all`
        self._listed: dict[tuple[str, str, str | None], tuple[int, list[Obj], dict[str, list[Obj]]]] = {}

    # -------------------------------------------------------------- driving

    async def tick(self, count: int = 1) -> None:
        """Run every controller once per tick, `count` times; watchers see the writes after each."""
        for _ in range(count):
            async with self._lock:
                self._tick()
            await self.emulator.publish()

    async def run_until(self, done: Callable[[], bool], *, max_ticks: int = 100) -> int:
        """Tick until `done()` holds; the number of ticks it took. AssertionError after max_ticks."""
        for ticks in range(max_ticks + 1):
            if done():
                return ticks
            await self.tick()
        raise AssertionError(f"not reached within {max_ticks} ticks")

    @contextlib.asynccontextmanager
    async def running(self, *, interval: float = 0.01, max_ticks: int = 20_000) -> AsyncIterator[ClusterSim]:
        """Tick in the background every `interval` real seconds (at most `max_ticks` times) while the
        block runs; stopped on the way out, also on failure."""
        if self._task is not None:
            raise RuntimeError("the simulator is already running")

        async def loop() -> None:
            for _ in range(max_ticks):
                await self.tick()
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop the background ticks, if any (their errors are raised here)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -------------------------------------------------------------- helpers

    def timestamp(self, at: float | None = None) -> str:
        moment = EPOCH + datetime.timedelta(seconds=self.now if at is None else at)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _in_scope(self, obj: Mapping[str, Any]) -> bool:
        return self.namespaces is None or obj["metadata"].get("namespace") in self.namespaces

    def _all(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        """The kind's objects in scope, as the emulator holds them now. A listing is kept until an
        object of that kind is written (`KubeEmulator.changed_at`), so that the controllers do not
        copy every pod and ReplicaSet once per owner; the objects are shared: read them only."""
        changed = self.emulator.changed_at(api_version, kind)
        key = (api_version, kind, namespace)
        cached = self._listed.get(key)
        if cached is None or cached[0] != changed:
            found = [o for o in self.emulator.items(api_version, kind, namespace) if self._in_scope(o)]
            owners: dict[str, list[Obj]] = {}
            for obj in found:
                for uid in {ref.get("uid") for ref in obj["metadata"].get("ownerReferences") or []}:
                    owners.setdefault(str(uid), []).append(obj)
            cached = self._listed[key] = (changed, found, owners)
        return list(cached[1])

    def _owned(self, api_version: str, kind: str, owner: Obj) -> list[Obj]:
        """The kind's objects in the owner's namespace that name it (its uid) as an owner."""
        self._all(api_version, kind, owner["metadata"]["namespace"])
        owners = self._listed[(api_version, kind, owner["metadata"]["namespace"])][2]
        return list(owners.get(owner["metadata"]["uid"], []))

    def _write_status(self, obj: Obj, status: Obj) -> Obj:
        if obj.get("status") == status:
            return obj
        changed = copy.deepcopy(obj)
        changed["status"] = status
        return self.emulator.write(changed, status=True)

    def _pod_ip(self, uid: str) -> str:
        if uid not in self._pod_ips:
            self._next_ip += 1
            self._pod_ips[uid] = f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 2}"
        return self._pod_ips[uid]

    # -------------------------------------------------------------- one pass

    def _tick(self) -> None:
        self.ticks += 1
        self._created.clear()
        self.now += self.tick_seconds
        self._collect_garbage()
        for deployment in self._all("apps/v1", "Deployment"):
            self._deployment(deployment)
        for replica_set in self._all("apps/v1", "ReplicaSet"):
            self._replica_set(replica_set)
        for pod in self._all("v1", "Pod"):
            self._kubelet(pod)
        for replica_set in self._all("apps/v1", "ReplicaSet"):
            self._replica_set_status(replica_set)
        for deployment in self._all("apps/v1", "Deployment"):
            self._deployment_status(deployment)
        for service in self._all("v1", "Service"):
            self._endpoints(service)
        for api_version in ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"):
            for route in self._all(api_version, "HTTPRoute"):
                self._http_route(route)
        if self.istio_status:
            for api_version in ("networking.istio.io/v1", "networking.istio.io/v1beta1"):
                for kind in ("VirtualService", "DestinationRule"):
                    for obj in self._all(api_version, kind):
                        self._observed(obj)
        for namespace in self._all("v1", "Namespace"):
            if namespace["metadata"].get("deletionTimestamp") and self._in_scope_name(namespace["metadata"]["name"]):
                self.emulator.finalize_namespace(namespace["metadata"]["name"])

    def _in_scope_name(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def _collect_garbage(self) -> None:
        """Delete ReplicaSets whose Deployment is gone, then Pods whose ReplicaSet is gone."""
        uids = {o["metadata"]["uid"] for o in self._all("apps/v1", "Deployment")}
        for replica_set in self._all("apps/v1", "ReplicaSet"):
            if self._orphaned(replica_set, "Deployment", uids):
                self.emulator.remove(
                    "apps/v1", "ReplicaSet", replica_set["metadata"]["name"], replica_set["metadata"]["namespace"]
                )
        uids = {o["metadata"]["uid"] for o in self._all("apps/v1", "ReplicaSet")}
        for pod in self._all("v1", "Pod"):
            if self._orphaned(pod, "ReplicaSet", uids):
                self._delete_pod(pod)

    @staticmethod
    def _orphaned(obj: Obj, owner_kind: str, owners: set[str]) -> bool:
        refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("kind") == owner_kind]
        return bool(refs) and not any(r.get("uid") in owners for r in refs)

    def _delete_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        self.emulator.remove("v1", "Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])
        self._born.pop(uid, None)
        self._ready_since.pop(uid, None)

    # -------------------------------------------------------------- deployment controller

    def _replica_sets_of(self, deployment: Obj) -> list[Obj]:
        return self._owned("apps/v1", "ReplicaSet", deployment)

    def _deployment(self, deployment: Obj) -> None:
        spec = deployment["spec"]
        meta = deployment["metadata"]
        namespace = meta["namespace"]
        desired = int(spec.get("replicas", 1))
        template = spec["template"]
        pod_hash = template_hash(template)
        owned = self._replica_sets_of(deployment)
        new = next((rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == pod_hash), None)
        olds = [rs for rs in owned if rs is not new]
        if spec.get("paused"):
            return
        revisions = [int((rs["metadata"].get("annotations") or {}).get(REVISION, "0")) for rs in owned]
        top = max(revisions, default=0)
        if new is None:
            new = self._new_replica_set(deployment, pod_hash, top + 1)
            self._progress_at[meta["uid"]] = self.now
            self._created.add(meta["uid"])
        else:
            revision = int((new["metadata"].get("annotations") or {}).get(REVISION, "0"))
            if revision < top:  # an earlier template is back: it is the newest revision again
                new = self.emulator.patch_object(
                    "apps/v1",
                    "ReplicaSet",
                    new["metadata"]["name"],
                    {"metadata": {"annotations": {REVISION: str(top + 1)}}},
                    namespace,
                )
                self._progress_at[meta["uid"]] = self.now
        new_revision = (new["metadata"].get("annotations") or {}).get(REVISION)
        if (meta.get("annotations") or {}).get(REVISION) != new_revision:
            deployment = self.emulator.patch_object(
                "apps/v1",
                "Deployment",
                meta["name"],
                {"metadata": {"annotations": {REVISION: new_revision}}},
                namespace,
            )
        min_ready = int(spec.get("minReadySeconds", 0))
        if (new["spec"].get("minReadySeconds", 0)) != min_ready:
            new = self._scale(new, int(new["spec"].get("replicas", 0)), min_ready_seconds=min_ready)

        strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
        active_olds = [rs for rs in olds if int(rs["spec"].get("replicas", 0)) > 0]
        if strategy == "Recreate":
            if active_olds:
                for rs in active_olds:
                    self._scale(rs, 0)
                return
            if any(self._pods_of(rs) for rs in olds):
                return  # old pods still there: the new ones wait
            if int(new["spec"].get("replicas", 0)) != desired:
                self._scale(new, desired)
            return

        if not active_olds:
            if int(new["spec"].get("replicas", 0)) != desired:
                self._scale(new, desired)
            return
        surge, unavailable = rolling_bounds(spec)
        # Scale up the new ReplicaSet within replicas + maxSurge.
        all_count = sum(int(rs["spec"].get("replicas", 0)) for rs in owned)
        new_count = int(new["spec"].get("replicas", 0))
        room = desired + surge - all_count
        if room > 0 and new_count < desired:
            new_count = min(desired, new_count + room)
            new = self._scale(new, new_count)
        # Scale down old ReplicaSets while available pods stay >= replicas - maxUnavailable.
        all_count = sum(int(rs["spec"].get("replicas", 0)) for rs in [new, *olds])
        min_available = desired - unavailable
        new_unavailable = new_count - int((new.get("status") or {}).get("availableReplicas", 0))
        budget = all_count - min_available - new_unavailable
        if budget <= 0:
            return
        # First old pods that are not available: removing them costs no availability.
        for rs in sorted(active_olds, key=lambda r: r["metadata"]["creationTimestamp"]):
            if budget <= 0:
                break
            replicas = int(rs["spec"].get("replicas", 0))
            broken = replicas - int((rs.get("status") or {}).get("availableReplicas", 0))
            cut = min(budget, max(broken, 0), replicas)
            if cut > 0:
                rs = self._scale(rs, replicas - cut)
                budget -= cut
        # Then available old pods, down to replicas - maxUnavailable available in all.
        olds = [r for r in self._replica_sets_of(deployment) if r["metadata"]["name"] != new["metadata"]["name"]]
        available = sum(int((rs.get("status") or {}).get("availableReplicas", 0)) for rs in [new, *olds])
        room_down = available - min_available
        for rs in sorted(olds, key=lambda r: r["metadata"]["creationTimestamp"]):
            if room_down <= 0:
                break
            replicas = int(rs["spec"].get("replicas", 0))
            cut = min(room_down, replicas)
            if cut > 0:
                self._scale(rs, replicas - cut)
                room_down -= cut

    def _new_replica_set(self, deployment: Obj, pod_hash: str, revision: int) -> Obj:
        meta = deployment["metadata"]
        spec = deployment["spec"]
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        labels = dict(template["metadata"]["labels"])
        replica_set = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": {REVISION: str(revision)},
                "ownerReferences": [_owner_ref(deployment)],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": int(spec.get("minReadySeconds", 0)),
                "selector": selector,
                "template": template,
            },
        }
        return self.emulator.write(replica_set)

    def _scale(self, replica_set: Obj, replicas: int, *, min_ready_seconds: int | None = None) -> Obj:
        change: Obj = {"replicas": replicas}
        if min_ready_seconds is not None:
            change["minReadySeconds"] = min_ready_seconds
        return self.emulator.patch_object(
            "apps/v1",
            "ReplicaSet",
            replica_set["metadata"]["name"],
            {"spec": change},
            replica_set["metadata"]["namespace"],
        )

    def _deployment_status(self, deployment: Obj) -> None:
        meta = deployment["metadata"]
        spec = deployment["spec"]
        uid = meta["uid"]
        desired = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec["template"])
        owned = self._replica_sets_of(deployment)
        new = next((rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == pod_hash), None)

        def total(field: str, sets: list[Obj]) -> int:
            return sum(int((rs.get("status") or {}).get(field, 0)) for rs in sets)

        replicas = total("replicas", owned)
        wanted = sum(int(rs["spec"].get("replicas", 0)) for rs in owned)
        updated = total("replicas", [new]) if new else 0
        ready = total("readyReplicas", owned)
        available = total("availableReplicas", owned)
        _, unavailable_allowed = (
            rolling_bounds(spec)
            if (spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
            else (0, 0)
        )
        old = deployment.get("status") or {}
        conditions = [copy.deepcopy(c) for c in old.get("conditions") or []]

        def set_condition(kind: str, status: str, reason: str, message: str, progress: bool = False) -> None:
            current = _condition(conditions, kind)
            if current is None:
                current = {"type": kind, "lastTransitionTime": self.timestamp(), "lastUpdateTime": self.timestamp()}
                conditions.append(current)
            if current.get("status") != status:
                current["lastTransitionTime"] = self.timestamp()
            if current.get("status") != status or current.get("reason") != reason or progress:
                current["lastUpdateTime"] = self.timestamp()
            current.update({"status": status, "reason": reason, "message": message})

        if available >= desired - unavailable_allowed:
            set_condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            set_condition(
                "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
            )

        snapshot = (
            meta.get("generation"),
            updated,
            ready,
            available,
            replicas,
            int(new["spec"].get("replicas", 0)) if new else 0,
        )
        moved = self._last_seen.get(uid) != snapshot
        self._last_seen[uid] = snapshot
        if moved:
            self._progress_at[uid] = self.now
        since = self._progress_at.setdefault(uid, self.now)
        complete = updated == desired and replicas == desired and available == desired and new is not None
        rs_name = new["metadata"]["name"] if new else meta["name"]
        deadline = spec.get("progressDeadlineSeconds", 600)
        if spec.get("paused"):
            set_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused")
        elif complete:
            set_condition(
                "Progressing", "True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'
            )
        elif moved:
            if uid in self._created:
                set_condition(
                    "Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"', progress=True
                )
            else:
                set_condition(
                    "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.', progress=True
                )
        elif self.now - since > deadline:
            set_condition(
                "Progressing", "False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.'
            )
        # deployment/sync.go: a ReplicaSet's ReplicaFailure is copied onto the Deployment, and dropped with it
        failure = next((c for rs in owned for c in (rs.get("status") or {}).get("conditions") or []
                        if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
        if failure is not None:
            set_condition("ReplicaFailure", "True", str(failure.get("reason")), str(failure.get("message")))
        else:
            conditions = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": max(wanted - available, 0),
            "conditions": conditions,
        }
        status = {k: v for k, v in status.items() if v != 0 or k == "observedGeneration"}
        self._write_status(deployment, status)

    # -------------------------------------------------------------- replica set controller

    def _pods_of(self, replica_set: Obj) -> list[Obj]:
        return self._owned("v1", "Pod", replica_set)

    def _replica_set(self, replica_set: Obj) -> None:
        wanted = int(replica_set["spec"].get("replicas", 0))
        pods = self._pods_of(replica_set)
        if len(pods) < wanted:
            try:
                for _ in range(wanted - len(pods)):
                    self._new_pod(replica_set)
            except ApiFailure as refused:
                # replica_set.go manageReplicas: the create error becomes the ReplicaFailure condition
                self._refused[replica_set["metadata"]["uid"]] = refused.message
            else:
                self._refused.pop(replica_set["metadata"]["uid"], None)
        elif len(pods) > wanted:
            # Unready pods first, then the newest, as the ReplicaSet controller ranks them.
            ranked = sorted(pods, key=lambda p: (pod_ready(p), -self._born.get(p["metadata"]["uid"], 0)))
            for pod in ranked[: len(pods) - wanted]:
                self._delete_pod(pod)

    def _new_pod(self, replica_set: Obj) -> Obj:
        template = copy.deepcopy(replica_set["spec"]["template"])
        meta = template.get("metadata") or {}
        suffix = hashlib.sha256(f"{replica_set['metadata']['uid']}-{self.ticks}-{self._next_ip}".encode())
        self._next_ip += 1
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{replica_set['metadata']['name']}-{suffix.hexdigest()[:5]}",
                "namespace": replica_set["metadata"]["namespace"],
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [_owner_ref(replica_set)],
            },
            "spec": template.get("spec") or {},
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        created = self.emulator.write(pod)
        self._born[created["metadata"]["uid"]] = self.ticks
        return created

    def _replica_set_status(self, replica_set: Obj) -> None:
        pods = self._pods_of(replica_set)
        min_ready = float(replica_set["spec"].get("minReadySeconds", 0))
        ready = [p for p in pods if pod_ready(p)]
        available = [p for p in ready if self.now - self._ready_since.get(p["metadata"]["uid"], self.now) >= min_ready]
        selector = replica_set["spec"].get("selector") or {}
        labelled = [p for p in pods if selector_matches(selector, p["metadata"].get("labels") or {})]
        status: Obj = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(labelled),
            "readyReplicas": len(ready),
            "availableReplicas": len(available),
            "observedGeneration": replica_set["metadata"].get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v != 0 or k in ("replicas", "observedGeneration")}
        refused = self._refused.get(replica_set["metadata"]["uid"])
        if refused is not None:
            before = _condition(list((replica_set.get("status") or {}).get("conditions") or []), "ReplicaFailure")
            since = before["lastTransitionTime"] if before else self.timestamp()
            status["conditions"] = [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                     "message": refused, "lastTransitionTime": since}]
        self._write_status(replica_set, status)

    # -------------------------------------------------------------- kubelet

    def _kubelet(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid not in self._born:
            # A pod first seen already running (put there by a test) is taken as started long ago.
            running = (pod.get("status") or {}).get("phase") == "Running"
            self._born[uid] = self.ticks - self.ready_after if running else self.ticks
        born = self._born[uid]
        age = self.ticks - born
        failure = (meta.get("annotations") or {}).get(FAIL_ANNOTATION)
        containers = (pod.get("spec") or {}).get("containers") or []
        old = pod.get("status") or {}
        status: Obj = {"phase": "Pending", "qosClass": old.get("qosClass", "BestEffort")}
        scheduled = self.timestamp(self._born_time(born))
        conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}]
        if age < self.running_after:
            status["conditions"] = conditions
            self._write_pod_status(pod, status)
            return
        started = self.timestamp(self._born_time(born + self.running_after))
        status["hostIP"] = "192.168.0.10"
        status["podIP"] = self._pod_ip(uid)
        status["podIPs"] = [{"ip": status["podIP"]}]
        status["startTime"] = started
        runs = age - self.running_after  # ticks since the containers first started
        ready = failure is None and age >= self.ready_after
        statuses = [self._container_status(c, failure, runs, ready, started) for c in containers]
        if failure == "imagepull":
            status["phase"] = "Pending"
        else:
            status["phase"] = "Running"
        if ready and uid not in self._ready_since:
            self._ready_since[uid] = self.now
        if not ready:
            self._ready_since.pop(uid, None)
        ready_text = "True" if ready else "False"
        since = self.timestamp(self._ready_since[uid]) if ready else started
        conditions += [
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": ready_text, "lastTransitionTime": since},
            {"type": "Ready", "status": ready_text, "lastTransitionTime": since},
        ]
        if not ready:
            for condition in conditions[-2:]:
                condition["reason"] = "ContainersNotReady"
                names = ", ".join(c["name"] for c in containers)
                condition["message"] = f"containers with unready status: [{names}]"
        status["conditions"] = conditions
        status["containerStatuses"] = statuses
        self._write_pod_status(pod, status)

    def _born_time(self, tick: int) -> float:
        return self.now - (self.ticks - tick) * self.tick_seconds

    def _container_status(self, container: Obj, failure: str | None, runs: int, ready: bool, started: str) -> Obj:
        image = str(container.get("image", ""))
        status: Obj = {
            "name": container.get("name", "app"),
            "image": image,
            "imageID": "" if failure == "imagepull" else f"docker-pullable://{image}@sha256:{'0' * 64}",
            "ready": ready,
            "restartCount": 0,
            "started": False,
            "state": {},
        }
        if failure == "imagepull":
            reason = "ErrImagePull" if runs % 2 == 0 else "ImagePullBackOff"
            message = (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
                if reason == "ErrImagePull"
                else f'Back-off pulling image "{image}"'
            )
            status["state"] = {"waiting": {"reason": reason, "message": message}}
        elif failure in ("crashloop", "oom"):
            restarts = runs + 1
            status["restartCount"] = restarts
            terminated: Obj = {
                "exitCode": 137 if failure == "oom" else 1,
                "reason": "OOMKilled" if failure == "oom" else "Error",
                "startedAt": started,
                "finishedAt": self.timestamp(),
                "containerID": f"containerd://{'c' * 64}",
            }
            status["lastState"] = {"terminated": terminated}
            status["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off restarting failed container {status['name']}",
                }
            }
        else:
            status["started"] = True
            status["containerID"] = f"containerd://{'a' * 64}"
            status["state"] = {"running": {"startedAt": started}}
        return status

    def _write_pod_status(self, pod: Obj, status: Obj) -> None:
        self._write_status(pod, status)

    # -------------------------------------------------------------- endpoints

    def _endpoints(self, service: Obj) -> None:
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            return
        meta = service["metadata"]
        namespace = meta["namespace"]
        pods = [
            p
            for p in self._all("v1", "Pod", namespace)
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            and (p.get("status") or {}).get("podIP")
        ]
        pods.sort(key=lambda p: p["metadata"]["name"])

        def address(pod: Obj) -> Obj:
            return {
                "ip": pod["status"]["podIP"],
                "targetRef": {
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "namespace": namespace,
                    "uid": pod["metadata"]["uid"],
                },
            }

        ready = [address(p) for p in pods if pod_ready(p)]
        not_ready = [address(p) for p in pods if not pod_ready(p)]
        ports = []
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):
                target = self._named_port(pods, target) or port.get("port")
            entry: Obj = {"port": int(target), "protocol": port.get("protocol", "TCP")}
            if port.get("name"):
                entry["name"] = port["name"]
            ports.append(entry)
        subsets: list[Obj] = []
        if ready or not_ready:
            subset: Obj = {"ports": ports}
            if ready:
                subset["addresses"] = ready
            if not_ready:
                subset["notReadyAddresses"] = not_ready
            subsets.append(subset)
        desired: Obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": meta["name"], "namespace": namespace, "labels": dict(meta.get("labels") or {})},
        }
        if not desired["metadata"]["labels"]:
            del desired["metadata"]["labels"]
        if subsets:
            desired["subsets"] = subsets
        current = self.emulator.read("v1", "Endpoints", meta["name"], namespace)
        if (
            current is not None
            and current.get("subsets") == desired.get("subsets")
            and current["metadata"].get("labels") == desired["metadata"].get("labels")
        ):
            return
        self.emulator.write(desired)  # creates, or replaces the whole object as the controller does

    @staticmethod
    def _named_port(pods: list[Obj], name: str) -> int | None:
        for pod in pods:
            for container in (pod.get("spec") or {}).get("containers") or []:
                for port in container.get("ports") or []:
                    if port.get("name") == name:
                        return int(port["containerPort"])
        return None

    # -------------------------------------------------------------- Gateway API and Istio

    def _http_route(self, route: Obj) -> None:
        meta = route["metadata"]
        namespace = meta["namespace"]
        generation = int(meta.get("generation", 1))
        missing = []
        for rule in (route.get("spec") or {}).get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
                    continue
                ns = ref.get("namespace", namespace)
                if self.emulator.read("v1", "Service", ref["name"], ns) is None:
                    missing.append(ref["name"])
        old_parents = {
            json.dumps(p.get("parentRef"), sort_keys=True): p for p in (route.get("status") or {}).get("parents") or []
        }
        parents = []
        for parent_ref in (route.get("spec") or {}).get("parentRefs") or []:
            key = json.dumps(parent_ref, sort_keys=True)
            old_conditions = {c["type"]: c for c in (old_parents.get(key) or {}).get("conditions") or []}

            def condition(
                kind: str, status: str, reason: str, message: str, old_conditions: dict[str, Obj] = old_conditions
            ) -> Obj:
                before = old_conditions.get(kind)
                same = before is not None and before.get("status") == status
                return {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": generation,
                    "lastTransitionTime": before["lastTransitionTime"] if same and before else self.timestamp(),
                }

            accepted = self._gateway_verdict(route, parent_ref)
            if missing:
                resolved = condition(
                    "ResolvedRefs",
                    "False",
                    "BackendNotFound",
                    f"backend Services not found: {', '.join(sorted(set(missing)))}",
                )
            else:
                resolved = condition("ResolvedRefs", "True", "ResolvedRefs", "All references resolved")
            parents.append(
                {
                    "parentRef": copy.deepcopy(parent_ref),
                    "controllerName": CONTROLLER_NAME,
                    "conditions": [condition("Accepted", *accepted), resolved],
                }
            )
        self._write_status(route, {"parents": parents})

    def _gateway_verdict(self, route: Obj, parent_ref: Obj) -> tuple[str, str, str]:
        """(status, reason, message) of the Accepted condition for one parentRef, decided as a
        Gateway controller does from the Gateway's listeners (reasons: Gateway API's
        apis/v1/shared_types.go): the Gateway must exist (else NoMatchingParent), a listener must
        match sectionName and port (NoMatchingParent), allow the route's namespace and kind
        (`allowedRoutes`, default `from: Same`; else NotAllowedByListeners), and share a hostname
        with the route when both name some (NoMatchingListenerHostname)."""
        if parent_ref.get("kind", "Gateway") != "Gateway":
            return "True", "Accepted", "Route is accepted"
        route_ns = route["metadata"]["namespace"]
        gateway_ns = parent_ref.get("namespace") or route_ns
        gateway = self.emulator.read("gateway.networking.k8s.io/v1", "Gateway", parent_ref["name"], gateway_ns)
        if gateway is None:
            return "False", "NoMatchingParent", f"Gateway {gateway_ns}/{parent_ref['name']} not found"
        listeners = [
            listener for listener in (gateway.get("spec") or {}).get("listeners") or []
            if parent_ref.get("sectionName") in (None, listener.get("name"))
            and parent_ref.get("port") in (None, listener.get("port"))
        ]
        if not listeners:
            return "False", "NoMatchingParent", "no listener matches the parentRef's sectionName and port"
        namespace_obj = self.emulator.read("v1", "Namespace", route_ns, None) or {}
        namespace_labels = (namespace_obj.get("metadata") or {}).get("labels") or {}

        def allows(listener: Obj) -> bool:
            allowed = listener.get("allowedRoutes") or {}
            namespaces = allowed.get("namespaces") or {}
            source = namespaces.get("from", "Same")
            if source == "Same" and route_ns != gateway_ns:
                return False
            if source == "Selector" and not selector_matches(namespaces.get("selector") or {}, namespace_labels):
                return False
            kinds = allowed.get("kinds")
            return not kinds or any(k.get("kind") == "HTTPRoute"
                                    and k.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io"
                                    for k in kinds)

        admitting = [listener for listener in listeners if allows(listener)]
        if not admitting:
            return "False", "NotAllowedByListeners", "no listener allows routes from this namespace and of this kind"
        hostnames = (route.get("spec") or {}).get("hostnames") or []

        def intersects(listener: Obj) -> bool:
            wanted = listener.get("hostname")
            if not wanted or not hostnames:
                return True
            return any(_hostnames_meet(wanted, h) for h in hostnames)

        if not any(intersects(listener) for listener in admitting):
            return "False", "NoMatchingListenerHostname", "no listener hostname matches the route's hostnames"
        return "True", "Accepted", "Route is accepted"

    def _observed(self, obj: Obj) -> None:
        generation = obj["metadata"].get("generation", 1)
        status = copy.deepcopy(obj.get("status") or {})
        status["observedGeneration"] = generation
        self._write_status(obj, status)
