"""`safeship pipeline run` and `safeship pipeline history` (see docs/pipeline.md).

`run` checks everything it can before a stage starts (the service, its pipeline, the version,
the environment, the strategy, the analysis policy, that nothing else deploys there); an error
there is bad input (exit 2) and nothing is recorded. Then it runs the service's stages in order
(pipeline_runner), records the run in the store after every stage, registers the artifact the
build stage produced as the version's release once every stage passed, and deploys the version
the way `deployment-engine --deploy` does. Exit codes: 1 when a stage fails (the message names the
stage and its log), else the deployment's (0 promoted, 1 rolled back, failed or cancelled).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table
from rich.text import Text

from safeship.cli import output
from safeship.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_common,
    check_platform,
    clean,
    emit,
    known_environment,
    known_service,
    load,
    open_store,
    policy_for,
    require,
    when,
)
from safeship.cli.pipeline_runner import StageResult, run_pipeline, stage_dir
from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.config.names import check_name
from safeship.config.paths import state_dir
from safeship.config.pipeline import check_stages
from safeship.errors import ConfigError, ConflictError, InputError, SafeshipError
from safeship.store import ArtifactRecord, PipelineRunRecord, Store, new_id

_STYLES = {"passed": "green", "failed": "red", "timed_out": "red", "running": "yellow", "skipped": "dim",
           "pending": "dim"}


def add_parser(sub: Any) -> None:
    """The `pipeline` subcommand and its own subcommands, on `safeship`'s subparsers."""
    pipeline = sub.add_parser("pipeline", help="run a service's pipeline and deploy what it built, or list runs")
    actions = pipeline.add_subparsers(dest="pipeline_command", required=True)
    run = actions.add_parser("run", help="run the stages of --service for --version, then deploy it to --environment")
    run.add_argument("--service", required=True, help="the service, as named under services: in the config")
    run.add_argument("--version", required=True, help="the version to build and deploy, e.g. v1.4.0")
    run.add_argument("--environment", required=True, help="the environment to deploy to, e.g. production")
    run.add_argument("--strategy", help="blue_green | canary | rolling | recreate (default: selected, with a reason)")
    run.add_argument("--policy", default="safeship", help="analysis policy: safeship, seed, flagger, argo, kayenta")
    run.add_argument("--override-freeze", metavar="REASON",
                     help="deploy inside a freeze window; the reason is recorded")
    add_common(run)
    history = actions.add_parser("history", help="list the pipeline runs of --service, newest first")
    history.add_argument("--service", required=True, help="the service, as named under services: in the config")
    history.add_argument("--limit", type=int, default=20, help="how many runs to list (default: %(default)s)")
    add_common(history)


def main(args: argparse.Namespace) -> int:
    config = load(args.config)
    store = open_store(config, args.config)
    try:
        if args.pipeline_command == "history":
            return history(args, config, store)
        return run(args, config, store)
    finally:
        store.close()


# ---------------------------------------------------------------- history


def run_json(record: PipelineRunRecord) -> dict[str, Any]:
    finished = record.finished_at
    return {
        "id": record.id, "service": record.service, "version": record.version,
        "environment": record.environment, "status": record.status,
        "started_at": record.started_at, "finished_at": finished,
        "duration_s": None if finished is None else round(finished - record.started_at, 3),
        "stages": [{k: v for k, v in stage.items() if k != "last_line"} for stage in record.stages],
        "artifact": None if record.artifact_path is None else {"path": record.artifact_path,
                                                                "sha256": record.artifact_sha256},
        "deployment_id": record.deployment_id, "message": record.message,
    }


def history(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    known_service(config, args.service, args.config)
    if not 1 <= args.limit <= 1000:
        raise InputError(f"--limit must be between 1 and 1000, got {args.limit}")
    rows = [run_json(r) for r in store.pipeline_runs(service=args.service, limit=args.limit)]
    emit(rows, as_json=args.json, text=lambda: _show_history(args.service, rows))
    return EXIT_OK


def _show_history(service: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        output.console.print(f"no pipeline runs of {service} yet; start one with `safeship pipeline run`")
        return
    table = Table(title=f"pipeline runs of {service}")
    for column in ("run", "version", "environment", "started", "took", "status", "stages", "artifact sha256",
                   "deployment"):
        table.add_column(column)
    for row in rows:
        stages = ", ".join(f"{s['name']} {s['status']}"
                           + ("" if s.get("duration_s") is None else f" {s['duration_s']:.1f}s")
                           for s in row["stages"])
        took = "-" if row["duration_s"] is None else f"{row['duration_s']:.1f}s"
        sha = (row["artifact"] or {}).get("sha256") or "-"
        table.add_row(row["id"], clean(row["version"]), clean(row["environment"]), when(row["started_at"]), took,
                      Text(row["status"], style=_STYLES.get(row["status"], "")), stages, sha[:16],
                      row["deployment_id"] or "-")
    output.console.print(table)
    for row in rows:
        if row["status"] == "failed" and row["message"]:
            output.console.print(f"{row['id']}: {clean(row['message'])}")


# ---------------------------------------------------------------- run


def _check(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> DeploymentRequest:
    """Everything that can be refused before a stage starts; raises InputError or ConflictError."""
    from safeship.engine.engine import validate_request

    service_name = check_name("service", require(args.service, "--service", "pipeline run"), field="--service")
    known_service(config, service_name, args.config)
    version = check_name("version", require(args.version, "--version", "pipeline run"), field="--version")
    environment = known_environment(config, require(args.environment, "--environment", "pipeline run"),
                                    args.config)
    service = config.services[service_name]
    field = f"services.{service_name}.pipeline"
    if not service.pipeline:
        raise ConfigError(args.config, field, f"{service_name} declares no pipeline stages, so there is "
                          "nothing to run (see docs/pipeline.md)")
    try:
        check_stages(service.pipeline)
    except ValueError as exc:
        raise ConfigError(args.config, field, str(exc)) from None
    base = Path(args.config).resolve().parent
    for index, stage in enumerate(service.pipeline):
        folder = stage_dir(base, stage)
        if not folder.is_dir():
            raise ConfigError(args.config, f"{field}[{index}].cwd",
                              f"stage {stage.name!r} runs in {folder}, which is not a directory")
    strategy = None
    if args.strategy:
        try:
            strategy = DeploymentStrategy.parse(args.strategy)
        except ValueError as exc:
            raise InputError(f"--strategy: {exc}") from None
    policy_for(args.policy)
    check_platform(environment, args.config)
    request = DeploymentRequest(service_name=service_name, version=version, environment=environment.name,
                                deployment_strategy=strategy, override_freeze=args.override_freeze,
                                requested_by=os.environ.get("USER", ""))
    validate_request(config, store, request, policy_for=policy_for)
    if store.current_version(service_name, environment.name) == version:
        raise ConflictError(f"{service_name} {version} already serves {environment.name}; nothing to deploy")
    return request


def run(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    request = _check(args, config, store)
    service, version, environment = request.service_name, request.version, request.environment
    stages = config.services[service].pipeline
    run_id = new_id("run")
    run_dir = (state_dir(config, args.config) / "pipelines" / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = PipelineRunRecord(id=run_id, service=service, version=version, environment=environment,
                               status="running", started_at=time.time(),
                               stages=[StageResult(s.name, log_path=str(run_dir / f"{s.name}.log")).as_dict()
                                       for s in stages])
    store.save_pipeline_run(record)
    if not args.json:
        output.console.print(f"{run_id}: {service} {version}, {len(stages)} stage(s), then deploy to {environment}; "
                             f"logs in {run_dir}")
    saved = [record]

    def save(results: list[StageResult]) -> None:
        """Write the run when a stage's status changes (not on every look at a running stage)."""
        if [r.status for r in results] != [s["status"] for s in saved[0].stages]:
            saved[0] = saved[0].replace(stages=[r.as_dict() for r in results])
            store.save_pipeline_run(saved[0])

    values = {"version": version, "run_dir": str(run_dir)}
    base = Path(args.config).resolve().parent
    try:
        if args.json:
            outcome = run_pipeline(stages, values=values, base_dir=base, run_dir=run_dir, on_change=save)
        elif not output.console.is_terminal:  # a log or a CI job: one line per change of status
            def lines(results: list[StageResult]) -> None:
                before = [s["status"] for s in saved[0].stages]
                save(results)
                for result, was in zip(results, before, strict=True):
                    if result.status != was:
                        output.console.print(_line(result))

            outcome = run_pipeline(stages, values=values, base_dir=base, run_dir=run_dir, on_change=lines)
        else:
            with Live(_summary(saved[0].stages, version), console=output.console, refresh_per_second=4,
                      transient=False) as live:
                def show(results: list[StageResult]) -> None:
                    save(results)
                    live.update(_summary([r.as_dict() for r in results], version))

                outcome = run_pipeline(stages, values=values, base_dir=base, run_dir=run_dir, on_change=show)
    except BaseException:
        saved[0] = saved[0].replace(status="failed", finished_at=time.time(), message="interrupted")
        with contextlib.suppress(SafeshipError):
            store.save_pipeline_run(saved[0])
        raise
    record = saved[0].replace(stages=[r.as_dict() for r in outcome.stages])
    if outcome.artifact is not None:
        record = record.replace(artifact_path=outcome.artifact.path, artifact_sha256=outcome.artifact.sha256)
    failed = outcome.failed
    if failed is not None:
        message = (f"stage {failed.name!r} failed: {failed.detail}; nothing was deployed; "
                   f"its output is in {failed.log_path}")
        record = record.replace(status="failed", finished_at=time.time(), message=message)
        store.save_pipeline_run(record)
        if args.json:
            emit(run_json(record), as_json=True, text=lambda: None)
        else:
            output.console.print(f"error: {run_id}: {clean(message)}", style="red")
        return EXIT_FAILED
    if outcome.artifact is not None:
        store.register_artifact(ArtifactRecord(service=service, version=version, path=outcome.artifact.path,
                                               sha256=outcome.artifact.sha256, run_id=run_id,
                                               registered_at=time.time()))
        if not args.json:
            output.console.print(f"artifact {outcome.artifact.path} (sha256 {outcome.artifact.sha256}) "
                                 f"registered as {service} {version}")
    record = record.replace(status="deploying")
    store.save_pipeline_run(record)
    return _deploy(args, config, store, record)


def _deploy(args: argparse.Namespace, config: SafeshipConfig, store: Store, record: PipelineRunRecord) -> int:
    """Deploy as `deployment-engine --deploy` does; record the deployment and its outcome."""
    from safeship.cli.deployment_engine import deploy

    before = {d.id for d in store.list_deployments(service=record.service, environment=record.environment,
                                                   limit=20)}
    deploy_args = argparse.Namespace(
        service=record.service, version=record.version, environment=record.environment, strategy=args.strategy,
        policy=args.policy, override_freeze=args.override_freeze, detach=False, json=args.json,
        config=args.config, render=False, events_before=store.last_event_id())
    captured = io.StringIO()
    code = EXIT_FAILED
    try:
        if args.json:
            with contextlib.redirect_stdout(captured):
                code = deploy(deploy_args, config, store)
        else:
            code = deploy(deploy_args, config, store)
    except BaseException as exc:  # refused at admission, the controller unreachable, Ctrl-C, a bug
        refused = isinstance(exc, InputError | ConflictError)
        record = record.replace(status="refused" if refused else "failed", finished_at=time.time(),
                                message=f"the deploy {'was refused' if refused else 'did not finish'}: "
                                        f"{exc or type(exc).__name__}")
        with contextlib.suppress(SafeshipError):
            store.save_pipeline_run(record)
        raise
    finally:
        started = [d for d in store.list_deployments(service=record.service, environment=record.environment,
                                                     limit=20)
                   if d.id not in before and d.version == record.version]
        if started:
            record = record.replace(deployment_id=started[0].id)
            with contextlib.suppress(SafeshipError):
                store.save_pipeline_run(record)
    deployment = store.get_deployment(record.deployment_id) if record.deployment_id else None
    status = deployment.phase if deployment is not None else ("succeeded" if code == EXIT_OK else "failed")
    message = f"deployment {deployment.id}: {deployment.phase} - {deployment.reason or ''}" if deployment else None
    record = record.replace(status=status, finished_at=time.time(), message=message)
    store.save_pipeline_run(record)
    if args.json:
        text = captured.getvalue().strip()
        try:
            shown: Any = json.loads(text) if text else None
        except ValueError:
            shown = text
        emit(run_json(record) | {"deployment": shown}, as_json=True, text=lambda: None)
    else:
        output.console.print(f"{record.id}: {record.service} {record.version} -> {record.environment}: {status}")
    return code


def _line(result: StageResult) -> str:
    elapsed = "" if result.duration_s is None or result.status == "running" else f" after {result.duration_s:.1f}s"
    detail = f": {result.detail}" if result.detail else ""
    last = f" | {result.last_line}" if result.last_line and result.status != "running" else ""
    return clean(f"[{result.name}] {result.status}{elapsed}{detail}{last}")


def _summary(stages: list[dict[str, Any]], version: str) -> Table:
    table = Table(title=f"pipeline for {version}", title_justify="left")
    for column in ("stage", "status", "elapsed", "last output"):
        table.add_column(column, overflow="ellipsis", no_wrap=column == "last output", max_width=80)
    for stage in stages:
        elapsed = stage.get("duration_s")
        table.add_row(stage["name"], Text(stage["status"], style=_STYLES.get(stage["status"], "")),
                      "-" if elapsed is None else f"{elapsed:.1f}s", clean(stage.get("last_line") or ""))
    return table
