"""The example service's real pipeline (ruff, its pytest tests, the release tarball, bandit) run by
`safeship pipeline run` against a real controller on the local platform: the instances run the
unpacked release that was built and tested, and changed bytes are refused at deploy."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit import ENV, REPO, ROUTE, SERVICE, Setup, controller_with

from safeship.api.client import ControllerClient
from safeship.store import ArtifactRecord, Store, sha256_of

pytestmark = pytest.mark.live


def example_pipeline() -> list[dict[str, Any]]:
    """examples/safeship.yaml's stages, their folders made absolute (the test's config is elsewhere)."""
    example = yaml.safe_load((REPO / "examples" / "safeship.yaml").read_text())
    stages: list[dict[str, Any]] = example["services"][SERVICE]["pipeline"]
    for stage in stages:
        stage["cwd"] = str((REPO / "examples" / stage.get("cwd", ".")).resolve())
    return stages


def with_pipeline(text: str) -> str:
    document = yaml.safe_load(text)
    document["services"][SERVICE]["pipeline"] = example_pipeline()
    return yaml.safe_dump(document, sort_keys=False)


def cli(setup: Setup, command: str, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """An installed command (`safeship`, `deployment-engine`) of this interpreter's environment."""
    return subprocess.run(
        [str(Path(sys.executable).with_name(command)), *argv, "--config", str(setup.config)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=timeout,
    )


def get(port: int) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Version") or ""
    finally:
        connection.close()


def test_the_example_pipeline_builds_tests_scans_and_deploys_its_release(tmp_path: Path) -> None:
    with controller_with(tmp_path, with_pipeline) as setup:
        result = cli(setup, "safeship", "pipeline", "run", "--service", SERVICE,
                     "--version", "v1.4.0", "--environment", ENV)
        print(result.stdout[-4000:], result.stderr[-2000:])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        for stage in ("quality", "test", "build", "scan"):
            assert f"[{stage}] passed" in result.stdout

        shown = cli(setup, "safeship", "pipeline", "history", "--service", SERVICE, "--json")
        assert shown.returncode == 0, shown.stderr
        run = json.loads(shown.stdout)[0]
        assert run["status"] == "succeeded"
        assert [(s["name"], s["status"]) for s in run["stages"]] == [
            ("quality", "passed"), ("test", "passed"), ("build", "passed"), ("scan", "passed")]
        assert "5 passed" in Path(run["stages"][1]["log_path"]).read_text()
        tarball = Path(run["artifact"]["path"])
        digest = run["artifact"]["sha256"]
        assert digest == sha256_of(tarball)
        assert Path(f"{tarball}.sha256").read_text().split()[0] == digest  # the build's own sha256 file

        # Every instance of v1.4.0 runs in the release unpacked from exactly that tarball.
        release = setup.state_dir / "releases" / SERVICE / f"v1.4.0-{digest[:16]}"
        assert (release / "RELEASE").read_text() == "user-service v1.4.0\n"
        instances = [r for r in setup.ledger() if r.get("version") == "v1.4.0" and r.get("pid")]
        assert len(instances) == 2
        for record in instances:
            assert Path(os.readlink(f"/proc/{record['pid']}/cwd")) == release
        port = ControllerClient(setup.state_dir).routes()[ROUTE]
        assert port is not None
        assert get(int(port)) == (200, "v1.4.0")

        # A release whose bytes changed after its run is refused by the controller; nothing starts.
        changed = tmp_path / "v1.6.0.tar.gz"
        changed.write_bytes(tarball.read_bytes())
        store = Store(f"sqlite:///{setup.state_dir}/state.db")
        try:
            store.register_artifact(ArtifactRecord(service=SERVICE, version="v1.6.0", path=str(changed),
                                                   sha256=sha256_of(changed), run_id=run["id"],
                                                   registered_at=time.time()))
        finally:
            store.close()
        changed.write_bytes(changed.read_bytes() + b"\0")
        refused = cli(setup, "deployment-engine", "--deploy", "--service", SERVICE,
                      "--version", "v1.6.0", "--environment", ENV, timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert str(changed) in refused.stderr and sha256_of(changed) in refused.stderr
        assert {r.get("version") for r in setup.ledger()} == {"v1.4.0"}
        assert get(int(port)) == (200, "v1.4.0")
