"""The Kubernetes platform against the API emulator (and the cluster simulator where pods must move):
what it applies, and how it reads pods back as instances with the evidence the analysis needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from emulator import ApiHandle

from safeship.clock import RealClock
from safeship.config.models import SafeshipConfig
from safeship.errors import InputError
from safeship.kube import objects
from safeship.platforms import platform_class
from safeship.platforms.base import Instance, InstanceSpec, InstanceState, MemoryLedger, PlatformSetup
from safeship.platforms.kubernetes import KubernetesPlatform

SERVICE = "user-service"


def make_config(kube_api: ApiHandle, **environment: Any) -> SafeshipConfig:
    env = {"name": "production", "platform": "kubernetes", "cluster": kube_api.context,
           "kubeconfig": str(kube_api.kubeconfig), "namespace": kube_api.namespace, **environment}
    return SafeshipConfig.model_validate({
        "environment_management": {"environments": [env]},
        "services": {SERVICE: {"image": "registry.example/user-service:{version}", "replicas": 2,
                               "container_port": 8080, "secrets": ["DB_PASSWORD"]}},
    })


@pytest_asyncio.fixture
async def platform(kube_api: ApiHandle, tmp_path: Path) -> AsyncIterator[KubernetesPlatform]:
    config = make_config(kube_api)
    environment = config.environment("production")
    assert environment is not None
    made = platform_class("kubernetes").create(PlatformSetup(
        state_dir=tmp_path, ledger=MemoryLedger(), clock=RealClock(), config=config, environment=environment))
    assert isinstance(made, KubernetesPlatform)
    try:
        yield made
    finally:
        await made.close()


def spec(version: str, index: int = 0) -> InstanceSpec:
    return InstanceSpec(service=SERVICE, environment="production", version=version, index=index)


async def scale(platform: KubernetesPlatform, version: str, replicas: int, **hooks: Any) -> None:
    await platform.scale(SERVICE, "production", version, replicas, lambda i: spec(version, i), drain=0.0, **hooks)


def pod(name: str, version: str, *, ready: bool = False, phase: str = "Running", waiting: str | None = None,
        restarts: int = 0, last_terminated: str | None = None, ip: str = "10.0.0.7",
        created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    status: dict[str, Any] = {
        "phase": phase, "podIP": ip, "startTime": created,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": ready, "restartCount": restarts,
                               "state": state,
                               **({"lastState": {"terminated": {"reason": last_terminated, "exitCode": 137}}}
                                  if last_terminated else {})}],
    }
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": objects.labels(SERVICE, version, "production"),
                         "annotations": {objects.VERSION_ANNOTATION: version}, "creationTimestamp": created},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
            "status": status}


def deployment_of(kube_api: ApiHandle, version: str) -> dict[str, Any] | None:
    return kube_api.read("apps/v1", "Deployment", objects.deployment_name(SERVICE, version))


def test_traits_say_how_it_is_driven() -> None:
    cls = platform_class("kubernetes")
    assert cls.runs_in_controller is True and cls.runs_commands is False
    assert cls.router == "replicas" and cls.traffic == "prometheus" and cls.per_environment is True


def test_create_needs_the_environment(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="one environment"):
        KubernetesPlatform.create(PlatformSetup(state_dir=tmp_path, ledger=MemoryLedger(), clock=RealClock()))


async def test_scale_applies_one_deployment_per_version(kube_api: ApiHandle, platform: KubernetesPlatform) -> None:
    started: list[Instance] = []
    stopped: list[Instance] = []
    await scale(platform, "v1.0.0", 2, on_started=started.append)
    first = deployment_of(kube_api, "v1.0.0")
    assert first is not None and first["spec"]["replicas"] == 2
    assert first["metadata"]["labels"][objects.MANAGED_BY_LABEL] == "safeship"
    assert first["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/user-service:v1.0.0"
    assert [i.index for i in started] == [0, 1]

    await scale(platform, "v2.0.0", 1)
    assert deployment_of(kube_api, "v2.0.0")["spec"]["replicas"] == 1  # type: ignore[index]
    assert deployment_of(kube_api, "v1.0.0")["spec"]["replicas"] == 2  # type: ignore[index]

    # Down to 0: the Deployment stays, with its pod template, for a rollback to scale up again.
    await scale(platform, "v1.0.0", 0, on_stopped=stopped.append)
    kept = deployment_of(kube_api, "v1.0.0")
    assert kept is not None and kept["spec"]["replicas"] == 0
    assert kept["spec"]["template"] == first["spec"]["template"]
    assert [i.index for i in stopped] == [0, 1]
    # idempotent: the same scale again writes nothing
    version_before = kept["metadata"]["resourceVersion"]
    await scale(platform, "v1.0.0", 0)
    assert deployment_of(kube_api, "v1.0.0")["metadata"]["resourceVersion"] == version_before  # type: ignore[index]
    # a version never started and scaled to 0 is not created
    await scale(platform, "v9", 0)
    assert deployment_of(kube_api, "v9") is None


async def test_scaling_down_drains_before_the_deployment_shrinks(kube_api: ApiHandle,
                                                                 platform: KubernetesPlatform) -> None:
    await scale(platform, "v1", 2)
    kube_api.put(pod("a", "v1", ready=True, created="2026-01-01T00:00:00Z"))
    kube_api.put(pod("b", "v1", ready=True, created="2026-01-01T00:00:01Z"))
    seen: list[tuple[list[str], int]] = []

    async def leaving(staying: Any) -> None:
        replicas = deployment_of(kube_api, "v1")["spec"]["replicas"]  # type: ignore[index]
        seen.append(([i.id for i in staying], replicas))

    await scale(platform, "v1", 1, on_leaving=leaving)
    assert seen == [(["production/user-service/a"], 2)]
    assert deployment_of(kube_api, "v1")["spec"]["replicas"] == 1  # type: ignore[index]


async def test_pod_states_become_instance_states_with_evidence(kube_api: ApiHandle,
                                                                platform: KubernetesPlatform) -> None:
    kube_api.put(pod("ok", "v1", ready=True, ip="10.1.0.1"))
    kube_api.put(pod("warming", "v2", ready=False, phase="Pending", ip=""))
    kube_api.put(pod("unready", "v2", ready=False))
    kube_api.put(pod("crash", "v3", waiting="CrashLoopBackOff", restarts=4))
    kube_api.put(pod("pull", "v4", phase="Pending", waiting="ImagePullBackOff", ip=""))
    kube_api.put(pod("oom", "v5", restarts=1, last_terminated="OOMKilled"))
    leaving = pod("leaving", "v1", ready=True, waiting="ImagePullBackOff")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    kube_api.put(leaving)
    found = {i.id.rsplit("/", 1)[-1]: i for i in await platform.instances(SERVICE, "production")}
    assert found["ok"].state is InstanceState.READY and found["ok"].ready
    assert (found["ok"].host, found["ok"].port) == ("10.1.0.1", 8080)
    assert found["ok"].id == "production/user-service/ok" and found["ok"].version == "v1"
    assert found["warming"].state is InstanceState.STARTING
    assert found["unready"].state is InstanceState.UNREADY
    assert (found["crash"].state, found["crash"].restarts, found["crash"].last_failure) == (
        InstanceState.RESTARTING, 4, "CrashLoopBackOff")
    assert (found["pull"].state, found["pull"].last_failure) == (InstanceState.FAILED, "ImagePullBackOff")
    assert (found["oom"].restarts, found["oom"].last_failure) == (1, "OOMKilled")
    assert found["leaving"].state is InstanceState.STOPPED  # terminating: gone from the Service already
    assert await platform.instances(SERVICE, "staging") == []
    assert await platform.instances("other-service", "production") == []


async def test_a_passed_progress_deadline_is_evidence(kube_api: ApiHandle, platform: KubernetesPlatform) -> None:
    await scale(platform, "v2", 2)
    kube_api.put(pod("slow", "v2", ready=False))
    stored = deployment_of(kube_api, "v2")
    assert stored is not None
    stored["status"] = {"observedGeneration": stored["metadata"].get("generation", 1), "replicas": 1,
                        "conditions": [{"type": "Progressing", "status": "False",
                                        "reason": "ProgressDeadlineExceeded",
                                        "message": 'ReplicaSet "x" has timed out progressing.'}]}
    kube_api.put(stored)
    (slow,) = [i for i in await platform.instances(SERVICE, "production") if i.version == "v2"]
    assert (slow.state, slow.last_failure) == (InstanceState.FAILED, "ProgressDeadlineExceeded")
    # with no pod at all (none could be created), the Deployment itself is the evidence
    kube_api.remove("v1", "Pod", "slow")
    (gone,) = await platform.instances(SERVICE, "production")
    assert (gone.version, gone.state, gone.last_failure) == ("v2", InstanceState.FAILED, "ProgressDeadlineExceeded")


async def test_adopt_returns_the_pods_already_there(kube_api: ApiHandle, platform: KubernetesPlatform) -> None:
    kube_api.put(pod("left-behind", "v1", ready=True))
    adopted = await platform.adopt()
    assert [(i.id, i.state) for i in adopted] == [("production/user-service/left-behind", InstanceState.READY)]


async def test_start_and_stop_work_through_the_deployment(kube_api: ApiHandle, platform: KubernetesPlatform) -> None:
    started = await platform.start(spec("v1", 2))
    assert started.state is InstanceState.STARTING
    assert deployment_of(kube_api, "v1")["spec"]["replicas"] == 3  # type: ignore[index]
    kube_api.put(pod("p", "v1", ready=True))
    (instance,) = await platform.instances(SERVICE, "production")
    await platform.stop(instance, drain=0.0)
    assert kube_api.read("v1", "Pod", "p") is None
    await platform.stop(instance, drain=0.0)  # not there any more: a no-op


@pytest.mark.parametrize("failure", ["crashloop", "imagepull", "oom"])
async def test_a_failing_template_shows_its_failure(kube_api: ApiHandle, platform: KubernetesPlatform,
                                                    cluster_sim: Any, failure: str) -> None:
    """The cluster simulator runs a pod template marked failing the way a kubelet would report it."""
    await scale(platform, "v1", 1)
    stored = deployment_of(kube_api, "v1")
    assert stored is not None
    stored["spec"]["template"]["metadata"].setdefault("annotations", {})["safeship.test/fail"] = failure
    kube_api.put(stored)
    expected = {"crashloop": "CrashLoopBackOff", "imagepull": "ImagePullBackOff", "oom": "OOMKilled"}[failure]
    instances: list[Instance] = []
    for _ in range(30):
        await cluster_sim.tick()
        instances = [i for i in await platform.instances(SERVICE, "production") if i.version == "v1"]
        if any(i.last_failure == expected for i in instances):
            break
    assert any(i.last_failure == expected and not i.ready for i in instances), instances


async def test_pods_become_ready_instances_under_the_cluster_simulator(platform: KubernetesPlatform,
                                                                       cluster_sim: Any) -> None:
    await scale(platform, "v1", 2)
    ready: list[Instance] = []
    for _ in range(30):
        await cluster_sim.tick()
        ready = [i for i in await platform.instances(SERVICE, "production") if i.ready]
        if len(ready) == 2:
            break
    assert len(ready) == 2 and all(i.host for i in ready)
    await scale(platform, "v1", 0)
    for _ in range(30):
        await cluster_sim.tick()
        if not [i for i in await platform.instances(SERVICE, "production") if not i.stopped]:
            break
    assert [i for i in await platform.instances(SERVICE, "production") if not i.stopped] == []


async def test_api_errors_arrive_translated(kube_api: ApiHandle, platform: KubernetesPlatform) -> None:
    from safeship.errors import PermanentError

    kube_api.remove("v1", "Namespace", kube_api.namespace)
    await asyncio.sleep(0)
    with pytest.raises(PermanentError):
        await scale(platform, "v1", 1)


async def test_scaling_a_version_up_again_restores_its_own_template(kube_api: ApiHandle,
                                                                    platform: KubernetesPlatform) -> None:
    """A rollback scales the previous version's Deployment up: its template is the one it was
    deployed with, whatever the config says now (as `kubectl rollout undo` restores it)."""
    await scale(platform, "v1", 2)
    template = deployment_of(kube_api, "v1")["spec"]["template"]  # type: ignore[index]
    await scale(platform, "v1", 0)
    changed = platform.config.model_copy(deep=True)
    changed.services[SERVICE].image = "registry.example/other:{version}"
    later = KubernetesPlatform(changed, platform.environment)
    try:
        await later.scale(SERVICE, "production", "v1", 2, lambda i: spec("v1", i), drain=0.0)
    finally:
        await later.close()
    restored = deployment_of(kube_api, "v1")
    assert restored is not None and restored["spec"]["replicas"] == 2
    assert restored["spec"]["template"] == template


def test_the_plugins_load_without_the_client_library() -> None:
    """A user of the local default never needs lightkube: importing the plug-ins does not load it."""
    import subprocess
    import sys

    code = ("import sys, safeship.platforms.kubernetes, safeship.routing.kubernetes, safeship.kube.objects; "
            "print('lightkube' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


async def test_a_deadline_passed_in_an_earlier_attempt_is_not_evidence(kube_api: ApiHandle,
                                                                       platform: KubernetesPlatform) -> None:
    await scale(platform, "v2", 1)
    await scale(platform, "v2", 0)
    stored = deployment_of(kube_api, "v2")
    assert stored is not None
    stale = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "lastUpdateTime": "2020-01-01T00:00:00Z", "lastTransitionTime": "2020-01-01T00:00:00Z"}
    stored["status"] = {"observedGeneration": stored["metadata"]["generation"], "conditions": [stale]}
    kube_api.put(stored)
    await scale(platform, "v2", 1)  # a new attempt of the same version
    kube_api.put(pod("again", "v2", ready=False))
    (again,) = await platform.instances(SERVICE, "production")
    assert again.state is InstanceState.UNREADY and again.last_failure is None
    stored = deployment_of(kube_api, "v2")
    assert stored is not None
    stored["status"]["conditions"] = [{**stale, "lastUpdateTime": "2999-01-01T00:00:00Z"}]  # this attempt's own
    kube_api.put(stored)
    (again,) = await platform.instances(SERVICE, "production")
    assert (again.state, again.last_failure) == (InstanceState.FAILED, "ProgressDeadlineExceeded")


async def test_the_deployment_request_settings_reach_the_pod_template(kube_api: ApiHandle,
                                                                     platform: KubernetesPlatform) -> None:
    """What a deployment request lays over the service's config (the engine's instance spec) acts:
    resource requests, probes and environment variables; secret values never enter the object."""
    from safeship.platforms.base import ProbeSpec

    given = InstanceSpec(service=SERVICE, environment="production", version="v3", index=0,
                         env={"FEATURE": "on"}, secret_env={"DB_PASSWORD": "hunter2"}, cpu=0.5, memory_mb=300,
                         readiness=ProbeSpec(kind="http", path="/custom-ready", interval=2.0, timeout=1.0),
                         liveness=ProbeSpec(kind="tcp", interval=7.0, timeout=3.0, failure_threshold=4))
    await platform.scale(SERVICE, "production", "v3", 1, lambda i: given, drain=0.0)
    stored = deployment_of(kube_api, "v3")
    assert stored is not None
    (container,) = stored["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "300Mi"},
                                      "limits": {"cpu": "500m", "memory": "300Mi"}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/custom-ready", "port": 8080}
    assert container["readinessProbe"]["periodSeconds"] == 2
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert container["livenessProbe"]["failureThreshold"] == 4
    env = {e["name"]: e for e in container["env"]}
    assert env["FEATURE"]["value"] == "on"
    assert env["DB_PASSWORD"] == {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "user-service",
                                                                                       "key": "DB_PASSWORD"}}}
    assert "hunter2" not in str(stored)


class RecordingClock(RealClock):
    """The real clock, recording each sleep with what the Deployment asked for at that moment."""

    def __init__(self, kube_api: ApiHandle) -> None:
        self.kube_api = kube_api
        self.sleeps: list[tuple[float, int | None]] = []

    async def sleep(self, seconds: float) -> None:
        found = deployment_of(self.kube_api, "v1")
        self.sleeps.append((seconds, found["spec"]["replicas"] if found else None))


async def test_scaling_down_waits_the_drain_before_the_deployment_shrinks(kube_api: ApiHandle) -> None:
    config = make_config(kube_api)
    environment = config.environment("production")
    assert environment is not None
    clock = RecordingClock(kube_api)
    platform = KubernetesPlatform(config, environment, clock=clock)
    try:
        await scale(platform, "v1", 2)
        kube_api.put(pod("a", "v1", ready=True))
        kube_api.put(pod("b", "v1", ready=True))
        order: list[str] = []

        async def leaving(staying: Any) -> None:
            order.append("router drained")

        await platform.scale(SERVICE, "production", "v1", 1, lambda i: spec("v1", i), drain=7.5,
                             on_leaving=leaving)
        assert order == ["router drained"]
        assert clock.sleeps == [(7.5, 2)]  # waited while the Deployment still asked for 2
        assert deployment_of(kube_api, "v1")["spec"]["replicas"] == 1  # type: ignore[index]
        await platform.scale(SERVICE, "production", "v1", 3, lambda i: spec("v1", i), drain=7.5)
        assert clock.sleeps == [(7.5, 2)]  # scaling up waits for nothing
        await platform.stop(Instance(id="production/user-service/a", service=SERVICE, environment="production",
                                     version="v1", index=0), drain=2.0)
        assert clock.sleeps[-1] == (2.0, 3) and kube_api.read("v1", "Pod", "a") is None
    finally:
        await platform.close()


async def test_a_version_gets_its_disruption_budget_with_its_deployment(kube_api: ApiHandle, tmp_path: Path) -> None:
    config = make_config(kube_api)
    config.services[SERVICE].pod.min_available = 1
    environment = config.environment("production")
    assert environment is not None
    platform = KubernetesPlatform(config, environment)
    try:
        await scale(platform, "v1.3.0", 2)
        name = objects.deployment_name(SERVICE, "v1.3.0")
        budget = kube_api.read("policy/v1", "PodDisruptionBudget", name)
        assert budget is not None
        assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": objects.selector(SERVICE, "v1.3.0")}}
        await scale(platform, "v1-3-0", 1)  # another version, another Deployment and budget
        assert kube_api.read("policy/v1", "PodDisruptionBudget", objects.deployment_name(SERVICE, "v1-3-0"))
        assert len(kube_api.items("apps/v1", "Deployment")) == 2
    finally:
        await platform.close()
