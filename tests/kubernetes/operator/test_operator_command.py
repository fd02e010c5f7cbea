"""`safeship operator run` as a process against the stand-in: it leads, rolls a first Release out
(until all traffic is on it; no Prometheus answers here, so its monitoring window is not judged),
answers /healthz and /metrics, and gives the Lease up on SIGTERM; a bad flag is one sentence and
exit code 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import LEASE_NAMESPACE, OperatorRig, operator_config, release_body

from safeship.cli.main import main

SAFESHIP = [sys.executable, "-m", "safeship.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except OSError:
        return 0, ""


async def test_the_command_runs_the_operator_and_releases_the_lease_on_sigterm(operator_rig: OperatorRig,
                                                                              tmp_path: Path) -> None:
    rig = operator_rig
    config = operator_config(rig.api, tmp_path / "state.db").model_dump(mode="json", exclude_unset=True)
    for environment in config["environment_management"]["environments"]:  # as the installed example is
        environment["traffic_source"] = "prometheus"
        environment["prometheus"] = {"url": f"http://127.0.0.1:{_free_port()}", "queries": "kubernetes",
                                     "timeout": "1s"}
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    env = {**os.environ, "POD_NAME": "operator-0", "POD_NAMESPACE": LEASE_NAMESPACE,
           "SAFESHIP_STORE_URL": f"sqlite:///{tmp_path / 'command.db'}", "SAFESHIP_API_TOKEN": "k" * 32}
    process = await asyncio.create_subprocess_exec(
        *SAFESHIP, "operator", "run", "--config", str(path), "--environment", "production", "--namespace",
        rig.api.namespace, "--port", str(port), "--kubeconfig", str(rig.api.kubeconfig), "--lease-duration", "3",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await rig.apply(release_body(rig.api, "v1", strategy=None))
        # (no Prometheus answers here: the process's deployment is followed until it serves v1)
        await rig.until(lambda: rig.status().get("weights") == {"v1": 100}, timeout=30, what="v1 by the process")
        assert rig.status()["leader"] == "operator-0" and rig.status()["version"] == "v1"
        code, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        assert code == 200 and json.loads(body)["leader"] is True, body
        code, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "safeship_operator_leader 1" in body and "safeship_operator_releases 1" in body
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lease = rig.api.read("coordination.k8s.io/v1", "Lease", "safeship-operator", LEASE_NAMESPACE)
    assert lease is not None and not lease["spec"].get("holderIdentity")  # given up: another takes it at once


def test_a_bad_environment_is_one_sentence_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"environment_management": {"environments": [
        {"name": "production", "platform": "kubernetes"}, {"name": "gated", "platform": "kubernetes"}]}}
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as ended:
        main(["operator", "run", "--config", str(path), "--environment", "nowhere"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --environment: 'nowhere' is not a kubernetes environment of "
                                               f"{path} (known: production, gated)")
