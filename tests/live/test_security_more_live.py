"""The local platform with real processes: an exec probe runs as the environment's run_as_user,
as the instance it checks does, never as the controller's (root) user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from test_local_platform import (  # type: ignore[import-not-found]
    LISTENER,
    MakePlatform,
    ProbeSpec,
    ledger,  # noqa: F401  (fixtures)
    make_platform,  # noqa: F401
    mark,  # noqa: F401
    spec,
    wait_for,
)

pytestmark = pytest.mark.live


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and /usr/bin/python3"
)
async def test_an_exec_probe_runs_as_run_as_user(make_platform: MakePlatform, mark: str) -> None:  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    platform = make_platform(run_as_user=lambda _service, _env: "nobody", enforce_memory_limit=False)
    tcp = ProbeSpec(kind="tcp", interval=0.2, failure_threshold=3)
    whoami = ProbeSpec(kind="exec", command=("sh", "-c", "id -u; exit 1"), interval=0.3, timeout=10.0,
                       failure_threshold=1, initial_delay=0.5)
    await platform.start(spec(mark, version="script", command=["/usr/bin/python3", "-c", LISTENER, "{port}"],
                              liveness=whoami, readiness=tcp, workdir="/"))
    failed = await wait_for(platform, lambda i: i.restarts >= 1)
    assert failed.last_failure == f"liveness failed 1 times: exit code 1: {nobody.pw_uid}"
