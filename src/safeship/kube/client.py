"""The one Kubernetes API client safeship uses: a thin async wrapper over `lightkube.AsyncClient`
that works on plain dicts, so built-in kinds and custom resources (Gateway API `HTTPRoute`, Istio
`VirtualService` and `DestinationRule`) go through the same calls.

    async with KubeClient.for_environment(environment) as kube:
        obj = await kube.get("apps/v1", "Deployment", "web")            # dict, or None when absent
        objs = await kube.list("v1", "Pod", labels={"app": "web"})      # list of dicts
        await kube.create(obj)                                          # POST, the stored object
        await kube.apply(obj)                                           # create, else merge patch
        await kube.patch("apps/v1", "Deployment", "web", {"spec": {"replicas": 3}})
        await kube.patch_status("apps/v1", "Deployment", "web", {"status": {...}})
        await kube.delete("apps/v1", "Deployment", "web")               # absent: a no-op
        allowed = await kube.can_i("create", "deployments", group="apps")
        allowed = await kube.can_i("patch", "services", user="system:serviceaccount:prod:safeship-deployer")

Every API call safeship makes is in this module, so the set is easy to list:

    verb    path                                                    body
    GET     .../{resource}/{name}                                   -
    GET     .../{resource}?labelSelector=...                         -
    GET     .../{resource}?watch=true&allowWatchBookmarks=true&resourceVersion=...  (`watch`)
    POST    .../{resource}                                          the object (application/json)
    PATCH   .../{resource}/{name}                                   application/merge-patch+json
    PATCH   .../{resource}/{name}/status                            application/merge-patch+json
    DELETE  .../{resource}/{name}?propagationPolicy=Background      -
    POST    /apis/authorization.k8s.io/v1/selfsubjectaccessreviews  SelfSubjectAccessReview
    POST    /apis/authorization.k8s.io/v1/subjectaccessreviews      SubjectAccessReview

POST and PATCH carry `fieldManager=safeship`. Only JSON merge patches (RFC 7386) are sent: `null`
deletes a key and a list is replaced whole, which is simple and well defined for built-in kinds
and custom resources alike. `apply` creates the object and, when it exists, merge-patches it with
the desired object; the server keeps the fields the desired object does not name (status,
defaults, other owners' labels).

The resource (plural) and scope of a kind come from `KINDS`; a kind not listed there is taken as
namespaced with the plural Kubernetes itself would guess (`register_kind` adds one).

Errors are translated here and nothing else escapes: 409, 429, 5xx and connection failures are a
`TemporaryError` whose delay is the server's Retry-After when it sends one; 403, 404 of a
namespace, 422 and any other 4xx are a `PermanentError` carrying the server's Status message. An
object that is not there is `None` for `get` and a no-op for `delete`; for `patch` it is permanent.
A kubeconfig that cannot be read, or a context it does not hold, is a `PermanentError` too; an
object without apiVersion, kind or name, or an empty name, is an `InputError` before any call.

`lightkube` is imported inside functions only: users of the local platform never need it.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from safeship.errors import InputError, PermanentError, TemporaryError

if TYPE_CHECKING:
    import lightkube

    from safeship.config.models import Environment

JsonObj = dict[str, Any]
JsonList = list[JsonObj]

FIELD_MANAGER = "safeship"
MERGE_PATCH = "application/merge-patch+json"
# Delays when the server gives no Retry-After: a conflict clears as soon as the caller re-reads;
# throttling and server errors want a little longer; an unreachable server longer still.
CONFLICT_DELAY = 1.0
THROTTLE_DELAY = 2.0
SERVER_ERROR_DELAY = 2.0
CONNECT_DELAY = 5.0
MAX_DELAY = 300.0
REQUEST_TIMEOUT = 10.0
# Metadata the server sets: left out of the object `apply` tries to create.
_SERVER_SET = frozenset({"resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"})


@dataclass(frozen=True)
class KindInfo:
    """Where a kind lives in the API: its resource (plural) and whether it is namespaced."""

    plural: str
    namespaced: bool = True


# (apiVersion, kind) -> where it is served. Kinds not listed: namespaced, plural guessed.
KINDS: dict[tuple[str, str], KindInfo] = {
    ("v1", "Namespace"): KindInfo("namespaces", namespaced=False),
    ("v1", "Pod"): KindInfo("pods"),
    ("v1", "Service"): KindInfo("services"),
    ("v1", "Endpoints"): KindInfo("endpoints"),
    ("v1", "ConfigMap"): KindInfo("configmaps"),
    ("v1", "Secret"): KindInfo("secrets"),
    ("v1", "ServiceAccount"): KindInfo("serviceaccounts"),
    ("v1", "PersistentVolumeClaim"): KindInfo("persistentvolumeclaims"),
    ("v1", "ResourceQuota"): KindInfo("resourcequotas"),
    ("v1", "LimitRange"): KindInfo("limitranges"),
    ("v1", "Event"): KindInfo("events"),
    ("apps/v1", "Deployment"): KindInfo("deployments"),
    ("apps/v1", "ReplicaSet"): KindInfo("replicasets"),
    ("apps/v1", "StatefulSet"): KindInfo("statefulsets"),
    ("apps/v1", "DaemonSet"): KindInfo("daemonsets"),
    ("discovery.k8s.io/v1", "EndpointSlice"): KindInfo("endpointslices"),
    ("networking.k8s.io/v1", "NetworkPolicy"): KindInfo("networkpolicies"),
    ("networking.k8s.io/v1", "Ingress"): KindInfo("ingresses"),
    ("policy/v1", "PodDisruptionBudget"): KindInfo("poddisruptionbudgets"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): KindInfo("horizontalpodautoscalers"),
    ("rbac.authorization.k8s.io/v1", "Role"): KindInfo("roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): KindInfo("rolebindings"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): KindInfo("clusterroles", namespaced=False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): KindInfo("clusterrolebindings", namespaced=False),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): KindInfo("selfsubjectaccessreviews", namespaced=False),
    ("authorization.k8s.io/v1", "SubjectAccessReview"): KindInfo("subjectaccessreviews", namespaced=False),
    ("apiregistration.k8s.io/v1", "APIService"): KindInfo("apiservices", namespaced=False),
    ("gateway.networking.k8s.io/v1", "Gateway"): KindInfo("gateways"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): KindInfo("httproutes"),
    ("gateway.networking.k8s.io/v1beta1", "HTTPRoute"): KindInfo("httproutes"),
    ("networking.istio.io/v1", "VirtualService"): KindInfo("virtualservices"),
    ("networking.istio.io/v1", "DestinationRule"): KindInfo("destinationrules"),
    ("networking.istio.io/v1beta1", "VirtualService"): KindInfo("virtualservices"),
    ("networking.istio.io/v1beta1", "DestinationRule"): KindInfo("destinationrules"),
}


def register_kind(api_version: str, kind: str, plural: str, *, namespaced: bool = True) -> None:
    """Serve another kind (a custom resource) through the client."""
    KINDS[(api_version, kind)] = KindInfo(plural, namespaced)


def kind_info(api_version: str, kind: str) -> KindInfo:
    """The plural and scope of a kind: from `KINDS`, else Kubernetes' own guess, namespaced."""
    known = KINDS.get((api_version, kind))
    if known is not None:
        return known
    return KindInfo(guess_plural(kind))


def guess_plural(kind: str) -> str:
    """The resource name Kubernetes guesses for a kind (lower case; -s, -es after s, -ies for -y)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


def split_api_version(api_version: str) -> tuple[str, str]:
    """The group and version of an apiVersion: "apps/v1" -> ("apps", "v1"), "v1" -> ("", "v1")."""
    group, _, version = api_version.rpartition("/")
    return group, version


# Resource classes built for lightkube, one per (apiVersion, kind) and scope. They are built here,
# not taken from lightkube's shared registry, so that built-in kinds are plain dicts as well and
# no other user of lightkube in the process is affected.
_RESOURCE_CLASSES: dict[tuple[str, str, str, bool], tuple[type[Any], type[Any]]] = {}


def _resource_classes(api_version: str, kind: str) -> tuple[type[Any], type[Any], KindInfo]:
    """lightkube classes for the object and for its status subresource."""
    from lightkube.core import resource as lkr
    from lightkube.generic_resource import (
        GenericGlobalResource,
        GenericGlobalStatus,
        GenericNamespacedResource,
        GenericNamespacedStatus,
    )

    info = kind_info(api_version, kind)
    key = (api_version, kind, info.plural, info.namespaced)
    cached = _RESOURCE_CLASSES.get(key)
    if cached is None:
        group, version = split_api_version(api_version)
        definition = lkr.ResourceDef(group, version, kind)
        verbs = ["delete", "get", "list", "patch", "post", "put", "watch", "global_list", "global_watch"]
        main_base = GenericNamespacedResource if info.namespaced else GenericGlobalResource
        status_base = GenericNamespacedStatus if info.namespaced else GenericGlobalStatus
        status_cls = type(
            f"{kind}Status",
            (status_base,),
            {
                "_api_info": lkr.ApiInfo(
                    resource=definition,
                    parent=definition,
                    plural=info.plural,
                    verbs=["get", "patch", "put"],
                    action="status",
                )
            },
        )
        main_cls = type(
            kind,
            (main_base,),
            {"_api_info": lkr.ApiInfo(resource=definition, plural=info.plural, verbs=verbs), "Status": status_cls},
        )
        cached = (main_cls, status_cls)
        _RESOURCE_CLASSES[key] = cached
    return cached[0], cached[1], info


def _plain(obj: Any) -> JsonObj:
    """A decoded lightkube object as a plain JSON dict (lightkube's generic objects are dicts)."""
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    result: JsonObj = json.loads(json.dumps(obj))
    return result


def _require_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError(f"Kubernetes {kind}: name must be a non-empty string without '/', got {name!r}")


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str | None]:
    """(apiVersion, kind, name, namespace) of an object, or InputError naming the missing field."""
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    if not isinstance(api_version, str) or not api_version:
        raise InputError(f"Kubernetes object: apiVersion must be a non-empty string, got {api_version!r}")
    if not isinstance(kind, str) or not kind:
        raise InputError(f"Kubernetes object: kind must be a non-empty string, got {kind!r}")
    if not isinstance(metadata, Mapping):
        raise InputError(f"Kubernetes object {kind}: metadata must be a mapping, got {metadata!r}")
    name = metadata.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError(f"Kubernetes object {kind}: metadata.name must be a non-empty string, got {name!r}")
    namespace = metadata.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise InputError(f"Kubernetes object {kind} {name}: metadata.namespace must be a string, got {namespace!r}")
    return api_version, kind, name, namespace or None


# ------------------------------------------------------------------ errors


@dataclass(frozen=True)
class _Failure:
    """What the server said about a failed request."""

    code: int
    reason: str
    message: str
    details_kind: str
    details_name: str
    retry_after: float | None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), bounded."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_DELAY)


def _failure_of(response: Any) -> _Failure:
    """Read the Status the server sent with an error (it may have sent something else)."""
    code = int(response.status_code)
    reason = ""
    message = ""
    details_kind = ""
    details_name = ""
    retry_after = None
    try:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        body = None
    except Exception:  # a streamed response that cannot be read again: the code still says enough
        body = None
    if isinstance(body, Mapping):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
        details = body.get("details")
        if isinstance(details, Mapping):
            details_kind = str(details.get("kind") or "")
            details_name = str(details.get("name") or "")
            delay = details.get("retryAfterSeconds")
            if retry_after is None and isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0:
                retry_after = min(float(delay), MAX_DELAY)
    if not message:
        message = reason or f"HTTP {code}"
    return _Failure(code, reason, message, details_kind, details_name, retry_after)


def _raise_for(what: str, failure: _Failure, exc: BaseException) -> NoReturn:
    code = failure.code
    text = f"Kubernetes API: {what}: {failure.message} (HTTP {code})"
    if code == 409:
        raise Conflict(text, delay=failure.retry_after or CONFLICT_DELAY) from exc
    if code == 429:
        raise TemporaryError(text, delay=failure.retry_after or THROTTLE_DELAY) from exc
    if code >= 500:
        raise TemporaryError(text, delay=failure.retry_after or SERVER_ERROR_DELAY) from exc
    raise PermanentError(text) from exc


def _is_namespace_missing(failure: _Failure, kind: str, namespace: str | None) -> bool:
    """A 404 about the namespace the call targeted (not about the object, even a Namespace)."""
    return (
        failure.code == 404
        and kind != "Namespace"
        and namespace is not None
        and failure.details_kind == "namespaces"
        and failure.details_name in ("", namespace)
    )


class Conflict(TemporaryError):
    """409: the object changed since it was read (or already exists). A read-modify-write of
    safeship's own part of an object reads it again and retries at once (`RETRY_ON_CONFLICT`)."""


RETRY_ON_CONFLICT = 5  # attempts of a read-modify-write before the conflict goes up (and the tick retries)


class WatchExpired(TemporaryError):
    """The resourceVersion a watch started from is too old for the server (410 Gone): list again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=0.0)


class KubeClient:
    """Plain-dict Kubernetes API calls with errors translated at the edge (see the module docstring).

    Build it with `for_environment(environment)` or `from_kubeconfig(path, context, namespace)`;
    use it as `async with` or call `close()`."""

    def __init__(self, client: lightkube.AsyncClient, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self._origin: tuple[str | None, str] | None = None  # (kubeconfig, context) it was built from

    # ------------------------------------------------------------ construction

    @classmethod
    def for_environment(cls, environment: Environment) -> KubeClient:
        """A client for an environment: its kubeconfig (else lightkube's default loading: in-cluster,
        $KUBECONFIG, ~/.kube/config), its cluster as the context ("" = the current context) and its
        namespace as the default one."""
        return cls.from_kubeconfig(
            environment.kubeconfig,
            context=environment.cluster,
            namespace=environment.kube_namespace,
        )

    @classmethod
    def from_kubeconfig(cls, path: str | None, *, context: str = "", namespace: str = "") -> KubeClient:
        import httpx2
        import lightkube
        from lightkube.core.exceptions import ConfigError

        where = f"kubeconfig {path}" if path else "the default kubeconfig"
        try:
            config = lightkube.KubeConfig.from_file(path) if path else lightkube.KubeConfig.from_env()
            single = config.get(context_name=context or None)
            if single is None:  # pragma: no cover - lightkube raises instead
                raise ConfigError("no context")
            client = lightkube.AsyncClient(
                single,
                namespace=namespace or None,
                timeout=httpx2.Timeout(REQUEST_TIMEOUT),
                field_manager=FIELD_MANAGER,
            )
        except ConfigError as exc:
            raise PermanentError(f"Kubernetes: {where}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            # An unreadable file, malformed YAML, a context naming no cluster or no user...
            detail = str(exc) or type(exc).__name__
            raise PermanentError(f"Kubernetes: {where} cannot be used: {detail}") from exc
        made = cls(client, namespace or str(client.namespace))
        made._origin = (path, context)
        return made

    def sibling(self) -> KubeClient | None:
        """A new client for the same cluster, user and default namespace with connections of its
        own (its own pool: requests in flight on this client never make it wait); None when this
        client was not built from a kubeconfig. The caller closes it."""
        if self._origin is None:
            return None
        return KubeClient.from_kubeconfig(self._origin[0], context=self._origin[1], namespace=self.namespace)

    async def close(self) -> None:
        import httpx2

        with contextlib.suppress(httpx2.HTTPError, OSError):  # a broken connection: nothing left to close
            await self._client.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ calls

    def _namespace_for(self, info: KindInfo, namespace: str | None) -> str | None:
        if not info.namespaced:
            return None
        return namespace or self.namespace

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JsonObj | None:
        """The object, or None when it does not exist (a namespace that does not exist is permanent)."""
        _require_name(kind, name)
        main, _, info = _resource_classes(api_version, kind)
        ns = self._namespace_for(info, namespace)
        what = _describe("get", kind, name, ns)
        try:
            if ns is None:
                result = await self._client.get(main, name)
            else:
                result = await self._client.get(main, name, namespace=ns)
        except Exception as exc:
            failure = self._failure(exc, what)
            if failure.code == 404 and not _is_namespace_missing(failure, kind, ns):
                return None
            _raise_for(what, failure, exc)
        return _plain(result)

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[JsonObj]:
        """The objects of a kind in a namespace (the default one unless named), matching every label."""
        main, _, info = _resource_classes(api_version, kind)
        ns = self._namespace_for(info, namespace)
        what = _describe("list", kind, None, ns)
        items: list[JsonObj] = []
        try:
            if ns is None:
                listing = self._client.list(main, labels=dict(labels) if labels else None)
            else:
                listing = self._client.list(main, namespace=ns, labels=dict(labels) if labels else None)
            async for item in listing:
                items.append(_plain(item))
        except Exception as exc:
            _raise_for(what, self._failure(exc, what), exc)
        return items

    async def list_at(self, api_version: str, kind: str, namespace: str | None = None, *,
                      all_namespaces: bool = False) -> tuple[JsonList, str]:
        """The objects of a kind and the list's resourceVersion, from which a `watch` misses nothing."""
        import lightkube

        main, _, info = _resource_classes(api_version, kind)
        ns = lightkube.ALL_NS if (all_namespaces and info.namespaced) else self._namespace_for(info, namespace)
        what = _describe("list", kind, None, None if ns == lightkube.ALL_NS else ns)
        try:
            listing = self._client.list(main) if ns is None else self._client.list(main, namespace=ns)
            items = [_plain(item) async for item in listing]
            version = str(listing._resourceVersion or "")
        except Exception as exc:
            _raise_for(what, self._failure(exc, what), exc)
        return items, version

    async def watch(self, api_version: str, kind: str, namespace: str | None = None, *, resource_version: str,
                    timeout_s: int = 300, all_namespaces: bool = False) -> AsyncIterator[tuple[str, JsonObj]]:
        """One watch request from `resource_version` with bookmarks (`allowWatchBookmarks=true`),
        yielding (type, object) until the server ends it (after `timeout_s` at the latest):
        ADDED, MODIFIED, DELETED, and BOOKMARK (an object holding only the resourceVersion to
        resume from). A resourceVersion the server no longer holds (HTTP 410, or an ERROR event
        with code 410) raises `WatchExpired`: list again, then watch from the new list's version.
        lightkube's own watch loop retries and resets the version by itself, which would skip the
        changes made meanwhile; this makes one request and leaves resuming to the caller."""
        import httpx2
        import lightkube

        main, _, info = _resource_classes(api_version, kind)
        ns = lightkube.ALL_NS if (all_namespaces and info.namespaced) else self._namespace_for(info, namespace)
        what = _describe("watch", kind, None, None if ns == lightkube.ALL_NS else ns)
        generic = self._client._client  # lightkube's GenericAsyncClient: builds the request as its watch does
        params = {"resourceVersion": resource_version or None, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(max(1, int(timeout_s)))}
        try:
            request = generic.prepare_request("list", res=main, namespace=ns, watch=True, params=params)
            timeout = httpx2.Timeout(REQUEST_TIMEOUT, read=timeout_s + REQUEST_TIMEOUT)
            built = generic._client.build_request(request.method, request.url, params=request.params,
                                                  timeout=timeout)
            response = await generic.send(built, stream=True)  # type: ignore[no-untyped-call]
        except Exception as exc:
            _raise_for(what, self._failure(exc, what), exc)
        try:
            if response.status_code >= 400:
                await response.aread()
                failure = _failure_of(response)
                if failure.code == 410:
                    raise WatchExpired(f"Kubernetes API: {what}: {failure.message} (HTTP 410)")
                _raise_for(what, failure, RuntimeError(failure.message))
            try:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        raise TemporaryError(f"Kubernetes API: {what}: unreadable event ({exc})",
                                             delay=SERVER_ERROR_DELAY) from exc
                    kind_of = str(event.get("type") or "")
                    obj = event.get("object") if isinstance(event.get("object"), dict) else {}
                    if kind_of == "ERROR":
                        code = obj.get("code")
                        message = str(obj.get("message") or obj.get("reason") or "watch error")
                        if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                            raise WatchExpired(f"Kubernetes API: {what}: {message} (HTTP 410)")
                        raise TemporaryError(f"Kubernetes API: {what}: {message} (HTTP {code})",
                                             delay=SERVER_ERROR_DELAY)
                    yield kind_of, obj
            except (httpx2.HTTPError, OSError) as exc:
                raise TemporaryError(f"Kubernetes API: {what}: the watch broke ({exc or type(exc).__name__})",
                                     delay=CONNECT_DELAY) from exc
        finally:
            await response.aclose()

    async def create(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create the object; the stored object is returned. One that exists is a 409 (temporary)."""
        return await self._create(obj, apply=False)

    async def apply(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create the object or, when it exists, merge-patch it with the desired object."""
        return await self._create(obj, apply=True)

    async def _create(self, obj: Mapping[str, Any], *, apply: bool) -> JsonObj:
        api_version, kind, name, obj_namespace = _identity(obj)
        main, _, info = _resource_classes(api_version, kind)
        ns = self._namespace_for(info, obj_namespace)
        body = copy.deepcopy(dict(obj))
        metadata = dict(body["metadata"])
        if ns is None:
            metadata.pop("namespace", None)
        else:
            metadata["namespace"] = ns
        body["metadata"] = metadata
        what = _describe("create", kind, name, ns)
        created = body
        if apply:  # fields the server sets cannot be created; a resourceVersion still guards the patch
            created = {**body, "metadata": {k: v for k, v in metadata.items() if k not in _SERVER_SET}}
        try:
            result = await self._client.create(main(created))  # the namespace is in the metadata
        except Exception as exc:
            failure = self._failure(exc, what)
            if not (apply and failure.code == 409 and failure.reason == "AlreadyExists"):
                _raise_for(what, failure, exc)
        else:
            return _plain(result)
        return await self.patch(api_version, kind, name, body, namespace=ns)

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
    ) -> JsonObj:
        """A JSON merge patch of the object (null deletes a key, lists are replaced)."""
        return await self._patch(api_version, kind, name, patch, namespace, status=False)

    async def patch_status(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
    ) -> JsonObj:
        """A JSON merge patch of the object's status subresource (only `status` changes)."""
        return await self._patch(api_version, kind, name, patch, namespace, status=True)

    async def _patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None,
        *,
        status: bool,
    ) -> JsonObj:
        from lightkube.types import PatchType

        _require_name(kind, name)
        main, status_cls, info = _resource_classes(api_version, kind)
        ns = self._namespace_for(info, namespace)
        res = status_cls if status else main
        what = _describe("patch status of" if status else "patch", kind, name, ns)
        body = copy.deepcopy(dict(patch))
        try:
            if ns is None:
                result = await self._client.patch(res, name, body, patch_type=PatchType.MERGE)
            else:
                result = await self._client.patch(res, name, body, namespace=ns, patch_type=PatchType.MERGE)
        except Exception as exc:
            _raise_for(what, self._failure(exc, what), exc)
        return _plain(result)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete the object; its dependents go in the background. One that is not there: a no-op."""
        _require_name(kind, name)
        from lightkube.types import CascadeType

        main, _, info = _resource_classes(api_version, kind)
        ns = self._namespace_for(info, namespace)
        what = _describe("delete", kind, name, ns)
        try:
            if ns is None:
                await self._client.delete(main, name, cascade=CascadeType.BACKGROUND)
            else:
                await self._client.delete(main, name, namespace=ns, cascade=CascadeType.BACKGROUND)
        except Exception as exc:
            failure = self._failure(exc, what)
            if failure.code == 404 and not _is_namespace_missing(failure, kind, ns):
                return
            _raise_for(what, failure, exc)

    async def can_i(self, verb: str, resource: str, group: str = "", namespace: str | None = None, *,
                    user: str | None = None) -> bool:
        """Whether the client's user (SelfSubjectAccessReview), or `user` (SubjectAccessReview: a
        ServiceAccount is `system:serviceaccount:<namespace>:<name>`, with the groups Kubernetes
        gives it), may do `verb` on `resource`. Asking for another user needs `create` on
        `subjectaccessreviews`, which the cluster's admins have."""
        kind = "SelfSubjectAccessReview" if user is None else "SubjectAccessReview"
        main, _, _ = _resource_classes("authorization.k8s.io/v1", kind)
        attributes: JsonObj = {"verb": verb, "resource": resource, "group": group}
        ns = namespace if namespace is not None else self.namespace
        if ns:
            attributes["namespace"] = ns
        spec: JsonObj = {"resourceAttributes": attributes}
        if user is not None:
            spec["user"] = user
            parts = user.split(":")
            if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
                spec["groups"] = ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}",
                                  "system:authenticated"]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": kind, "metadata": {}, "spec": spec}
        what = f"may {user or 'I'} {verb} {resource}" + (f" in {ns}" if ns else "")
        try:
            result = await self._client.create(main(review))
        except Exception as exc:
            _raise_for(what, self._failure(exc, what), exc)
        status = _plain(result).get("status")
        return bool(isinstance(status, Mapping) and status.get("allowed") is True)

    # ------------------------------------------------------------ the edge

    @staticmethod
    def _failure(exc: Exception, what: str) -> _Failure:
        """The server's answer inside a failed call, or the translated error for everything that is
        not an HTTP answer (connection failures, unreadable responses, kubeconfig auth)."""
        import httpx2
        import msgspec
        from lightkube.core.exceptions import ConfigError

        status_error: BaseException | None = exc
        # lightkube reads Content-Type and then the JSON body to wrap an HTTP error: an error
        # response without that header, or with a body that is not JSON, surfaces as a KeyError or
        # ValueError raised while handling the HTTP error.
        if isinstance(exc, KeyError | ValueError) and isinstance(exc.__context__, httpx2.HTTPStatusError):
            status_error = exc.__context__
        if isinstance(status_error, httpx2.HTTPStatusError):
            return _failure_of(status_error.response)
        if isinstance(exc, httpx2.TimeoutException):
            raise TemporaryError(
                f"Kubernetes API: {what}: timed out ({exc or type(exc).__name__})", delay=CONNECT_DELAY
            ) from exc
        if isinstance(exc, httpx2.HTTPError | OSError):
            raise TemporaryError(
                f"Kubernetes API: {what}: cannot reach the API server ({exc or type(exc).__name__})",
                delay=CONNECT_DELAY,
            ) from exc
        if isinstance(exc, msgspec.DecodeError | UnicodeDecodeError):
            raise TemporaryError(
                f"Kubernetes API: {what}: unreadable response ({exc})", delay=SERVER_ERROR_DELAY
            ) from exc
        if isinstance(exc, ConfigError):
            raise PermanentError(f"Kubernetes API: {what}: {exc}") from exc
        raise exc


def _describe(verb: str, kind: str, name: str | None, namespace: str | None) -> str:
    target = f"{kind} {name}" if name else f"{kind} objects"
    return f"{verb} {target}" + (f" in namespace {namespace}" if namespace else "")
