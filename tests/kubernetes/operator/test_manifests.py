"""The operator's install: the kustomize base under deploy/ is what `safeship operator manifests`
prints (byte for byte regenerated, and object for object what `kubectl kustomize` builds when
kubectl is on the machine), every object validates (kubernetes-validate strict 1.30 for built-in
kinds), the stand-in API server accepts the whole stream (the operator's pods pass the namespace's
`restricted` Pod Security level, a Release validates against the installed CRD), and with RBAC
enforced for the operator's ServiceAccount its calls are allowed and others refused."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from emulator import ApiHandle

from safeship.cli.operator_manifests import add_parser, run
from safeship.config.models import SafeshipConfig
from safeship.errors import InputError
from safeship.operator import manifests as mf
from safeship.operator import release as rel
from safeship.operator.crd import release_crd

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
NS = mf.DEFAULT_NAMESPACE
OPERATOR_TOKEN = "operator-service-account-token"
OPERATOR_USER = f"system:serviceaccount:{NS}:{mf.NAME}"

RELEASE: dict[str, Any] = {
    "apiVersion": rel.API_VERSION,
    "kind": rel.KIND,
    "metadata": {"name": "user-service"},
    "spec": {"service": "user-service", "image": "registry.example/user-service:{version}", "version": "v1.3.0",
             "strategy": "canary", "replicas": 3, "resources": {"cpu": "250m", "memory": "256Mi"},
             "strategies": {"canary": {"traffic_percentages": [10, 50, 100], "step_duration": "30s"}}},
}


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="safeship operator")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["manifests", *argv])


# ------------------------------------------------------------------ one source, kustomize and the CLI


def test_the_checked_in_kustomize_files_are_the_generated_ones(tmp_path: Path) -> None:
    written = mf.write_kustomize(tmp_path)
    generated = {path.relative_to(tmp_path).as_posix(): path.read_text() for path in written}
    checked_in = {path.relative_to(DEPLOY).as_posix(): path.read_text()
                  for path in DEPLOY.rglob("*") if path.is_file()}
    assert checked_in == generated, "deploy/ is stale: run `python -m safeship.operator.manifests deploy`"
    crd = yaml.safe_load((DEPLOY / "base" / "crd.yaml").read_text())
    assert crd == release_crd()


def test_the_files_kustomization_lists_are_the_printed_objects(capsys: pytest.CaptureFixture[str]) -> None:
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    from_files = [yaml.safe_load((DEPLOY / "base" / name).read_text()) for name in kustomization["resources"]]
    assert run(cli([])) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == from_files == mf.manifests()
    assert [o["kind"] for o in printed] == list(mf.BASE_FILES.values())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
def test_the_printed_stream_is_what_kustomize_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def build(directory: Path) -> list[Any]:
        done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                              timeout=60, check=True)
        return list(yaml.safe_load_all(done.stdout))

    assert build(DEPLOY / "base") == mf.manifests()
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    for components, flags in (([], []), (["servicemonitor"], ["--service-monitor"]),
                              (["servicemonitor", "sqlite"], ["--service-monitor", "--sqlite"])):
        overlay = tmp_path / f"overlay-{len(components)}"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": ["../deploy/base"],
            "components": [f"../deploy/components/{name}" for name in components],
            "namespace": "platform-ops",
            "images": [{"name": mf.DEFAULT_IMAGE.rsplit(":", 1)[0], "newName": "registry.example/safeship",
                        "newTag": "2.0.1"}],
        }))
        run(cli(["--image", "registry.example/safeship:2.0.1", "--namespace", "platform-ops", *flags]))
        printed = list(yaml.safe_load_all(capsys.readouterr().out))
        assert build(overlay) == printed, components


def test_bad_arguments_are_one_sentence_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, named in ((["--namespace", "Safeship_System"], "--namespace"), (["--image", "has space:1"], "--image"),
                        (["--store-secret=Bad.Name"], "--store-secret")):
        with pytest.raises(InputError) as caught:
            run(cli(argv))
        assert caught.value.exit_code == 2
        assert str(caught.value).startswith(f"{named}: ") and str(caught.value).count("\n") == 0
    assert capsys.readouterr().out == ""  # nothing printed


def test_the_values_are_set_where_they_belong() -> None:
    objects = mf.manifests("registry.example/safeship@sha256:" + "a" * 64, "ops", "pg-store")
    by_kind = {o["kind"]: o for o in objects}
    assert by_kind["Namespace"]["metadata"]["name"] == "ops"
    assert by_kind["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [o for o in objects if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                                                           "ClusterRoleBinding")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"ops"}
    assert by_kind["ClusterRoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": mf.NAME,
                                                          "namespace": "ops"}]
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/safeship@sha256:" + "a" * 64
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env[mf.STORE_URL_ENV] == {"secretKeyRef": {"name": "pg-store", "key": "url"}}
    assert env[mf.API_TOKEN_ENV] == {"secretKeyRef": {"name": "safeship-api", "key": "token", "optional": False}}
    # what `safeship operator run` reads
    assert set(env) == {mf.STORE_URL_ENV, mf.API_TOKEN_ENV, "POD_NAME", "POD_NAMESPACE", "POD_IP"}
    hosts = [value for flag, value in zip(container["args"], container["args"][1:], strict=False)
             if flag == "--api-host"]
    assert hosts == ["safeship", "safeship.$(POD_NAMESPACE)", "safeship.$(POD_NAMESPACE).svc",
                     "safeship.$(POD_NAMESPACE).svc.cluster.local", "$(POD_IP)"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert all("value" not in e for e in container["env"])  # no value written in the manifests
    config = SafeshipConfig.model_validate(yaml.safe_load(by_kind["ConfigMap"]["data"]["safeship.yaml"]))
    assert [e.platform for e in config.environment_management.environments] == ["kubernetes"]


def test_the_sqlite_store_is_one_replica_on_a_claim() -> None:
    by_kind = {o["kind"]: o for o in mf.manifests(sqlite=True)}
    spec = by_kind["Deployment"]["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env[mf.STORE_URL_ENV] == {"name": mf.STORE_URL_ENV, "value": "sqlite:////var/lib/safeship/state.db"}
    state = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": mf.SQLITE_CLAIM}}
    assert by_kind["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_every_built_in_object_validates_strictly() -> None:
    import kubernetes_validate

    for obj in mf.manifests(service_monitor=True, sqlite=True):
        if obj["kind"] == "ServiceMonitor":
            continue  # the Prometheus Operator's CRD, not a built-in kind
        kubernetes_validate.validate(copy.deepcopy(obj), "1.30", strict=True)


# ------------------------------------------------------------------ applied to the stand-in


@pytest_asyncio.fixture
async def installed(kube_api: ApiHandle) -> AsyncIterator[httpx.AsyncClient]:
    """The whole stream POSTed to the stand-in, as `kubectl create -f -` would send it."""
    client = httpx.AsyncClient(base_url=kube_api.url, timeout=10)
    try:
        for obj in mf.manifests():
            served = kube_api.emulator.served(obj["apiVersion"], obj["kind"])
            group, version = served.group, served.version
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            where = f"/namespaces/{obj['metadata']['namespace']}" if served.namespaced else ""
            response = await client.post(f"{prefix}{where}/{served.plural}", json=obj)
            assert response.status_code == 201, (obj["kind"], response.text)
        yield client
    finally:
        await client.aclose()


@pytest.mark.cluster_sim(namespaces=[NS])
async def test_the_stream_installs_and_a_release_validates_against_the_crd(
    kube_api: ApiHandle, installed: httpx.AsyncClient, cluster_sim: Any
) -> None:
    await cluster_sim.tick(3)
    pods = kube_api.items("v1", "Pod", NS)
    assert len(pods) == 2  # the restricted Pod Security level admits the operator's pods
    releases = f"/apis/{rel.API_VERSION}/namespaces/test/releases"
    created = await installed.post(releases, json=RELEASE)
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["generation"] == 1
    bad = copy.deepcopy(RELEASE)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["replicas"] = "three"
    refused = await installed.post(releases, json=bad)
    assert refused.status_code == 422
    assert 'spec.replicas in body must be of type integer: "string"' in refused.json()["message"]
    kinds = {r["name"] for r in (await installed.get(f"/apis/{rel.API_VERSION}")).json()["resources"]}
    assert kinds == {"releases", "releases/status"}


async def test_rbac_allows_the_operators_calls_and_refuses_others(
    kube_api: ApiHandle, installed: httpx.AsyncClient
) -> None:
    kube_api.emulator.tokens[OPERATOR_TOKEN] = OPERATOR_USER
    await installed.post(f"/apis/{rel.API_VERSION}/namespaces/test/releases", json=RELEASE)
    operator = httpx.AsyncClient(base_url=kube_api.url, timeout=10,
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    merge = {"Content-Type": "application/merge-patch+json"}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": mf.LEASE, "namespace": NS}, "spec": {"holderIdentity": "pod-a"}}
    deployment = copy.deepcopy(next(o for o in mf.manifests() if o["kind"] == "Deployment"))
    deployment["metadata"] = {"name": "user-service-v1-3-0", "namespace": "test"}
    try:
        allowed = [
            await operator.get(f"/apis/{rel.API_VERSION}/releases"),  # every namespace
            await operator.get(f"/apis/{rel.API_VERSION}/releases", params={"watch": "true", "timeoutSeconds": "0"}),
            await operator.patch(f"/apis/{rel.API_VERSION}/namespaces/test/releases/user-service/status",
                                 content=b'{"status": {"phase": "progressing"}}', headers=merge),
            await operator.post(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", json=lease),
            await operator.get(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{mf.LEASE}"),
            await operator.patch(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{mf.LEASE}",
                                 content=b'{"spec": {"holderIdentity": "pod-b"}}', headers=merge),
            await operator.post("/apis/apps/v1/namespaces/test/deployments", json=deployment),
            await operator.get("/api/v1/namespaces/test/pods"),
            # the API's commands: a safeship.dev/ annotation of the Release (RBAC cannot tell the
            # annotations from the spec; test_operator_api checks that the operator's patches of a
            # Release only ever carry one safeship.dev/ annotation)
            await operator.patch(f"/apis/{rel.API_VERSION}/namespaces/test/releases/user-service",
                                 content=json.dumps({"metadata": {"annotations": {rel.APPROVE: "1-ab by x"}}}).encode(),
                                 headers=merge),
        ]
        assert [r.status_code for r in allowed] == [200, 200, 200, 201, 200, 200, 201, 200, 200], [
            r.text for r in allowed if r.status_code >= 400]
        refused = [
            await operator.get("/api/v1/secrets"),  # Secrets are never read
            await operator.get("/api/v1/namespaces/test/secrets"),
            await operator.get("/api/v1/secrets", params={"watch": "true"}),
            await operator.get(f"/apis/{rel.API_VERSION}/namespaces/test/releases/user-service"),  # never a GET
            await operator.get(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/another-lease"),
            await operator.get("/apis/coordination.k8s.io/v1/namespaces/test/leases/safeship-operator"),
            await operator.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{rel.CRD_NAME}"),
            await operator.post("/apis/rbac.authorization.k8s.io/v1/clusterroles",
                                json={"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                      "metadata": {"name": "escalate"}, "rules": []}),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
        assert refused[0].json()["message"] == (
            f'secrets is forbidden: User "{OPERATOR_USER}" cannot list resource "secrets" in API group "" '
            "at the cluster scope")
    finally:
        await operator.aclose()
    stored = kube_api.read(rel.API_VERSION, rel.KIND, "user-service")
    assert stored is not None and stored["spec"]["replicas"] == 3 and stored["status"]["phase"] == "progressing"
    assert stored["metadata"]["annotations"] == {rel.APPROVE: "1-ab by x"}


async def kubectl(api: ApiHandle, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """kubectl against the stand-in (run beside it, not blocking its event loop)."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(api.kubeconfig), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return int(process.returncode or 0), out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_the_documented_kubectl_commands_work_on_the_stand_in(kube_api: ApiHandle) -> None:
    # The stand-in serves no OpenAPI document, so kubectl's client-side schema check is off here;
    # the server-side checks (schemas, CRD validation) are the stand-in's own.
    stream = mf.to_yaml(mf.manifests())
    code, out, err = await kubectl(kube_api, "apply", "--validate=false", "-f", "-", stdin=stream)
    assert code == 0, err
    assert "customresourcedefinition.apiextensions.k8s.io/releases.safeship.dev created" in out
    assert "deployment.apps/safeship-operator created" in out
    code, out, err = await kubectl(kube_api, "apply", "--validate=false", "-f", "-", stdin=stream)
    assert code == 0 and "deployment.apps/safeship-operator unchanged" in out, err  # applying again changes nothing

    release = yaml.safe_dump({**RELEASE, "metadata": {"name": "user-service", "namespace": "test"}})
    code, out, err = await kubectl(kube_api, "apply", "--validate=false", "-f", "-", stdin=release)
    assert code == 0 and "release.safeship.dev/user-service created" in out, err
    code, out, err = await kubectl(kube_api, "get", "rel", "-n", "test", "-o", "name")
    assert (code, out.strip()) == (0, "release.safeship.dev/user-service"), err
    code, out, err = await kubectl(kube_api, "annotate", "release", "user-service", "-n", "test",
                                   f"{rel.APPROVE}=step-2")
    assert code == 0, err
    stored = kube_api.read(rel.API_VERSION, rel.KIND, "user-service", "test")
    assert stored is not None and stored["metadata"]["annotations"][rel.APPROVE] == "step-2"
    code, out, err = await kubectl(kube_api, "delete", "release", "user-service", "-n", "test")
    assert code == 0, err
    assert kube_api.read(rel.API_VERSION, rel.KIND, "user-service", "test") is None


async def test_the_operator_rolls_a_release_out_within_its_role(operator_rig: Any) -> None:
    """The real operator (h-op's runner) with every call authorized as the install's ServiceAccount:
    a first version and a canary to success, nothing refused, and nothing used outside the role."""
    from conftest import LEASE_NAMESPACE, release_body

    rig = operator_rig
    api: ApiHandle = rig.api
    granted: set[tuple[str, str, str]] = set()
    for obj in mf.manifests(namespace=LEASE_NAMESPACE):  # the operator keeps its Lease in LEASE_NAMESPACE here
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            api.write(obj)
            granted |= {(verb, resource, group) for rule in obj.get("rules", []) for verb in rule["verbs"]
                        for resource in rule["resources"] for group in rule["apiGroups"]}
    # the kubeconfig's token is the operator's ServiceAccount: every request it makes is authorized by RBAC
    api.emulator.tokens["emulator-token"] = f"system:serviceaccount:{LEASE_NAMESPACE}:{mf.NAME}"
    rig.start("operator-a")
    for version in ("v1", "v2"):
        await rig.apply(release_body(api, version))
        await rig.until(lambda v=version: rig.status().get("version") == v and rig.status().get("phase") == "succeeded",
                        what=f"{version} rolled out")
    await rig.stop("operator-a")
    refused = sorted({entry[1:4] for entry in api.emulator.authorized if not entry[4]})
    assert refused == []
    used = {entry[1:4] for entry in api.emulator.authorized}
    assert ("watch", "releases", rel.GROUP) in used and ("patch", "releases/status", rel.GROUP) in used
    assert used <= granted
    # what the role grants that this run (router istio, no autoscaling, no budget, no instance
    # stopped, nothing cleaned up) does not call: each is another feature's call
    other_features = {
        *(("get", "httproutes", "gateway.networking.k8s.io"),),  # router gateway-api
        *((verb, "httproutes", "gateway.networking.k8s.io") for verb in ("create", "patch", "delete")),
        *((verb, "horizontalpodautoscalers", "autoscaling") for verb in ("create", "patch", "delete")),
        ("create", "poddisruptionbudgets", "policy"), ("patch", "poddisruptionbudgets", "policy"),  # min_available
        ("delete", "virtualservices", "networking.istio.io"),  # a service's route removed
        ("delete", "destinationrules", "networking.istio.io"),  # an earlier router's rule removed
        ("delete", "pods", ""),  # stopping one instance
        ("update", "releases/finalizers", rel.GROUP),  # not a call: blockOwnerDeletion needs it
        ("patch", "releases", rel.GROUP),  # the API's commands (test_operator_api)
    }
    assert granted - used <= other_features, sorted(granted - used - other_features)


def test_the_safeship_command_prints_the_stream_and_refuses_a_bad_namespace(
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from safeship.cli.main import main

    assert main(["operator", "manifests", "--namespace", "ops"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == mf.manifests(namespace="ops")
    command = [sys.executable, "-c", "from safeship.cli.main import main; raise SystemExit(main())"]
    bad = subprocess.run([*command, "operator", "manifests", "--namespace", "Ops_1"], capture_output=True,
                         text=True, timeout=60)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.strip().count("\n") == 0 and "--namespace: 'Ops_1' is not a DNS-1123 label" in bad.stderr
