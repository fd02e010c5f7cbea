"""The crash-test hook: off without its variable, and a stop at exactly the boundary it names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeship.engine import faultpoint

CALLS = """
from safeship.engine.faultpoint import boundary
boundary("after", "progressing", 2, "canary")     # not the one named
boundary("before", "progressing", 3, "rolling")   # not the strategy named
boundary("before", "progressing", 4, "canary", was=("progressing", 3))  # already past it
print("reached", flush=True)
boundary("before", "progressing", 4, "canary", was=("progressing", 1))  # this one: 1 -> 4 passes 3
print("continued", flush=True)
boundary("before", "progressing", 3, "canary")    # once per process
print("done", flush=True)
"""


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


def test_without_the_variable_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faultpoint.ENV, raising=False)
    faultpoint.boundary("before", "progressing", 1, "canary")  # would stop this test's process
    for spec in ("", "sometime:progressing", "before", "before:progressing:x", "before:a:1:2"):
        monkeypatch.setenv(faultpoint.ENV, spec)
        assert faultpoint._wanted() is None, spec
    monkeypatch.setenv(faultpoint.ENV, "after:monitoring@recreate")
    assert faultpoint._wanted() == ("after", "monitoring", None, "recreate")


def test_the_process_stops_at_the_named_boundary_only_once() -> None:
    env = dict(os.environ, **{faultpoint.ENV: "before:progressing:3@canary"})
    child = subprocess.Popen([sys.executable, "-c", CALLS], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reached"
        deadline = time.monotonic() + 10
        while state(child.pid) != "T":
            assert time.monotonic() < deadline, "the process did not stop at the boundary"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=10)
        assert out.split() == ["continued", "done"] and child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
