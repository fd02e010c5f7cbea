"""`safeship pipeline run` and `history` against the sim world: tiny `python -c` stages, real
processes, real files; what a user sees (exit codes, messages, logs, history, the store)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from safeship.cli import deployment_engine
from safeship.cli.main import main as safeship_main
from safeship.store import Store, sha256_of

REPO = Path(__file__).resolve().parents[3]

BASE = """
intelligent_deployment:
  strategies:
    canary: {traffic_percentages: [25, 100], step_duration: "1m"}
environment_management:
  environments:
    - {name: staging, type: staging, platform: sim}
    - {name: production, type: production, platform: sim}
services:
  user-service:
    replicas: 2
    versions: [v1.2.0, v1.3.0, v1.4.0]
    simulate:
      v1.3.0: {error_rate: 0.2}
  no-pipeline:
    replicas: 1
"""

OK = ["python", "-c", "print('all good')"]
BUILD = ["python", "-c", "import sys; open(sys.argv[1], 'w').write('release ' + sys.argv[2])",
         "{run_dir}/release-{version}.txt", "{version}"]


def write_config(folder: Path, stages: list[dict[str, Any]]) -> Path:
    document = yaml.safe_load(BASE)
    document["services"]["user-service"]["pipeline"] = stages
    path = folder / "safeship.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = safeship_main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def run(config: Path, capsys: pytest.CaptureFixture[str], version: str = "v1.2.0",
        environment: str = "staging", *extra: str) -> tuple[int, str, str]:
    return call(capsys, "pipeline", "run", "--service", "user-service", "--version", version,
                "--environment", environment, "--config", str(config), *extra)


def history(config: Path, capsys: pytest.CaptureFixture[str], service: str = "user-service") -> list[dict[str, Any]]:
    code, out, err = call(capsys, "pipeline", "history", "--service", service, "--config", str(config), "--json")
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def open_store(config: Path) -> Store:
    return Store(f"sqlite:///{config.parent / '.safeship' / 'state.db'}")


def test_a_failing_test_stage_stops_before_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = tmp_path / "built-marker"
    config = write_config(tmp_path, [
        {"name": "quality", "command": OK},
        {"name": "test", "command": ["python", "-c", "import sys; print('1 passed, 2 failed'); sys.exit(3)"]},
        {"name": "build", "command": ["python", "-c", f"open({str(built)!r}, 'w').write('x')"],
         "artifact": str(built)},
        {"name": "scan", "command": OK},
    ])
    code, out, err = run(config, capsys)
    assert code == 1, out + err
    rows = history(config, capsys)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "failed"
    assert [(s["name"], s["status"]) for s in row["stages"]] == [
        ("quality", "passed"), ("test", "failed"), ("build", "skipped"), ("scan", "skipped")]
    failed = row["stages"][1]
    assert failed["exit_code"] == 3
    log = Path(failed["log_path"])
    assert log == config.parent / ".safeship" / "pipelines" / row["id"] / "test.log"
    assert "1 passed, 2 failed" in log.read_text()
    assert "stage 'test' failed" in out and str(log) in out.replace("\n", "")
    assert "stage 'test' failed" in row["message"]
    assert not built.exists()  # the build never ran
    assert row["artifact"] is None and row["deployment_id"] is None
    store = open_store(config)
    try:
        assert store.artifact("user-service", "v1.2.0") is None
        assert store.list_deployments(service="user-service") == []
    finally:
        store.close()


def test_the_artifact_is_registered_deployed_and_checked_at_deploy(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [
        {"name": "test", "command": OK, "env": {"RELEASE_VERSION": "{version}"}},
        {"name": "build", "command": BUILD, "artifact": "{run_dir}/release-{version}.txt"},
        {"name": "scan", "command": ["python", "-c", "import os; print('scanned', os.environ['SCAN_LEVEL'])"],
         "env": {"SCAN_LEVEL": "medium"}},
    ])
    code, out, err = run(config, capsys, "v1.2.0", "staging")
    assert code == 0, out + err
    row = history(config, capsys)[0]
    assert row["status"] == "succeeded"
    assert [s["status"] for s in row["stages"]] == ["passed", "passed", "passed"]
    artifact = Path(row["artifact"]["path"])
    assert artifact == config.parent / ".safeship" / "pipelines" / row["id"] / "release-v1.2.0.txt"
    assert artifact.read_text() == "release v1.2.0"
    assert row["artifact"]["sha256"] == sha256_of(artifact)
    assert "scanned medium" in Path(row["stages"][2]["log_path"]).read_text()
    store = open_store(config)
    try:
        registered = store.artifact("user-service", "v1.2.0")
        assert registered is not None
        assert (registered.path, registered.sha256, registered.run_id) == (str(artifact), row["artifact"]["sha256"],
                                                                           row["id"])
        deployment = store.get_deployment(row["deployment_id"])
        assert (deployment.version, deployment.environment, deployment.phase) == ("v1.2.0", "staging", "succeeded")
    finally:
        store.close()

    # The same bytes deploy elsewhere; changed bytes are refused, naming the file and both hashes.
    expected = row["artifact"]["sha256"]
    artifact.write_text("release v1.2.0 with a backdoor")
    found = sha256_of(artifact)
    code, out, err = call(capsys, "pipeline", "history", "--service", "user-service", "--config", str(config))
    assert code == 0 and row["id"] in out
    try:
        code = deployment_engine.main(["--deploy", "--service", "user-service", "--version", "v1.2.0",
                                       "--environment", "production", "--config", str(config)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert str(artifact) in err and expected in err and found in err
    artifact.unlink()
    try:
        code = deployment_engine.main(["--deploy", "--service", "user-service", "--version", "v1.2.0",
                                       "--environment", "production", "--config", str(config)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and "the file is missing" in err and expected in err
    store = open_store(config)
    try:
        assert store.list_deployments(environment="production") == []  # nothing started
    finally:
        store.close()


def test_the_exit_code_follows_the_deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"name": "build", "command": BUILD,
                                      "artifact": "{run_dir}/release-{version}.txt"}])
    assert run(config, capsys, "v1.2.0", "production")[0] == 0
    code, out, err = run(config, capsys, "v1.3.0", "production", "--strategy", "canary", "--json")
    assert code == 1, out + err
    shown = json.loads(out)
    assert shown["status"] == "rolled_back" and shown["deployment"]["phase"] == "rolled_back"
    assert shown["deployment_id"] == shown["deployment"]["id"]
    rows = history(config, capsys)
    assert [(r["version"], r["status"]) for r in rows] == [("v1.3.0", "rolled_back"), ("v1.2.0", "succeeded")]


def test_a_planted_bandit_finding_fails_the_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example's own scan stage, run on a copy of the service with one medium-severity finding."""
    example = yaml.safe_load((REPO / "examples" / "safeship.yaml").read_text())
    scan = next(s for s in example["services"]["user-service"]["pipeline"] if s["name"] == "scan")
    package = tmp_path / "examples" / "user_service"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "loader.py").write_text(textwrap.dedent("""\
        import yaml


        def settings(text):
            return yaml.load(text)  # unsafe: any Python object
    """))
    config = write_config(tmp_path / "examples", [{"name": "test", "command": OK}, scan])
    code, out, err = run(config, capsys)
    assert code == 1, out + err
    row = history(config, capsys)[0]
    assert [(s["name"], s["status"]) for s in row["stages"]] == [("test", "passed"), ("scan", "failed")]
    assert "stage 'scan' failed" in row["message"]
    log = Path(row["stages"][1]["log_path"]).read_text()
    assert "B506" in log and "loader.py" in log
    assert row["deployment_id"] is None


def test_a_stage_past_its_timeout_is_killed_with_its_children(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    sleeper = ("import subprocess, sys, time; "
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
               "print('CHILD-PID', child.pid, flush=True); time.sleep(120)")
    config = write_config(tmp_path, [{"name": "test", "command": ["python", "-c", sleeper], "timeout": "3s"},
                                     {"name": "build", "command": BUILD}])
    code, out, err = run(config, capsys)
    assert code == 1, out + err
    row = history(config, capsys)[0]
    assert [s["status"] for s in row["stages"]] == ["timed_out", "skipped"]
    assert "timeout of 3s" in row["message"]
    log = Path(row["stages"][0]["log_path"]).read_text()
    child = int(log.split("CHILD-PID ")[-1].split()[0])
    for _ in range(50):  # the child was SIGKILLed with its group; init reaps it
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def test_a_program_that_cannot_start_fails_its_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"name": "quality", "command": ["no-such-linter-here", "--check"]}])
    code, out, err = run(config, capsys)
    assert code == 1, out + err
    row = history(config, capsys)[0]
    assert row["stages"][0]["status"] == "failed"
    assert "no-such-linter-here could not be started" in row["message"]


def test_a_build_without_its_artifact_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"name": "build", "command": OK, "artifact": "{run_dir}/missing.tgz"},
                                     {"name": "scan", "command": OK}])
    code, out, err = run(config, capsys)
    assert code == 1, out + err
    row = history(config, capsys)[0]
    assert [s["status"] for s in row["stages"]] == ["failed", "skipped"]
    assert "did not produce its artifact" in row["message"] and "missing.tgz" in row["message"]


@pytest.mark.parametrize(("argv", "stages", "expected"), [
    (["--service", "nope"], None, "there is no service 'nope'"),
    (["--service", "no-pipeline"], None, "services.no-pipeline.pipeline: no-pipeline declares no pipeline"),
    (["--environment", "moon"], None, "environment 'moon' is not configured"),
    (["--version", "v9.9.9"], None, "version 'v9.9.9' of user-service is not known"),
    (["--strategy", "yolo"], None, "--strategy"),
    (["--policy", "nope"], None, "nope"),
    ([], [{"name": "a", "command": OK}, {"name": "a", "command": OK}], "stage name 'a' is used twice"),
    ([], [{"name": "a", "command": OK, "cwd": "no/such/folder"}],
     "services.user-service.pipeline[0].cwd: stage 'a' runs in"),
    ([], [{"name": "a", "command": ["python", "{colour}"]}], "unknown placeholder {colour}"),
])
def test_bad_input_exits_2_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               argv: list[str], stages: list[dict[str, Any]] | None,
                                               expected: str) -> None:
    config = write_config(tmp_path, stages or [{"name": "build", "command": BUILD}])
    given = {"--service": "user-service", "--version": "v1.2.0", "--environment": "staging"}
    given.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    code, out, err = call(capsys, "pipeline", "run", *[x for kv in given.items() for x in kv],
                          "--config", str(config))
    assert code == 2, out + err
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / ".safeship" / "pipelines").exists() or not any((tmp_path / ".safeship" / "pipelines")
                                                                         .iterdir())
    if (tmp_path / ".safeship" / "state.db").exists() and "service 'nope'" not in expected:
        assert history(config, capsys) == []


def test_history_of_an_unknown_service_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"name": "build", "command": OK}])
    code, out, err = call(capsys, "pipeline", "history", "--service", "nope", "--config", str(config))
    assert code == 2 and "there is no service 'nope'" in err
    code, out, err = call(capsys, "pipeline", "history", "--service", "user-service", "--config", str(config))
    assert code == 0 and "no pipeline runs of user-service yet" in out


def test_a_version_already_serving_is_refused_before_any_stage(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    config = write_config(tmp_path, [{"name": "test", "command": ["python", "-c",
                                                                  f"open({str(marker)!r}, 'a').write('x')"]}])
    assert run(config, capsys)[0] == 0
    assert marker.read_text() == "x"
    code, out, err = run(config, capsys)
    assert code == 2 and "already serves staging" in err, out
    assert marker.read_text() == "x"  # no stage ran again
    assert len(history(config, capsys)) == 1


def test_the_cli_entry_point_runs_it(tmp_path: Path) -> None:
    """The installed `safeship` command, as a user types it (a separate process, the real exit code)."""
    import subprocess

    config = write_config(tmp_path, [{"name": "test", "command": ["python", "-c", "raise SystemExit(5)"]}])
    result = subprocess.run(
        [sys.executable, "-m", "safeship.cli.main", "pipeline", "run", "--service", "user-service",
         "--version", "v1.2.0", "--environment", "staging", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[test] failed" in result.stdout and "stage 'test' failed: it exited with code 5" in result.stdout
