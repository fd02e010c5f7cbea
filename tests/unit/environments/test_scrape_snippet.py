"""`environment-manager --prepare` of an environment with `traffic_source: prometheus` writes a
scrape config for the user's Prometheus and prints where; a real `promtool` (or, without it, a real
`prometheus` started briefly) accepts what it writes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from safeship.cli.environment_manager import main as environment_manager
from safeship.config.models import Environment, PrometheusSourceConfig
from safeship.environments.scrape import SNIPPET_FILE, TARGETS_FILE, snippet, write_scrape_config

PROMTOOL, PROMETHEUS = "/usr/bin/promtool", "/usr/bin/prometheus"
MAX_WAIT_S = 30.0  # a bound for a briefly started prometheus, never an expectation

CONFIG = """\
state_dir: state
store: {{url: "sqlite:///state/state.db"}}
environment_management:
  environments:
    - {{name: staging, type: staging, platform: local}}
    - name: production
      type: production
      platform: local
      traffic_source: prometheus
      prometheus: {{url: "http://127.0.0.1:9090", queries: safeship}}
services:
  user-service:
    replicas: 1
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
"""


def project(tmp_path: Path) -> Path:
    config = tmp_path / "safeship.yaml"
    config.write_text(CONFIG.format())
    return config


def prepare(config: Path, environment: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = environment_manager(["--prepare", "--environment", environment, "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def accepted(prometheus_yml: Path, tmp_path: Path) -> tuple[bool, str]:
    """Whether real Prometheus accepts the config: promtool when installed, else prometheus
    itself started on a free loopback port until it is ready (then stopped by its PID)."""
    if os.access(PROMTOOL, os.X_OK):
        done = subprocess.run([PROMTOOL, "check", "config", str(prometheus_yml)], capture_output=True,
                              text=True, timeout=60, check=False)
        return done.returncode == 0, done.stdout + done.stderr
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"neither {PROMTOOL} nor {PROMETHEUS} is installed (.ci/run installs prometheus)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen([PROMETHEUS, f"--config.file={prometheus_yml}",
                                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + MAX_WAIT_S
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                    return True, ""
            time.sleep(0.1)
        return False, log.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def full_config(snippet_file: Path, folder: Path) -> Path:
    """A whole prometheus.yml: a global block and the snippet's scrape_configs, pasted in."""
    document = yaml.safe_load(snippet_file.read_text())
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}, **document}))
    return path


def test_prepare_writes_the_snippet_and_prints_its_path(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = project(tmp_path)
    code, result = prepare(config, "production", capsys)
    assert code == 0, result
    state = (tmp_path / "state").resolve()
    folder = state / "environments" / "production"
    [line] = [c for c in result["checks"] if c["check"] == "prometheus scrape config"]
    assert line["ok"] is True
    assert str(folder / SNIPPET_FILE) in line["detail"]
    assert "not running" in line["detail"]  # no controller yet: no target
    document = yaml.safe_load((folder / SNIPPET_FILE).read_text())
    [job] = document["scrape_configs"]
    assert job["job_name"] == "safeship-production"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(state / "token")}
    assert job["file_sd_configs"] == [{"files": [str(folder / TARGETS_FILE)]}]
    assert job["metric_relabel_configs"] == [
        {"source_labels": ["environment"], "regex": "production", "action": "keep"}]
    assert json.loads((folder / TARGETS_FILE).read_text()) == []
    token = state / "token"  # Prometheus refuses a credentials file that is not there
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) >= 32
    ok, output = accepted(full_config(folder / SNIPPET_FILE, tmp_path), tmp_path)
    assert ok, output


def test_prepare_of_an_environment_measured_by_its_router_writes_no_snippet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(tmp_path)
    code, result = prepare(config, "staging", capsys)
    assert code == 0, result
    assert not [c for c in result["checks"] if c["check"] == "prometheus scrape config"]
    assert not (tmp_path / "state" / "environments" / "staging" / SNIPPET_FILE).exists()


def test_a_running_controller_is_the_target_and_prepare_again_follows_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "controller.json").write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 41234}))
    code, result = prepare(config, "production", capsys)
    assert code == 0, result
    targets = state / "environments" / "production" / TARGETS_FILE
    assert json.loads(targets.read_text()) == [{"targets": ["127.0.0.1:41234"]}]
    [line] = [c for c in result["checks"] if c["check"] == "prometheus scrape config"]
    assert "127.0.0.1:41234" in line["detail"]
    (state / "controller.json").write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 41999}))
    assert prepare(config, "production", capsys)[0] == 0
    assert json.loads(targets.read_text()) == [{"targets": ["127.0.0.1:41999"]}]


def test_real_prometheus_accepts_the_snippet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "token").write_text("secret-token\n")  # the controller's own, kept as it is
    (state / "controller.json").write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 41234}))
    assert prepare(config, "production", capsys)[0] == 0
    ok, output = accepted(full_config(state / "environments" / "production" / SNIPPET_FILE, tmp_path), tmp_path)
    assert ok, output
    assert (state / "token").read_text() == "secret-token\n"


def test_real_prometheus_accepts_the_snippet_with_a_haproxy_job(tmp_path: Path) -> None:
    environment = Environment(name="production", traffic_source="prometheus", router="haproxy",
                              prometheus=PrometheusSourceConfig(url="http://127.0.0.1:9090", queries="safeship"))
    state = tmp_path / "state"
    folder = state / "environments" / "production"
    folder.mkdir(parents=True)
    (state / "token").write_text("secret-token\n")
    document = snippet(environment, state, folder, haproxy="127.0.0.1:8405")
    assert [job["job_name"] for job in document["scrape_configs"]] == ["safeship-production", "haproxy-production"]
    assert document["scrape_configs"][1]["static_configs"] == [
        {"targets": ["127.0.0.1:8405"], "labels": {"environment": "production"}}]
    written = folder / SNIPPET_FILE
    written.write_text(yaml.safe_dump(document))
    (folder / TARGETS_FILE).write_text("[]\n")
    ok, output = accepted(full_config(written, tmp_path), tmp_path)
    assert ok, output


def test_the_haproxy_router_without_an_exporter_address_gets_the_controller_job_and_a_note(tmp_path: Path) -> None:
    environment = Environment(name="production", traffic_source="prometheus", router="haproxy",
                              prometheus=PrometheusSourceConfig(url="http://127.0.0.1:9090", queries="safeship"))
    folder = tmp_path / "environments" / "production"
    folder.mkdir(parents=True)
    detail = write_scrape_config(environment, tmp_path, folder)
    text = (folder / SNIPPET_FILE).read_text()
    jobs = [job["job_name"] for job in yaml.safe_load(text)["scrape_configs"]]
    assert jobs[0] == "safeship-production"
    if len(jobs) == 1:  # the router does not say where its exporter is
        assert "no job for it" in text
    else:
        assert jobs == ["safeship-production", "haproxy-production"]
        assert "HAProxy's exporter" in detail
