"""Routers for a Kubernetes cluster, chosen per environment with `router:` (`traffic_router:`).

- `gateway-api` (`GatewayApiRouter`): an HTTPRoute `<service>` attached to the environment's
  Gateway, whose two backendRefs are the Services `<service>` (stable) and `<service>-canary`,
  each selecting one version's pods; the weights are the backendRefs' weights. The route's
  hostnames and safeship's rule's matches come from the `gateway:` block; once the route exists,
  only safeship's rule (the one whose backends are those two Services) changes, with its filters
  and every other rule left as they are (a patch guarded by the route's resourceVersion).
- `istio` (`IstioRouter`): the same two Services, weighed by a VirtualService `<service>` whose
  `gateways` are the environment's `istio.gateways` (the mesh's sidecars by default; name the
  ingress gateways too so that traffic from outside follows the weights) and whose `hosts` are
  `<service>` plus `istio.hosts`. As each Service selects one version, a client outside the mesh
  reaches the stable version only, never a split by pod count.
- `replicas` (`ReplicasRouter`): no traffic router at all. A split between versions becomes
  replica counts of the versions' Deployments (`<service>` then selects every version's pods, so
  traffic follows the ready pods): both versions are scaled, up and down, to the pod ratio nearest
  the weights with the service's replicas to one pod more in all (`replica_counts`; 2 replicas:
  5% -> 1 of 3 pods, 50% -> 1 of 2, 75% -> 2 of 3), and the weight actually reached, the ready
  pods' ratio, is reported (`weights_reached`), logged, and what the engine judges and paces by.
  A single version at 100% is a switch of `<service>`'s selector to that version only: the
  blue-green switch, instant, onto pods that are ready, with the other colour kept warm for a
  switch back.

Common to all three:
- Abilities: no `hold` (a cluster has no queue for the recreate gap) and no `listens` (the
  cluster's Services, Gateway or mesh take the traffic; `ensure_route` returns None).
- `set_weights` applies the weights and returns only once the cluster shows them (waiting in real
  time: a cluster's controllers report on their own clock, not the engine's): the HTTPRoute's
  parents report Accepted and ResolvedRefs True with observedGeneration >= metadata.generation
  (Accepted False is a PermanentError; ResolvedRefs False, a backend Service the controller has
  not seen yet, is waited out); the VirtualService's status.observedGeneration reaches its
  generation when its status carries one; for replicas,
  every weighted version has the ready pods its share asks for. A wait that runs out
  (`wait_s`) is a `TemporaryError`, which the engine retries within its error budget.
- `set_backends` keeps the Services' selectors right. Services select pods by labels, and a pod
  receives traffic only once it is ready, so backends are never listed one by one: the call makes
  sure the Services exist and that a version with ready pods has a Service that selects it.
- `counters` returns no traffic: these routers do not measure; the environment's traffic source
  (`prometheus`) does.
- `<service>-preview` follows the second version (the new colour of a blue-green deployment, the
  canary of a canary), for whoever wants to reach it before it takes traffic.

API calls made here (all through `safeship.kube.client.KubeClient`): GET, POST and PATCH (JSON
merge patch) of v1 Services, gateway.networking.k8s.io/v1 HTTPRoutes and networking.istio.io/v1
VirtualServices; GET and PATCH (merge patch of spec.replicas, up and down) of apps/v1 Deployments;
LIST of v1 Pods by label; DELETE of HTTPRoutes, VirtualServices and DestinationRules (the latter
left by earlier versions of the istio router; `remove_route`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from safeship.clock import Clock, RealClock
from safeship.config.models import Environment, SafeshipConfig
from safeship.errors import InputError, PermanentError, TemporaryError
from safeship.kube import objects
from safeship.kube.client import RETRY_ON_CONFLICT, Conflict
from safeship.routing.base import (
    Backend,
    RouteKey,
    Router,
    RouterAbilities,
    RouterSetup,
    RoutesSnapshot,
    TrafficCounters,
    not_supported,
)

if TYPE_CHECKING:
    from safeship.kube.client import KubeClient

log = logging.getLogger(__name__)

WAIT_S = 30.0  # the longest set_weights waits for the cluster to show the weights
POLL_S = 0.5  # how often it looks while it waits
Obj = dict[str, Any]


def _weights(weights: Mapping[str, int]) -> dict[str, int]:
    """The weights as ints, checked: each 0..100, summing to 100."""
    split: dict[str, int] = {}
    for version, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise InputError(f"weights: the weight of {version!r} must be an integer in 0..100, got {weight!r}")
        split[str(version)] = weight
    if sum(split.values()) != 100:
        raise InputError(f"weights: must sum to 100, got {sum(split.values())} in {split}")
    return split


class ClusterRouter:
    """What the three cluster routers share: setup, the client, Services, the bounded wait."""

    abilities: RouterAbilities = RouterAbilities(hold=False, listens=False)
    name = "cluster"
    # One router object per environment (its cluster context and namespace): the controller builds
    # one from each environment's `RouterSetup.environment`.
    per_environment: ClassVar[bool] = True

    @classmethod
    def create(cls, setup: RouterSetup) -> Router:
        if setup.config is None or setup.environment is None:
            raise InputError(f"the {cls.name} router serves one environment's cluster: its setup must carry "
                             "the config and the environment")
        # Not setup.clock: a cluster reports in real time, whatever clock the engine runs on.
        return cls(setup.config, setup.environment)

    def __init__(self, config: SafeshipConfig, environment: Environment, *, clock: Clock | None = None,
                 client: KubeClient | None = None, wait_s: float = WAIT_S, poll_s: float = POLL_S,
                 owner: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.owner = dict(owner) if owner is not None else None  # ownerReference of the objects made here
        self.environment = environment
        self.namespace = environment.kube_namespace
        self.clock: Clock = clock if clock is not None else RealClock()
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._client = client
        self._own_client = client is None
        self._reached: dict[RouteKey, dict[str, int]] = {}

    async def kube(self) -> KubeClient:
        if self._client is None:
            from safeship.kube.client import KubeClient

            self._client = KubeClient.for_environment(self.environment)
        return self._client

    def _check(self, route: RouteKey) -> None:
        if route.environment != self.environment.name:
            raise InputError(f"environment: this {self.name} router serves {self.environment.name!r}, "
                             f"not {route.environment!r}")
        if route.service not in self.config.services:
            raise InputError(f"service: {route.service!r} is not configured")

    # ------------------------------------------------------------ Router protocol, shared parts

    async def open(self) -> None:
        await self.kube()

    async def ensure_route(self, route: RouteKey, *, port: int | None = None, host: str = "127.0.0.1") -> int | None:
        """Routes live in the cluster's objects, made when the first weights or backends come."""
        self._check(route)
        return None

    async def remove_route(self, route: RouteKey) -> None:
        """Delete the route's router objects (not the Services: pods may still be reached there)."""
        self._check(route)
        kube = await self.kube()
        for api_version, kind in self._route_kinds():
            await kube.delete(api_version, kind, route.service, self.namespace)
        self._reached.pop(route, None)

    def _route_kinds(self) -> Sequence[tuple[str, str]]:
        return ()

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        raise NotImplementedError

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        raise NotImplementedError

    async def hold(self, route: RouteKey, max_wait: float) -> None:
        raise not_supported(self, "hold new requests (a cluster has no queue for the recreate gap)")

    async def counters(self, route: RouteKey) -> Mapping[str, TrafficCounters]:
        """No traffic: these routers do not measure (the traffic source does)."""
        return {}

    async def routes_snapshot(self) -> RoutesSnapshot:
        return RoutesSnapshot()

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.close()
            self._client = None

    def weights_reached(self, route: RouteKey) -> dict[str, int]:
        """The weights the cluster showed at the last `set_weights` of `route` ({} before any)."""
        return dict(self._reached.get(route, {}))

    # ------------------------------------------------------------ Services

    async def _service(self, name: str) -> Obj | None:
        kube = await self.kube()
        return await kube.get("v1", "Service", name, self.namespace)

    async def _put_service(self, route: RouteKey, name: str, version: str | None,
                           current: Mapping[str, Any] | None = None, *, known: bool = False) -> None:
        """Make Service `name` select `version`'s pods (every version's, for None). `current` is
        the Service as read (`known`: it was read, and None means absent)."""
        kube = await self.kube()
        if not known:
            current = await self._service(name)
        desired = objects.service_object(self.config, self.environment, route.service, name, version,
                                         owner=self.owner)
        if current is None:
            await kube.create(desired)
            return
        selected = dict((current.get("spec") or {}).get("selector") or {})
        wanted = desired["spec"]["selector"]
        if selected == wanted and objects.object_version(current) == version:
            return
        # A merge patch merges maps: keys the selector must lose are sent as null.
        patch_selector: dict[str, Any] = {key: None for key in selected if key not in wanted}
        patch_selector.update(wanted)
        annotations: dict[str, Any] = {objects.VERSION_ANNOTATION: version}
        await kube.patch("v1", "Service", name,
                         {"metadata": {"labels": desired["metadata"]["labels"], "annotations": annotations},
                          "spec": {"selector": patch_selector}}, self.namespace)

    async def _ready_pods(self, service: str) -> dict[str, int]:
        """Ready pods per version of `service`."""
        kube = await self.kube()
        pods = await kube.list("v1", "Pod", self.namespace, labels=objects.selector(service))
        ready: dict[str, int] = {}
        for pod in pods:
            version = objects.object_version(pod)
            if version is not None and objects.pod_ready(pod):
                ready[version] = ready.get(version, 0) + 1
        return ready

    async def _ready(self, route: RouteKey, counts: Mapping[str, int], *, exact: bool = False) -> dict[str, int]:
        """Wait until every version in `counts` has at least (`exact`: exactly) that many ready pods."""

        async def check() -> tuple[dict[str, int] | None, str]:
            ready = await self._ready_pods(route.service)
            seen = ", ".join(f"{v}: {ready.get(v, 0)} of {n} ready" for v, n in counts.items())
            done = all((ready.get(v, 0) == n) if exact else (ready.get(v, 0) >= n) for v, n in counts.items())
            return (ready if done else None), seen

        result: dict[str, int] = await self._wait(f"ready pods for {dict(counts)}", check)
        return result

    async def _wait(self, what: str, check: Any) -> Any:
        """Call `check()` until it returns something other than None, for at most `wait_s`; then a
        TemporaryError naming `what` and the last thing seen."""
        deadline = self.clock.now() + self.wait_s  # a real clock unless a test gives one
        last: str = ""
        while True:
            result, seen = await check()
            if result is not None:
                return result
            last = seen
            if self.clock.now() >= deadline:
                raise TemporaryError(f"{self.name} router: {what} not shown after {self.wait_s:g}s"
                                     + (f" ({last})" if last else ""), delay=self.poll_s * 4)
            await self.clock.sleep(self.poll_s)


# ---------------------------------------------------------------- gateway-api


class TwoServiceRouter(ClusterRouter):
    """What gateway-api and istio share: `<service>` (stable) and `<service>-canary` each select
    one version's pods, and a routing object weighs the two Services. A client that does not go
    through that object (no sidecar, no gateway) reaches the stable version only."""

    def __init__(self, config: SafeshipConfig, environment: Environment, **kwargs: Any) -> None:
        super().__init__(config, environment, **kwargs)
        self._served: dict[RouteKey, set[str]] = {}  # versions that had traffic through this router

    async def _route_weights(self, service: str) -> dict[str, int]:
        """The routing object's weight per Service name, as stored ({} when there is none)."""
        raise NotImplementedError

    async def _apply_weights(self, route: RouteKey, stable_weight: int, canary_weight: int) -> None:
        """Write the two Services' weights and wait until the cluster shows them."""
        raise NotImplementedError

    async def _slots(self, service: str) -> tuple[Obj | None, Obj | None]:
        stable = await self._service(objects.stable_service_name(service))
        canary = await self._service(objects.canary_service_name(service))
        return stable, canary

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        """Make sure a version with ready pods has a Service: the stable one when there is none
        yet, else the canary (and preview) Service, unless that one carries another version's
        traffic or this version already had traffic here (the old colour after a blue-green switch
        stays off the preview Service)."""
        self._check(route)
        if not backends:
            return
        service = route.service
        stable, canary = await self._slots(service)
        if stable is None:
            await self._put_service(route, objects.stable_service_name(service), version, None, known=True)
            return
        if version in (objects.object_version(stable), objects.object_version(canary or {})):
            return
        if version in self._served.get(route, set()):
            return  # a version that had traffic here (the old colour after a switch) is not the new one
        if canary is not None and (await self._route_weights(service)).get(objects.canary_service_name(service), 0):
            return  # the canary Service serves another version's share: the next weights decide
        await self._put_service(route, objects.canary_service_name(service), version, canary, known=True)
        await self._put_service(route, objects.preview_service_name(service), version)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        self._check(route)
        split = _weights(weights)
        positive = sorted((v for v, w in split.items() if w > 0), key=lambda v: (-split[v], v))
        if len(positive) > 2:
            raise PermanentError(f"gateway-api router: an HTTPRoute splits between two Services, "
                                 f"not {len(positive)} versions ({split})")
        service = route.service
        stable, canary = await self._slots(service)
        on_stable = objects.object_version(stable) if stable is not None else None
        on_canary = objects.object_version(canary) if canary is not None else None
        if len(positive) == 1:
            # All traffic on one version: the stable Service selects it (a switch, onto ready pods).
            new_stable, new_canary = positive[0], on_canary or positive[0]
        else:
            first, second = positive
            if on_stable in positive:
                new_stable = on_stable
                new_canary = second if on_stable == first else first
            elif on_canary in positive:
                new_canary = on_canary
                new_stable = second if on_canary == first else first
            else:
                new_stable, new_canary = first, second
        stable_name, canary_name = objects.stable_service_name(service), objects.canary_service_name(service)
        if len(positive) == 1 and new_stable != on_stable:
            await self._ready(route, {new_stable: 1})  # a switch goes only onto ready pods
        if new_stable != on_stable or stable is None:
            await self._put_service(route, stable_name, new_stable, stable, known=True)
        if new_canary != on_canary or canary is None:
            await self._put_service(route, canary_name, new_canary, canary, known=True)
        stable_weight = split.get(new_stable, 0) if len(positive) == 2 else 100
        canary_weight = 100 - stable_weight
        await self._apply_weights(route, stable_weight, canary_weight)
        self._reached[route] = {v: w for v, w in split.items()}
        self._served.setdefault(route, set()).update(positive)
        log.info("%s %s: %s=%d%% (%s), %s=%d%% (%s)", self.name, route, stable_name, stable_weight, new_stable,
                 canary_name, canary_weight, new_canary)


class GatewayApiRouter(TwoServiceRouter):
    """Gateway API: an HTTPRoute splitting between the stable and the canary Service."""

    name = "gateway-api"

    def __init__(self, config: SafeshipConfig, environment: Environment, **kwargs: Any) -> None:
        super().__init__(config, environment, **kwargs)
        if environment.gateway is None:
            raise InputError(f"environment {environment.name!r}: router gateway-api needs a gateway: block naming "
                             "the Gateway to attach to")

    def _route_kinds(self) -> Sequence[tuple[str, str]]:
        return ((objects.HTTPROUTE_API, "HTTPRoute"),)

    async def _route_weights(self, service: str) -> dict[str, int]:
        """The HTTPRoute's weight per Service name, as stored ({} when there is no route)."""
        kube = await self.kube()
        current = await kube.get(objects.HTTPROUTE_API, "HTTPRoute", service, self.namespace)
        refs: dict[str, int] = {}
        for rule in ((current or {}).get("spec") or {}).get("rules") or []:
            if not objects.is_own_rule(rule, service):
                continue
            for ref in rule.get("backendRefs") or []:
                refs[str(ref.get("name"))] = int(ref.get("weight", 1))
        return refs

    async def _apply_weights(self, route: RouteKey, stable_weight: int, canary_weight: int) -> None:
        service = route.service
        desired = objects.http_route(self.config, self.environment, service, stable_weight=stable_weight,
                                     canary_weight=canary_weight, owner=self.owner)
        kube = await self.kube()
        for attempt in range(1, RETRY_ON_CONFLICT + 1):
            current_route = await kube.get(objects.HTTPROUTE_API, "HTTPRoute", service, self.namespace)
            if current_route is None:
                applied = await kube.create(desired)
                break
            # Only safeship's rule changes: rules and filters added by hand stay. The resourceVersion
            # makes a concurrent edit (by hand, or the gateway writing the route's status) a
            # conflict: the route is read again and merged again, never overwritten.
            spec = current_route.get("spec") or {}
            patch_spec: Obj = {"parentRefs": desired["spec"]["parentRefs"],
                               "rules": objects.merged_rules(spec.get("rules") or [], desired["spec"]["rules"][0],
                                                             service)}
            if "hostnames" in desired["spec"]:
                patch_spec["hostnames"] = desired["spec"]["hostnames"]
            meta = current_route.get("metadata") or {}
            try:
                applied = await kube.patch(objects.HTTPROUTE_API, "HTTPRoute", service,
                                           {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                                         "labels": desired["metadata"]["labels"]},
                                            "spec": patch_spec}, self.namespace)
                break
            except Conflict:
                if attempt == RETRY_ON_CONFLICT:
                    raise
        generation = int((applied.get("metadata") or {}).get("generation") or 0)

        async def accepted() -> tuple[bool | None, str]:
            current = await kube.get(objects.HTTPROUTE_API, "HTTPRoute", service, self.namespace)
            if current is None:
                return None, "the HTTPRoute is gone"
            at = max(generation, int((current.get("metadata") or {}).get("generation") or 0))
            parents = ((current.get("status") or {}).get("parents")) or []
            seen = "no parent has reported on it"
            for parent in parents:
                conditions = {c.get("type"): c for c in parent.get("conditions") or [] if isinstance(c, Mapping)}
                accepted_now, resolved = conditions.get("Accepted"), conditions.get("ResolvedRefs")
                if accepted_now is None:
                    continue
                observed = int(accepted_now.get("observedGeneration") or 0)
                seen = (f"Accepted={accepted_now.get('status')} ({accepted_now.get('reason', '')}) "
                        f"at generation {observed} of {at}")
                if observed >= at and accepted_now.get("status") == "False":
                    raise PermanentError(f"gateway-api router: the Gateway refused HTTPRoute {service}: "
                                         f"{accepted_now.get('reason', '')}: {accepted_now.get('message', '')}")
                if observed < at or accepted_now.get("status") != "True":
                    continue
                if resolved is None or int(resolved.get("observedGeneration") or 0) < at:
                    seen += ", ResolvedRefs not reported yet"
                    continue
                if resolved.get("status") != "True":
                    seen += (f", ResolvedRefs={resolved.get('status')} ({resolved.get('reason', '')}: "
                             f"{resolved.get('message', '')})")
                    continue
                return True, seen
            return None, seen

        await self._wait(f"HTTPRoute {service} weights {stable_weight}/{canary_weight}", accepted)


# ---------------------------------------------------------------- istio


class IstioRouter(TwoServiceRouter):
    """Istio: a VirtualService weighing `<service>` and `<service>-canary`, for the mesh and the
    gateways the environment's `istio.gateways` names."""

    name = "istio"

    def _route_kinds(self) -> Sequence[tuple[str, str]]:
        # DestinationRule: what earlier versions of this router kept a subset per version in
        return ((objects.ISTIO_API, "VirtualService"), (objects.ISTIO_API, "DestinationRule"))

    async def _route_weights(self, service: str) -> dict[str, int]:
        """The VirtualService's weight per Service host, as stored ({} when there is none)."""
        kube = await self.kube()
        current = await kube.get(objects.ISTIO_API, "VirtualService", service, self.namespace)
        weights: dict[str, int] = {}
        for http in ((current or {}).get("spec") or {}).get("http") or []:
            if http.get("name") != objects.ISTIO_ROUTE_NAME:
                continue
            for destination in http.get("route") or []:
                host = str((destination.get("destination") or {}).get("host"))
                weights[host] = int(destination.get("weight", 0))
        return weights

    async def _apply_weights(self, route: RouteKey, stable_weight: int, canary_weight: int) -> None:
        kube = await self.kube()
        desired = objects.virtual_service(self.config, self.environment, route.service,
                                          stable_weight=stable_weight, canary_weight=canary_weight,
                                          owner=self.owner)
        applied = await kube.apply(desired)
        generation = int((applied.get("metadata") or {}).get("generation") or 0)

        async def observed() -> tuple[bool | None, str]:
            current = await kube.get(objects.ISTIO_API, "VirtualService", route.service, self.namespace)
            if current is None:
                return None, "the VirtualService is gone"
            status = current.get("status") or {}
            if "observedGeneration" not in status:
                return True, "no status kept"  # Istio's status reporting is off (its default): nothing to wait for
            at = max(generation, int((current.get("metadata") or {}).get("generation") or 0))
            seen = int(status.get("observedGeneration") or 0)
            return (True if seen >= at else None), f"observedGeneration {seen} of {at}"

        await self._wait(f"VirtualService {route.service} weights {stable_weight}/{canary_weight}", observed)


# ---------------------------------------------------------------- replicas


EXTRA_PODS = 1  # how many pods above the service's replicas a split may run in all


def replica_counts(total: int, split: Mapping[str, int], extra: int = EXTRA_PODS) -> dict[str, int]:
    """Replicas per weighted version for a split: the counts whose pod ratio is nearest the
    weights, each weighted version with at least one pod, between `total` and `total + extra`
    pods in all (fewer pods first when two are as near). One version at 100%: `total` pods.

    Two versions are searched exhaustively (the nearest ratio there is); more are apportioned by
    largest remainder at each size."""
    weighted = {v: w for v, w in split.items() if w > 0}
    if len(weighted) == 1:
        return {next(iter(weighted)): total}
    names = sorted(weighted, key=lambda v: (-weighted[v], v))
    best: tuple[float, int, dict[str, int]] | None = None
    for size in range(max(total, len(names)), max(total, len(names)) + extra + 1):
        for counts in _candidates(names, weighted, size):
            error = max(abs(100 * counts[v] / size - weighted[v]) for v in names)
            if best is None or error < best[0] - 1e-9:
                best = (error, size, counts)
    assert best is not None
    return {v: best[2][v] for v in weighted}


def _candidates(names: Sequence[str], weights: Mapping[str, int], size: int) -> list[dict[str, int]]:
    if len(names) == 2:
        first, second = names
        return [{first: size - count, second: count} for count in range(1, size)]
    shares = {v: size * weights[v] / 100 for v in names}
    counts = {v: max(1, math.floor(shares[v])) for v in names}
    for v in sorted(names, key=lambda v: shares[v] - math.floor(shares[v]), reverse=True):
        if sum(counts.values()) >= size:
            break
        counts[v] += 1
    return [counts] if sum(counts.values()) == size else []


def ratio(counts: Mapping[str, int], versions: Sequence[str]) -> dict[str, int]:
    """The percent of the pods each version runs, whole numbers summing to 100 (largest remainder)."""
    total = sum(counts.values())
    if not total:
        return {v: 0 for v in versions}
    exact = {v: 100 * counts.get(v, 0) / total for v in versions}
    whole = {v: math.floor(x) for v, x in exact.items()}
    for v in sorted(versions, key=lambda v: exact[v] - whole[v], reverse=True)[: 100 - sum(whole.values())]:
        whole[v] += 1
    return whole


class ReplicasRouter(ClusterRouter):
    """No traffic router: weights become replica ratios; the weight reached is reported."""

    name = "replicas"

    async def set_backends(self, route: RouteKey, version: str, backends: Sequence[Backend]) -> None:
        """`<service>` exists (selecting the first version that has ready pods); a second version
        with ready pods is reachable at `<service>-preview` while `<service>` selects one version."""
        self._check(route)
        if not backends:
            return
        name = objects.stable_service_name(route.service)
        current = await self._service(name)
        if current is None:
            await self._put_service(route, name, version, None, known=True)
            return
        selected = ((current.get("spec") or {}).get("selector") or {}).get(objects.VERSION_LABEL)
        if selected is not None and objects.object_version(current) != version:
            await self._put_service(route, objects.preview_service_name(route.service), version)

    async def set_weights(self, route: RouteKey, weights: Mapping[str, int]) -> None:
        """A split: `<service>` selects every version's pods, and each weighted version's
        Deployment is scaled, up or down, to the count of `replica_counts` (the pod ratio nearest
        the weights, with the service's replicas to one more pod in all); the call waits until
        each has exactly that many ready pods, and the ratio of ready pods is the weight reached
        (`weights_reached`). Scaling up comes before scaling down, so the service never has fewer
        ready pods than before. One version at 100%: it gets at least the service's replicas, and
        `<service>` switches to it once it has a ready pod (the other is left as it is: warm for a
        switch back; the plan's own scale steps retire it)."""
        self._check(route)
        split = _weights(weights)
        service = route.service
        positive = [v for v, w in split.items() if w > 0]
        name = objects.stable_service_name(service)
        current = {v: await self._deployment(service, v) for v in positive}
        total = self.config.services[service].replicas
        if len(positive) == 1:
            only = positive[0]
            await self._scale_up(service, only, current[only], total)
            await self._ready(route, {only: 1})
            await self._put_service(route, name, only)
            self._reached[route] = {v: (100 if v == only else 0) for v in split}
            log.info("replicas %s: %s takes all traffic", route, only)
            return
        counts = replica_counts(total, split)
        for version, count in counts.items():
            await self._scale_up(service, version, current[version], count)
        await self._put_service(route, name, None)
        await self._ready(route, {v: n for v, n in counts.items() if n > _replicas(current[v])})
        kube = await self.kube()
        for version, count in counts.items():
            if count < _replicas(current[version]):
                await kube.patch("apps/v1", "Deployment", objects.deployment_name(service, version),
                                 {"spec": {"replicas": count}}, self.namespace)
        ready = await self._ready(route, counts, exact=True)
        reached = ratio({v: ready.get(v, 0) for v in counts}, list(split))
        self._reached[route] = reached
        log.info("replicas %s: asked %s, reached %s with ready pods %s", route, split, reached,
                 {v: ready.get(v, 0) for v in counts})

    async def _deployment(self, service: str, version: str) -> Obj:
        kube = await self.kube()
        name = objects.deployment_name(service, version)
        found = await kube.get("apps/v1", "Deployment", name, self.namespace)
        if found is None:
            raise PermanentError(f"replicas router: {version} of {service} has no Deployment ({name}) to scale")
        return found

    async def _scale_up(self, service: str, version: str, current: Mapping[str, Any], replicas: int) -> None:
        if _replicas(current) >= replicas:
            return
        kube = await self.kube()
        await kube.patch("apps/v1", "Deployment", objects.deployment_name(service, version),
                         {"spec": {"replicas": replicas}}, self.namespace)


def _replicas(deployment: Mapping[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("replicas") or 0)
