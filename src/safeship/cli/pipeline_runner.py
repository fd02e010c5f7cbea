"""Runs a service's pipeline stages in order, each a process of its own, and reports each one.

Every stage runs without a shell, in a new session (so a timeout reaches the children it
started), with its output (stdout and stderr together) written to `<run_dir>/<stage>.log`. The
first stage that fails (a non-zero exit, a timeout, a program that cannot be started, or an
artifact it did not produce) stops the run; the stages after it are `skipped`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safeship.config.pipeline import PipelineStage, fill
from safeship.store import sha256_of

POLL_S = 0.2  # how often a running stage is looked at (exit, timeout, last output line)
TERM_GRACE_S = 5.0  # SIGTERM .. SIGKILL for a stage that timed out
KILL_WAIT_S = 10.0  # after SIGKILL; only a process stuck in the kernel takes this long


@dataclass
class StageResult:
    name: str
    status: str = "pending"  # pending, running, passed, failed, timed_out, skipped
    log_path: str = ""
    started_at: float | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    detail: str = ""  # why it failed, in one sentence
    last_line: str = ""  # the last line of its output, for the live summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Artifact:
    stage: str
    path: str  # absolute
    sha256: str


@dataclass
class PipelineOutcome:
    stages: list[StageResult]
    artifact: Artifact | None = None

    @property
    def failed(self) -> StageResult | None:
        return next((s for s in self.stages if s.status in ("failed", "timed_out")), None)


def stage_dir(base_dir: Path, stage: PipelineStage) -> Path:
    """The stage's working directory: `cwd` relative to the config file's folder."""
    return (base_dir / stage.cwd).resolve()


def program(argv: Sequence[str]) -> list[str]:
    """`python` and `python3` mean safeship's own interpreter (with its virtualenv), as they do
    in a local service's command."""
    args = list(argv)
    if args[0] in ("python", "python3"):
        args[0] = sys.executable
    return args


def run_pipeline(
    stages: Sequence[PipelineStage],
    *,
    values: Mapping[str, str],
    base_dir: Path,
    run_dir: Path,
    on_change: Callable[[list[StageResult]], None] = lambda _: None,
) -> PipelineOutcome:
    """Run `stages` in order until one fails. `values` fills the placeholders; `on_change` is
    called with every result whenever one changes (and about every POLL_S while a stage runs)."""
    filled = dict(values)
    results = [StageResult(name=s.name, log_path=str(run_dir / f"{s.name}.log")) for s in stages]
    outcome = PipelineOutcome(results)
    for stage, result in zip(stages, results, strict=True):
        if outcome.failed is not None:
            result.status = "skipped"
            continue
        _run_stage(stage, result, filled, base_dir, lambda: on_change(results))
        if result.status == "passed" and stage.artifact is not None:
            outcome.artifact = _artifact(stage, result, filled, base_dir)
        on_change(results)
    return outcome


def _artifact(stage: PipelineStage, result: StageResult, values: Mapping[str, str], base_dir: Path) -> Artifact | None:
    assert stage.artifact is not None
    path = stage_dir(base_dir, stage) / fill(stage.artifact, dict(values))
    try:
        digest = sha256_of(path)
    except OSError as exc:
        result.status = "failed"
        result.detail = (f"it passed but did not produce its artifact {path} "
                         f"({exc.strerror or exc})")
        return None
    return Artifact(stage=stage.name, path=str(path.resolve()), sha256=digest)


def _run_stage(stage: PipelineStage, result: StageResult, values: Mapping[str, str], base_dir: Path,
               tick: Callable[[], None]) -> None:
    argv = program([fill(arg, dict(values)) for arg in stage.command])
    env = dict(os.environ)
    env.update({name: fill(text, dict(values)) for name, text in stage.env.items()})
    log_path = Path(result.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result.status, result.started_at = "running", time.time()
    began = time.monotonic()
    tick()
    with open(log_path, "ab") as log:
        log.write(f"--- safeship: {' '.join(argv)} (in {stage_dir(base_dir, stage)}) ---\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=stage_dir(base_dir, stage), start_new_session=True,
            )
        except OSError as exc:
            result.status, result.duration_s = "failed", time.monotonic() - began
            result.detail = f"{argv[0]} could not be started: {exc.strerror or exc}"
            log.write(f"--- safeship: {result.detail} ---\n".encode())
            return
        try:
            code = _wait(process, stage.timeout, began, result, log_path, tick)
        except BaseException:  # Ctrl-C or a bug: the stage's processes never outlive the run
            _kill_group(process)
            raise
        result.duration_s = time.monotonic() - began
        result.last_line = _last_line(log_path) or result.last_line
        if code is None:
            result.status = "timed_out"
            result.detail = f"it did not finish within its timeout of {stage.timeout:g}s and was killed"
        elif code == 0:
            result.status, result.exit_code = "passed", 0
        else:
            result.status, result.exit_code = "failed", code
            result.detail = (f"killed by signal {-code}" if code < 0 else f"it exited with code {code}")
        log.write(f"--- safeship: {result.status}{': ' + result.detail if result.detail else ''} ---\n".encode())


def _wait(process: subprocess.Popen[bytes], timeout: float, began: float, result: StageResult,
          log_path: Path, tick: Callable[[], None]) -> int | None:
    """The exit code, or None after killing the process group at the timeout."""
    while time.monotonic() - began < timeout:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=min(POLL_S, max(0.0, timeout - (time.monotonic() - began))))
            _kill_group(process)  # children it left running in its group
            return code
        result.last_line = _last_line(log_path) or result.last_line
        result.duration_s = time.monotonic() - began
        tick()
    _kill_group(process)
    return None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the stage's process group, SIGKILL it after TERM_GRACE_S; reaps the process."""
    for signum, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        if process.poll() is not None and not _group_alive(process.pid):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            if not _group_alive(process.pid):
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _last_line(path: Path, size: int = 2048) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("--- safeship")]
    return lines[-1] if lines else ""
