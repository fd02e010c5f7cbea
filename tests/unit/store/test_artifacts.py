"""Build artifacts and pipeline runs in the store; the deploy-time check; the local platform
running a registered release (verified, unpacked once, a changed file refused)."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeship.engine.gates import check_artifact
from safeship.errors import ConflictError, InputError, PermanentError
from safeship.platforms.base import InstanceSpec
from safeship.platforms.local import ARTIFACT_ENV, LocalPlatform, unpack_release
from safeship.store import ArtifactRecord, PipelineRunRecord, Store, sha256_of


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield opened
    finally:
        opened.close()


def tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def register(store: Store, path: Path, version: str = "v1", run_id: str = "run-1") -> ArtifactRecord:
    record = ArtifactRecord(service="svc", version=version, path=str(path), sha256=sha256_of(path), run_id=run_id,
                            registered_at=1.0)
    store.register_artifact(record)
    return record


def test_an_artifact_is_registered_per_version_and_replaced_by_a_rebuild(store: Store, tmp_path: Path) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    assert store.artifact("svc", "v1") is None
    register(store, first)
    register(store, first, version="v2", run_id="run-2")
    rebuilt = register(store, second, run_id="run-3")
    assert store.artifact("svc", "v1") == rebuilt
    found = store.artifact("svc", "v2")
    assert found is not None and found.run_id == "run-2"
    assert store.artifact("other", "v1") is None


def test_pipeline_runs_round_trip_newest_first(store: Store) -> None:
    stages = [{"name": "test", "status": "passed", "duration_s": 1.5, "log_path": "/x/test.log"}]
    old = PipelineRunRecord(id="run-a", service="svc", version="v1", environment="prod", status="running",
                            started_at=10.0, stages=stages)
    store.save_pipeline_run(old)
    store.save_pipeline_run(old.replace(status="succeeded", finished_at=12.0, deployment_id="deploy-1",
                                        artifact_path="/x/r.tgz", artifact_sha256="ab" * 32))
    store.save_pipeline_run(PipelineRunRecord(id="run-b", service="svc", version="v2", environment="prod",
                                              status="failed", started_at=20.0, stages=[], message="stage 'x'"))
    store.save_pipeline_run(PipelineRunRecord(id="run-c", service="other", version="v2", environment="prod",
                                              status="failed", started_at=30.0, stages=[]))
    runs = store.pipeline_runs(service="svc")
    assert [r.id for r in runs] == ["run-b", "run-a"]
    assert runs[1].status == "succeeded" and runs[1].stages == stages and runs[1].deployment_id == "deploy-1"
    assert store.get_pipeline_run("run-a") == runs[1]
    assert len(store.pipeline_runs()) == 3
    with pytest.raises(InputError, match="run-z"):
        store.get_pipeline_run("run-z")


def test_check_artifact_passes_unbuilt_and_intact_versions_and_refuses_changed_bytes(store: Store,
                                                                                     tmp_path: Path) -> None:
    check_artifact(store, "svc", "v1")  # no pipeline built it: passes
    path = tmp_path / "release.tgz"
    path.write_bytes(b"tested bytes")
    record = register(store, path)
    check_artifact(store, "svc", "v1")
    path.write_bytes(b"other bytes")
    with pytest.raises(ConflictError) as changed:
        check_artifact(store, "svc", "v1")
    message = str(changed.value)
    assert str(path) in message and record.sha256 in message and sha256_of(path) in message
    path.unlink()
    with pytest.raises(ConflictError, match="the file is missing"):
        check_artifact(store, "svc", "v1")


def test_a_tarball_release_is_verified_and_unpacked_once(tmp_path: Path) -> None:
    path = tarball(tmp_path / "r.tar.gz", {"app/main.py": "print('hi')\n", "RELEASE": "v1\n"})
    record = ArtifactRecord("svc", "v1", str(path), sha256_of(path), "run-1", 1.0)
    folder = unpack_release(tmp_path / "releases", record)
    assert folder is not None and folder.parent == tmp_path / "releases" / "svc"
    assert (folder / "app" / "main.py").read_text() == "print('hi')\n"
    (folder / "RELEASE").write_text("touched\n")
    assert unpack_release(tmp_path / "releases", record) == folder  # already there: not unpacked again
    assert (folder / "RELEASE").read_text() == "touched\n"
    plain = tmp_path / "tool.pyz"
    plain.write_bytes(b"zipapp")
    assert unpack_release(tmp_path / "releases", ArtifactRecord("svc", "v2", str(plain), sha256_of(plain),
                                                                "run-2", 1.0)) is None
    path.write_bytes(b"not what was tested")
    with pytest.raises(PermanentError, match="changed: expected sha256"):
        unpack_release(tmp_path / "releases", record)


def test_a_tarball_leaving_its_folder_is_refused(tmp_path: Path) -> None:
    path = tarball(tmp_path / "evil.tar", {"../outside.txt": "x"})
    record = ArtifactRecord("svc", "v1", str(path), sha256_of(path), "run-1", 1.0)
    with pytest.raises(PermanentError, match="could not be unpacked"):
        unpack_release(tmp_path / "releases", record)
    assert not (tmp_path / "releases" / "svc" / "outside.txt").exists()
    assert not (tmp_path / "outside.txt").exists()


def _spec(command: list[str]) -> InstanceSpec:
    return InstanceSpec(service="svc", environment="prod", version="v1", index=0, command=command)


def test_the_local_platform_runs_the_registered_release(store: Store, tmp_path: Path) -> None:
    """The instance's process runs in the unpacked release and gets the file's path; it writes
    what it sees to a file and exits (the platform would restart it; it is stopped at once)."""
    out = tmp_path / "seen.txt"
    path = tarball(tmp_path / "r.tgz", {"RELEASE": "svc v1\n"})
    register(store, path)
    script = (f"import os; open({str(out)!r}, 'w').write(open('RELEASE').read() + os.environ['{ARTIFACT_ENV}'] "
              f"+ '|' + os.getcwd()); import time; time.sleep(60)")

    async def scenario() -> None:
        platform = LocalPlatform(state_dir=tmp_path / "state", ledger=store, enforce_memory_limit=False)
        try:
            instance = await platform.start(_spec(["python", "-c", script, "{artifact}"]))
            for _ in range(200):
                if out.exists() and "|" in out.read_text():
                    break
                await asyncio.sleep(0.05)
            await platform.stop(instance, drain=0)
        finally:
            await platform.close(stop_instances=True)

    asyncio.run(scenario())
    release, _, cwd = out.read_text().partition("|")
    assert release == f"svc v1\n{path}"
    assert Path(cwd).parent == tmp_path / "state" / "releases" / "svc"


def test_an_artifact_placeholder_without_an_artifact_is_bad_input(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        platform = LocalPlatform(state_dir=tmp_path / "state", ledger=store, enforce_memory_limit=False)
        try:
            with pytest.raises(InputError, match="no build artifact is registered"):
                await platform.start(_spec(["python", "{artifact}"]))
        finally:
            await platform.close(stop_instances=True)

    asyncio.run(scenario())


def test_a_changed_release_is_not_started(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "tool.pyz"
    path.write_bytes(b"tested")
    register(store, path)
    path.write_bytes(b"changed")

    async def scenario() -> None:
        platform = LocalPlatform(state_dir=tmp_path / "state", ledger=store, enforce_memory_limit=False)
        try:
            with pytest.raises(PermanentError, match="changed: expected sha256"):
                await platform.start(_spec(["python", "{artifact}"]))
            assert await platform.instances("svc", "prod") == []
        finally:
            await platform.close(stop_instances=True)

    asyncio.run(scenario())
