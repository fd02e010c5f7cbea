"""safeship's API and dashboard served by the operator (`safeship.operator.api`), over real HTTP,
against two operator replicas in the stand-in cluster with RBAC enforced as the install's
ServiceAccount: tokens, reads from the shared store on the leader and the other replica, the
dashboard, an approval that becomes the Release's annotation, a new deployment refused; and
`safeship operator run` refusing a missing or short token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import LEASE_NAMESPACE, SERVICE, OperatorRig, release_body

from safeship.api.dashboard.auth import COOKIE, CSRF_FIELD
from safeship.cli.main import main
from safeship.operator import manifests as mf
from safeship.operator import release as rel
from safeship.operator.api import SUBMIT_REFUSED, operator_app, server_for
from safeship.operator.runner import Operator

TOKEN = "t" * 40
SERVICE_NAMES = ("safeship", "safeship.test.svc", "safeship.test.svc.cluster.local")


@contextlib.asynccontextmanager
async def served(operator: Operator, hosts: Sequence[str] = SERVICE_NAMES, *,
                 token: str | None = TOKEN) -> AsyncIterator[str]:
    """The operator's HTTP app on a free loopback port of this loop, stopped at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    server = server_for(operator_app(operator, token, listen_host="127.0.0.1", api_hosts=hosts,
                                     running=lambda: True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(200):  # bounded: 10 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        assert server.started, "the operator's HTTP server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()


def _enforce_rbac(rig: OperatorRig) -> None:
    """Every request of the operators is authorized as the install's ServiceAccount."""
    for obj in mf.manifests(namespace=LEASE_NAMESPACE):
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            rig.api.write(obj)
    rig.api.emulator.tokens["emulator-token"] = f"system:serviceaccount:{LEASE_NAMESPACE}:{mf.NAME}"


def _release_patches(rig: OperatorRig) -> list[dict[str, object]]:
    """The body of every patch of the Release itself (not its status) the API server received."""
    found = []
    for request in rig.api.emulator.requests_made:
        if str(request.method.value).upper() == "PATCH" and request.url.path.endswith(f"/{rel.PLURAL}/{SERVICE}"):
            found.append(json.loads(request.body))
    return found


async def test_the_operator_serves_the_api_and_dashboard_and_commands_become_annotations(
        operator_rig: OperatorRig) -> None:
    rig = operator_rig
    _enforce_rbac(rig)
    leader = rig.start("operator-a")
    await rig.until(leader.elector.is_leader, what="operator-a leads")
    other = rig.start("operator-b")
    await rig.apply(release_body(rig.api, "v1", environment="gated"))
    await rig.until(lambda: rig.status().get("phase") == "awaiting_approval", what="v1 awaiting approval")
    deployment_id = rig.status()["deploymentId"]
    await rig.until(lambda: (rig.api.namespace, SERVICE) in other.releases, what="operator-b watching the Release")
    assert not other.elector.is_leader()
    admin = {"Authorization": f"Bearer {TOKEN}"}

    async with served(leader) as lead_url, served(other) as other_url, httpx.AsyncClient(timeout=10) as http:
        # no token, a wrong one: 401; the probes' /healthz and the scrape's /metrics need none
        assert (await http.get(f"{other_url}/deployments")).status_code == 401
        wrong = await http.get(f"{other_url}/deployments", headers={"Authorization": "Bearer " + "x" * 40})
        assert wrong.status_code == 401
        health = await http.get(f"{other_url}/healthz")
        assert health.status_code == 200 and health.json()["leader"] is False and health.json()["releases"] == 1
        metrics = await http.get(f"{lead_url}/metrics", headers={"Host": "10.1.2.3:8080"})  # a pod IP, unlisted
        assert metrics.status_code == 200 and "safeship_operator_leader 1" in metrics.text

        # reads come from the shared store: the leader and the other replica list the same rows
        listed = {}
        for url in (lead_url, other_url):
            answer = await http.get(f"{url}/deployments", headers=admin)
            assert answer.status_code == 200, answer.text
            listed[url] = [(d["id"], d["service"], d["environment"], d["phase"]) for d in answer.json()["deployments"]]
        expected = [(d.id, d.service, d.environment, d.phase) for d in leader.store.list_deployments(limit=100)]
        assert listed[lead_url] == listed[other_url] == expected == [(deployment_id, SERVICE, "gated",
                                                                      "awaiting_approval")]
        one = await http.get(f"{other_url}/deployments/{deployment_id}", headers=admin)
        assert one.status_code == 200 and one.json()["version"] == "v1"

        # the Service's names are accepted in the Host header, others are not
        by_name = await http.get(f"{other_url}/environments", headers={**admin, "Host": "safeship.test.svc"})
        assert by_name.status_code == 200, by_name.text
        assert [s["service"] for s in by_name.json()["environments"][1]["services"]] == [SERVICE]
        elsewhere = await http.get(f"{other_url}/deployments", headers={**admin, "Host": "evil.example"})
        assert elsewhere.status_code == 400

        # a new deployment starts from the Release: refused, and nothing is written
        before = leader.store.list_deployments(limit=100)
        refused = await http.post(f"{other_url}/deployments", headers=admin, json={
            "service_name": SERVICE, "version": "v9", "environment": "gated"})
        assert refused.status_code == 409 and refused.json() == {"detail": SUBMIT_REFUSED}
        assert leader.store.list_deployments(limit=100) == before
        cleanup = await http.post(f"{other_url}/environments/gated/cleanup", headers=admin)
        assert cleanup.status_code == 409 and "single source of truth" in cleanup.json()["detail"]

        # the dashboard: log in with the token, then the overview names the service
        login = await http.post(f"{other_url}/ui/login", data={"token": TOKEN, "next": "/"})
        assert login.status_code == 303 and COOKIE in login.cookies, login.text
        page = await http.get(f"{other_url}/")  # the client keeps the session cookie
        assert page.status_code == 200 and SERVICE in page.text and "gated" in page.text
        for path, named in (("/ui/history", SERVICE), ("/ui/environments", "gated"), ("/ui/audit", "/ui/login"),
                            (f"/ui/deployments/{deployment_id}", "awaiting approval")):
            other_page = await http.get(f"{other_url}{path}")
            assert other_page.status_code == 200 and named in other_page.text, (path, other_page.text[-500:])

        # an approval sent to the replica that does not lead becomes the Release's annotation, and
        # the leader acts on it
        approved = await http.post(f"{other_url}/deployments/{deployment_id}/approve", headers=admin)
        assert approved.status_code == 202, approved.text
        asked = approved.json()
        assert (asked["accepted"], asked["deployment_id"], asked["release"], asked["annotation"]) == (
            "approve", deployment_id, f"{rig.api.namespace}/{SERVICE}", rel.APPROVE)
        assert rig.release()["metadata"]["annotations"][rel.APPROVE] == asked["value"]
        assert asked["value"].endswith(" by local admin")
        await rig.until(lambda: rig.status().get("phase") == "succeeded", what="v1 deployed after the approval")
        assert rig.status()["handled"] == {rel.APPROVE: asked["value"]}
        again = await http.post(f"{lead_url}/deployments/{deployment_id}/approve", headers=admin)
        assert again.status_code == 409 and "has ended (succeeded)" in again.json()["detail"]

        # a dashboard button (here: roll back, confirmed) is the Release's annotation too
        shown = await http.get(f"{other_url}/ui/deployments/{deployment_id}")
        found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', shown.text)
        assert shown.status_code == 200 and found is not None
        button = await http.post(f"{other_url}/ui/deployments/{deployment_id}/rollback",
                                 data={CSRF_FIELD: found.group(1), "confirmed": "yes"})
        assert button.status_code == 303 and button.headers["location"].endswith("?done=rollback-sent")
        sent = rig.release()["metadata"]["annotations"][rel.ROLLBACK]
        assert sent.endswith(" by dashboard: local admin")
        await rig.until(lambda: rig.status().get("handled", {}).get(rel.ROLLBACK) == sent,
                        what="the rollback annotation handled")
        after = await http.get(f"{other_url}{button.headers['location']}")
        assert "Rollback sent to the deployment" in after.text and "Release; the operator acts on it" in after.text

    # with --no-api: /healthz and /metrics only
    async with served(other, token=None) as bare_url, httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{bare_url}/healthz")).status_code == 200
        assert (await http.get(f"{bare_url}/deployments", headers=admin)).status_code == 404
        assert (await http.get(f"{bare_url}/")).status_code == 404

    # the audit trail says who asked, and what was answered
    rows = [(r.actor, r.action, r.status) for r in leader.store.audit(limit=50)]
    assert ("local admin", f"POST /deployments/{deployment_id}/approve", 202) in rows
    assert ("local admin", "POST /deployments", 409) in rows
    assert ("dashboard: local admin", f"POST /ui/deployments/{deployment_id}/rollback", 303) in rows
    # RBAC allowed every call, and the operator's only patches of the Release are one annotation
    # under safeship.dev/ (never its spec)
    assert sorted({entry[1:4] for entry in rig.api.emulator.authorized if not entry[4]}) == []
    patches = _release_patches(rig)
    assert patches == [{"metadata": {"annotations": {rel.APPROVE: asked["value"]}}},
                       {"metadata": {"annotations": {rel.ROLLBACK: sent}}}]
    assert rig.release()["spec"]["version"] == "v1" and rig.release()["spec"]["replicas"] == 2


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump({"environment_management": {"environments": [
        {"name": "production", "platform": "kubernetes"}]}}))
    return path


@pytest.mark.parametrize(("token", "sentence"), [
    (None, "error: SAFESHIP_API_TOKEN: not set; the API needs its admin token (in the cluster, key `token` of the "
           "Secret safeship-api), or pass --no-api"),
    ("short", "error: SAFESHIP_API_TOKEN: 5 characters, but the API token must be at least 32 (make one with "
              "`openssl rand -hex 32`)"),
])
def test_a_missing_or_short_token_is_one_sentence_and_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, token: str | None,
        sentence: str) -> None:
    if token is None:
        monkeypatch.delenv("SAFESHIP_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SAFESHIP_API_TOKEN", token)
    with pytest.raises(SystemExit) as ended:
        main(["operator", "run", "--config", str(_config_file(tmp_path)), "--port", "1"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == sentence and err.count("\n") == 0


def test_a_bad_api_host_is_one_sentence_and_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFESHIP_API_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as ended:
        main(["operator", "run", "--config", str(_config_file(tmp_path)), "--api-host", "bad host/x"])
    assert ended.value.code == 2
    assert re.fullmatch(r"error: --api-host: 'bad host/x' is not a host name or IP address",
                        capsys.readouterr().err.strip())
