"""deployment-engine: --deploy, --status, --cancel (the seed's usage guide, section 1)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from safeship.cli import output
from safeship.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    Parser,
    add_common,
    check_platform,
    deployment_json,
    emit,
    flush_notifications,
    guarded,
    known_environment,
    known_service,
    load,
    open_store,
    policy_for,
    require,
)
from safeship.config.models import DeploymentRequest, DeploymentStrategy, Environment, SafeshipConfig
from safeship.config.names import check_name
from safeship.config.paths import state_dir
from safeship.engine.engine import validate_request
from safeship.engine.phases import Phase, status_exit_code
from safeship.errors import ConflictError, InputError
from safeship.platforms import runs_in_controller
from safeship.store import DeploymentRecord, Store


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="deployment-engine", description="Deploy a version, follow it, cancel it.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--deploy", action="store_true", help="deploy --service/--version to --environment")
    action.add_argument("--status", action="store_true", help="show a deployment (--deployment-id)")
    action.add_argument("--cancel", action="store_true", help="cancel a deployment (--deployment-id)")
    action.add_argument("--list", action="store_true",
                        help="list recent deployments (optionally of --service and --environment)")
    action.add_argument("--approve", action="store_true",
                        help="approve a deployment awaiting approval (--deployment-id)")
    action.add_argument("--promote", action="store_true",
                        help="promote now: skip the remaining steps and analysis and give the candidate all "
                             "traffic (--deployment-id)")
    p.add_argument("--service", help="the service to deploy or list, as named under services: in the config")
    p.add_argument("--version", help="the version to deploy, e.g. v1.3.0")
    p.add_argument("--environment", help="the environment to deploy to or list, e.g. production")
    p.add_argument("--deployment-id", help="the id --deploy printed, e.g. deploy-1a2b3c4d")
    p.add_argument("--strategy", help="blue_green | canary | rolling | recreate (default: selected, with a reason)")
    p.add_argument("--policy", default="safeship", help="analysis policy: safeship, seed, flagger, argo, kayenta")
    p.add_argument("--detach", action="store_true", help="return the deployment id at once")
    p.add_argument("--watch", action="store_true",
                   help="with --status: print the deployment's progress (phase, step, weights, last decision) "
                        "as it changes, until it ends")
    p.add_argument("--override-freeze", metavar="REASON", help="deploy inside a freeze window; the reason is recorded")
    p.add_argument("--render", action="store_true",
                   help="with --deploy on a kubernetes environment: print the manifests the deploy would apply "
                        "at its start as YAML, and contact no cluster")
    p.add_argument("--approved-by", default=os.environ.get("USER", ""),
                   help="who approves or promotes (default: $USER)")
    add_common(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.render and not args.deploy:
        raise InputError("--render goes with --deploy (it prints what --deploy would apply)")
    if args.watch and not args.status:
        raise InputError("--watch goes with --status (it follows the deployment --status shows)")
    if args.watch and args.json:
        raise InputError("--watch prints lines for people; use --status --json for one JSON object")
    config = load(args.config)
    store = open_store(config, args.config)
    args.events_before = store.last_event_id()  # a notification sink new to the store starts after it
    try:
        if args.deploy and args.render:
            return render(args, config, store)
        if args.deploy:
            return deploy(args, config, store)
        if args.list:
            known_service(config, args.service, args.config)
            if args.environment is not None:
                known_environment(config, args.environment, args.config)
            rows = [deployment_json(r) for r in store.list_deployments(service=args.service,
                                                                       environment=args.environment)]
            emit(rows, as_json=args.json, text=lambda: output.show_list(rows))
            return EXIT_OK
        action = ("--status" if args.status else "--cancel" if args.cancel
                  else "--promote" if args.promote else "--approve")
        deployment_id = require(args.deployment_id, "--deployment-id", action)
        if args.approve or args.promote:
            return approve(args, config, store, deployment_id)
        if args.cancel:
            return cancel(args, config, store, deployment_id)
        if args.watch:
            return watch(args, config, store, deployment_id)
        record = store.get_deployment(deployment_id)
        data = deployment_json(record, store.events(record.id))
        emit(data, as_json=args.json, text=lambda: output.show_deployment(data))
        return status_exit_code(record.phase)
    finally:
        store.close()


def cancel(args: argparse.Namespace, config: SafeshipConfig, store: Store, deployment_id: str) -> int:
    """Through the controller when it runs the deployment, waiting until it acted (the deployment
    ended); with no controller running, the cancel is checked and recorded in the store, and the
    command says it is queued for the next controller (exit 3). A sim deployment is cancelled here."""
    by = f"deployment-engine --cancel ({os.environ.get('USER', 'unknown')})"
    record = store.get_deployment(deployment_id)
    environment = config.environment(record.environment)
    if environment is not None and runs_in_controller(environment.platform):
        from safeship.api.client import ControllerClient

        client = ControllerClient(state_dir(config, args.config))
        if client.is_running():
            client.cancel(deployment_id, by=by)
            return wait_acted(args, store, client, deployment_id,
                              config.rollback_for(record.service).rollback_timeout + 60)
        _engine_for_store(config, store).cancel(deployment_id, by=by)  # refused (exit 2) before anything
        return queued(args, store, deployment_id, client.not_running_because() or "it does not answer")
    cancelled: DeploymentRecord = _engine_for_store(config, store).cancel(deployment_id, by=by)
    flush_notifications(store, config, args.config, new_from=getattr(args, "events_before", None))
    data = deployment_json(cancelled, store.events(cancelled.id))
    message = (f"{cancelled.id}: {cancelled.phase} - {cancelled.reason or ''}" if Phase(cancelled.phase).is_final
               else f"{cancelled.id}: cancelling; traffic returns to {cancelled.from_version}"
               if cancelled.from_version else f"{cancelled.id}: cancelling; a first deployment: its instances stop")
    emit(data, as_json=args.json, text=lambda: output.console.print(message))
    return EXIT_OK


def queued(args: argparse.Namespace, store: Store, deployment_id: str, why: str) -> int:
    """A request recorded in the store for a controller that does not run: say so, exit 3."""
    config_flag = f" --config {args.config}" if args.config != "safeship.yaml" else ""
    data = deployment_json(store.get_deployment(deployment_id)) | {"queued": True, "why": why}
    emit(data, as_json=args.json, text=lambda: output.console.print(
        f"{deployment_id}: queued: the controller will act when it runs (no controller runs: {why}); "
        f"start it with `safeship server{config_flag}`"))
    return EXIT_UNREACHABLE


def wait_acted(args: argparse.Namespace, store: Store, client: Any, deployment_id: str, timeout: float) -> int:
    """Poll the deployment once a second until it ended (the controller acted), then say how."""
    record = wait_ended(store, client, deployment_id, timeout)
    if record is None:
        return queued(args, store, deployment_id, client.not_running_because() or "it stopped answering")
    data = deployment_json(record, store.events(record.id))
    if not Phase(record.phase).is_final:
        emit(data, as_json=args.json, text=lambda: output.console.print(
            f"{deployment_id}: still {record.phase} after {timeout:.0f}s; the controller goes on; follow it with "
            f"`deployment-engine --status --watch --deployment-id {deployment_id}`"))
        return EXIT_OK
    emit(data, as_json=args.json, text=lambda: output.console.print(
        f"{deployment_id}: {record.phase} - {record.reason or ''}"))
    return EXIT_OK if record.phase == Phase.CANCELLED.value else Phase(record.phase).exit_code


WATCH_POLL_S = 1.0  # --watch and the waits after --cancel/--rollback read the store once a second


def wait_ended(store: Store, client: Any, deployment_id: str, timeout: float) -> DeploymentRecord | None:
    """The deployment once it ended, or as it is after `timeout`; None when the controller stopped
    running meanwhile (what was asked stays recorded for the next one)."""
    deadline = time.monotonic() + timeout
    record = store.get_deployment(deployment_id)
    while not Phase(record.phase).is_final and time.monotonic() < deadline:
        time.sleep(WATCH_POLL_S)
        if not client.is_running():
            return None
        record = store.get_deployment(deployment_id)
    return record


def watch(args: argparse.Namespace, config: SafeshipConfig, store: Store, deployment_id: str) -> int:
    """--status --watch: a progress line (phase, step, weights, the last decision) whenever it
    changes, from the store, read once a second, until the deployment ends (or, for a deployment
    the controller runs, until no controller runs: exit 3)."""
    record = store.get_deployment(deployment_id)
    environment = config.environment(record.environment)
    client = None
    if environment is not None and runs_in_controller(environment.platform):
        from safeship.api.client import ControllerClient

        client = ControllerClient(state_dir(config, args.config))
    printer = output.ProgressPrinter(heartbeat=30.0)
    stream = output.EventStream(record.id)  # -v: the events as the controller records them
    output.console.print(f"{record.id}: {record.service} {record.version} -> {record.environment} "
                         f"({record.strategy}); watching until it ends (Ctrl-C stops watching only)")
    try:
        while True:
            data = deployment_json(record, store.events(record.id))
            stream.update(data.get("events") or [])
            printer.update(data, time.time() - record.created_at)
            if Phase(record.phase).is_final:
                output.console.print(f"{record.id}: {record.phase} - {record.reason or ''}")
                return status_exit_code(record.phase)
            if client is not None and not client.is_running():
                output.console.print(f"{record.id}: {record.phase}; it waits for a controller "
                                     f"({client.not_running_because()}); start one with `safeship server`")
                return EXIT_UNREACHABLE
            time.sleep(WATCH_POLL_S)
            record = store.get_deployment(deployment_id)
    except KeyboardInterrupt:
        output.console.print(f"\n{deployment_id}: stopped watching")
        return EXIT_INTERRUPTED


def _request(args: argparse.Namespace) -> DeploymentRequest:
    strategy = None
    if args.strategy:
        try:
            strategy = DeploymentStrategy.parse(args.strategy)
        except ValueError as exc:
            raise InputError(f"--strategy: {exc}") from None
    return DeploymentRequest(
        service_name=check_name("service", require(args.service, "--service", "--deploy"), field="--service"),
        version=check_name("version", require(args.version, "--version", "--deploy"), field="--version"),
        environment=check_name("environment", require(args.environment, "--environment", "--deploy"),
                               field="--environment"),
        deployment_strategy=strategy,
        override_freeze=args.override_freeze,
        requested_by=os.environ.get("USER", ""),
    )


def deploy(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    request = _request(args)
    environment = known_environment(config, request.environment, args.config)
    policy_for(args.policy)  # an unknown policy is bad input: fail before anything starts
    check_platform(environment, args.config)  # before a controller is started for it
    validate_request(config, store, request)
    if not runs_in_controller(environment.platform):
        return asyncio.run(_deploy_sim(args, config, store, request))
    _check_before_start(args, config, store, request, environment)
    return _deploy_remote(args, request)


def _check_before_start(args: argparse.Namespace, config: SafeshipConfig, store: Store,
                        request: DeploymentRequest, environment: Environment) -> None:
    """What the controller would refuse, checked here before one is started for it: the version
    already serving, a freeze window, a changed artifact, concurrency, and missing or unsafe secrets."""
    from datetime import UTC, datetime

    from safeship.engine import gates
    from safeship.environments.secrets import load_secrets

    if store.current_version(request.service_name, request.environment) == request.version:
        raise ConflictError(f"{request.service_name} {request.version} already serves {request.environment}")
    gates.check_freeze(environment, datetime.now(tz=UTC), request.override_freeze)
    gates.check_artifact(store, request.service_name, request.version)
    gates.check_concurrency(store, environment)
    names = config.services[request.service_name].secrets
    if names:
        load_secrets(Path(args.config).resolve().parent, environment.name, names)


def render(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    """--deploy --render: the objects the deploy would apply at its start (Services, the new
    version's Deployment, the router's objects), for --strategy or the strategy safeship would
    select, beside the version serving now. Reads the config and the store; contacts no cluster."""
    from safeship.engine.gates import free_capacity
    from safeship.engine.selection import select_strategy
    from safeship.kube.environment import manifests, require_kubernetes
    from safeship.kube.objects import workload_objects

    request = _request(args)
    environment = known_environment(config, request.environment, args.config)
    require_kubernetes(environment, args.config)
    known_service(config, request.service_name, args.config)
    service = config.services[request.service_name]
    if service.versions and request.version not in service.versions:
        raise InputError(f"{args.config}: version {request.version!r} of {request.service_name} is not known "
                         f"(known: {', '.join(service.versions)})")
    recent = [d.phase for d in store.list_deployments(
        service=request.service_name, environment=request.environment, limit=5)]
    try:
        selection = select_strategy(
            service_name=request.service_name, service=service, environment=environment,
            strategies=config.intelligent_deployment.strategies, explicit=request.deployment_strategy,
            recent_outcomes=recent,
            capacity=free_capacity(config, store, request.service_name, environment))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    previous = store.current_version(request.service_name, request.environment)
    if previous == request.version:
        previous = None
    objects = workload_objects(config, environment, request.service_name, request.version, selection.strategy,
                               previous=previous, replicas=service.replicas)
    header = (f"# {request.service_name} {request.version} -> {request.environment} "
              f"({f'from {previous}' if previous else 'first deployment'}); strategy {selection.reason}\n")
    emit(objects, as_json=args.json, text=lambda: print(header + manifests(objects), end=""))
    return EXIT_OK


def _engine_for_store(config: SafeshipConfig, store: Store) -> Any:
    """An engine for bookkeeping that needs no world (cancel, manual rollback requests)."""
    from safeship.engine.simulate import inert_engine

    return inert_engine(config, store, policy_for=policy_for)


async def _deploy_sim(args: argparse.Namespace, config: SafeshipConfig, store: Store,
                      request: DeploymentRequest) -> int:
    from safeship.engine.simulate import sim_engine

    latest = max((d.updated_at for d in store.list_deployments(limit=1)), default=0.0)
    engine, clock = await sim_engine(config, store, service=request.service_name, environment=request.environment,
                                     candidate=request.version, policy_for=policy_for,
                                     start=max(time.time(), latest + 1))
    record = engine.submit(request, policy=args.policy)
    if args.detach:
        emit({"id": record.id}, as_json=args.json, text=lambda: print(record.id))
    started = record.created_at
    if not args.json and not args.detach:
        output.console.print(f"{record.id}: {request.service_name} {request.version} -> {request.environment} "
                             f"on the simulated platform (virtual time)")
        output.console.print(f"strategy: {record.strategy_reason}")
    last: list[Any] = [None]

    def show(current: DeploymentRecord) -> None:
        key = (current.phase, current.step_index, str(current.status.get("weights")))
        if key != last[0] and not args.json and not args.detach:
            last[0] = key
            output.console.print(output.progress_line(deployment_json(current), clock.now() - started))

    final = await engine.run(record.id, on_tick=show, return_when_awaiting=True)
    return _report(args, store, final)


def approve(args: argparse.Namespace, config: SafeshipConfig, store: Store, deployment_id: str) -> int:
    """Record the approval (--approve) or the order to promote now (--promote); a sim deployment
    then runs to its end here, a local one in the controller."""
    record = store.get_deployment(deployment_id)
    environment = config.environment(record.environment)
    if environment is not None and runs_in_controller(environment.platform):
        from safeship.api.client import ControllerClient

        client = ControllerClient(state_dir(config, args.config))
        if client.is_running():
            if args.promote:
                client.promote(deployment_id, by=args.approved_by)
            else:
                client.approve(deployment_id, by=args.approved_by)
        else:  # checked and recorded first (a refusal starts nothing), then a controller acts on it
            engine = _engine_for_store(config, store)
            (engine.promote if args.promote else engine.approve)(deployment_id, by=args.approved_by)
            if client.ensure_running(args.config) and not args.json:
                output.console.print("started the safeship controller in the background")
    else:
        engine = _engine_for_store(config, store)
        act = engine.promote if args.promote else engine.approve
        record = act(deployment_id, by=args.approved_by)
    if not args.json:
        done = "promoted now" if args.promote else "approved"
        output.console.print(f"{deployment_id}: {done} by {args.approved_by or 'unknown'}")
    if environment is None or runs_in_controller(environment.platform) or args.detach:
        return EXIT_OK
    return asyncio.run(_continue_sim(args, config, store, record))


async def _continue_sim(args: argparse.Namespace, config: SafeshipConfig, store: Store,
                        record: DeploymentRecord) -> int:
    from safeship.engine.simulate import sim_engine

    engine, _ = await sim_engine(config, store, service=record.service, environment=record.environment,
                                 candidate=record.version, policy_for=policy_for,
                                 start=max(time.time(), record.updated_at + 1))
    final = await engine.run(record.id)
    return _report(args, store, final)


def _report(args: argparse.Namespace, store: Store, final: DeploymentRecord) -> int:
    # a foreground (simulated) deployment: its notifications leave now
    flush_notifications(store, config_path=args.config, new_from=getattr(args, "events_before", None))
    data = deployment_json(final, store.events(final.id))
    if args.detach:
        return EXIT_OK
    if final.phase == Phase.AWAITING_APPROVAL.value:
        emit(data, as_json=args.json, text=lambda: output.console.print(
            f"{final.id}: awaiting approval in {final.environment}; approve with "
            f"`deployment-engine --approve --deployment-id {final.id}`"))
        return EXIT_OK
    gate = data.get("gate") or {}
    if gate.get("held"):
        emit(data, as_json=args.json, text=lambda: output.console.print(
            f"{final.id}: held by {gate['type']} gate {gate['name']!r} ({gate['last_answer']}); it goes on once the "
            f"gate answers 2xx: `deployment-engine --status --deployment-id {final.id}`"))
        return EXIT_OK
    emit(data, as_json=args.json, text=lambda: output.console.print(
        f"{final.id}: {final.phase} - {final.reason or ''}"))
    return Phase(final.phase).exit_code


def _deploy_remote(args: argparse.Namespace, request: DeploymentRequest) -> int:
    from safeship.api.client import ControllerClient
    from safeship.cli.common import load as _load

    config = _load(args.config)
    client = ControllerClient(state_dir(config, args.config))
    if client.ensure_running(args.config) and not args.json:
        output.console.print("started the safeship controller in the background")
    body = request.model_dump(mode="json") | {"policy": args.policy}
    created = client.deploy(body)
    deployment_id = str(created["id"])
    if args.detach:
        emit({"id": deployment_id}, as_json=args.json, text=lambda: print(deployment_id))
        return EXIT_OK
    if not args.json:
        output.console.print(f"{deployment_id}: strategy {created.get('strategy_reason', created.get('strategy'))}")
    started = time.time()
    printer = output.ProgressPrinter()
    events = output.EventStream(deployment_id)  # -v: the controller's events, as it records them
    deadline = started + 6 * 3600
    try:
        while time.time() < deadline:
            data = client.get(deployment_id)
            events.update(data.get("events") or [])
            if not args.json:
                printer.update(data, time.time() - started)
            if Phase(data["phase"]).is_final:
                summary = f"{deployment_id}: {data['phase']} - {data.get('reason') or ''}"
                emit(data, as_json=args.json, text=lambda: output.console.print(summary))  # noqa: B023
                return Phase(data["phase"]).exit_code
            time.sleep(1.0)
    except KeyboardInterrupt:  # only this command stops watching; the controller goes on deploying
        config_flag = f" --config {args.config}" if args.config != "safeship.yaml" else ""
        emit({"id": deployment_id, "watching": False, "deployment": "continues on the controller"},
             as_json=args.json, text=lambda: output.console.print(
                 f"\n{deployment_id}: stopped watching; the deployment continues on the controller.\n"
                 f"  watch it:  deployment-engine --status --deployment-id {deployment_id}{config_flag}\n"
                 f"  cancel it: deployment-engine --cancel --deployment-id {deployment_id}{config_flag}"))
        return EXIT_INTERRUPTED
    return EXIT_FAILED
