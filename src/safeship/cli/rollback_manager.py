"""rollback-manager: --configure, --rollback, --history (the seed's usage guide, section 2), and
--settings / --reset to show or drop what --configure stored.

In `--configure` mode `--config` names the rollback settings file, as the seed writes it; the
safeship.yaml to use then comes from `--safeship-config` (or SAFESHIP_CONFIG, default safeship.yaml).
Settings stored by --configure take the place of the service's `rollback:` block in safeship.yaml
until `--reset` drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from safeship.cli import output
from safeship.cli.common import (
    EXIT_OK,
    Parser,
    add_common,
    emit,
    flush_notifications,
    guarded,
    known_service,
    load,
    open_store,
    policy_for,
    require,
    when,
)
from safeship.config.loader import load_rollback_settings, validate
from safeship.config.models import RollbackConfiguration, SafeshipConfig
from safeship.config.paths import state_dir
from safeship.engine.phases import Phase
from safeship.errors import InputError
from safeship.platforms import runs_in_controller
from safeship.store import RollbackRecord, Store


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="rollback-manager", description="Configure rollback, roll back, show history.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--configure", action="store_true",
                        help="store --service's rollback settings from the file --config names "
                             "(format: examples/rollback-config.yaml)")
    action.add_argument("--rollback", action="store_true", help="roll back --deployment-id now")
    action.add_argument("--history", action="store_true", help="list rollbacks (optionally of --service)")
    action.add_argument("--settings", action="store_true",
                        help="show --service's rollback settings in force and where they come from")
    action.add_argument("--reset", action="store_true",
                        help="drop the settings --configure stored for --service; safeship.yaml applies again")
    p.add_argument("--service", help="the service, as named under services: in the config")
    p.add_argument("--deployment-id", help="the deployment to roll back, e.g. deploy-1a2b3c4d")
    p.add_argument("--reason", default="manual rollback", help="why, recorded in the history (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="roll back even when there is no earlier stable version (this stops the service)")
    p.add_argument("--safeship-config", default=None,
                   help="safeship.yaml to use when --config names a rollback settings file (with --configure)")
    add_common(p)
    p.set_defaults(config=None)  # --configure must be told its file; the other actions default below
    return p


def rollback_json(r: RollbackRecord) -> dict[str, Any]:
    return {
        "id": r.id, "deployment_id": r.deployment_id, "service": r.service, "environment": r.environment,
        "from_version": r.from_version, "to_version": r.to_version, "reason": r.reason, "evidence": r.evidence,
        "automatic": r.automatic, "duration_s": r.duration_s, "success": r.success, "timestamp": r.timestamp,
    }


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    default_config = os.environ.get("SAFESHIP_CONFIG", "safeship.yaml")
    main_config = args.config or default_config
    if args.configure:
        if not args.config:
            raise InputError("--configure needs --config FILE naming the rollback settings to store "
                             "(the format is in examples/rollback-config.yaml)")
        main_config = args.safeship_config or default_config
    config = load(main_config)
    store = open_store(config, main_config)
    args.events_before = store.last_event_id()  # a notification sink new to the store starts after it
    try:
        if args.configure:
            return configure(args, config, store)
        if args.history:
            known_service(config, args.service, main_config)
            rows = [rollback_json(r) for r in store.rollbacks(service=args.service)]
            emit(rows, as_json=args.json, text=lambda: _history_table(rows))
            return EXIT_OK
        if args.settings or args.reset:
            return settings(args, main_config, store)
        return rollback(args, config, store, main_config)
    finally:
        store.close()


def configure(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    service = require(args.service, "--service", "--configure")
    known_service(config, service, args.safeship_config or "safeship.yaml")
    settings = load_rollback_settings(Path(args.config))
    store.set_service_rollback_settings(service, settings.model_dump(mode="json", by_alias=True), time.time())
    emit({"service": service, "rollback": settings.model_dump(mode="json")}, as_json=args.json,
         text=lambda: output.console.print(
             f"{service}: auto_rollback={settings.auto_rollback}, {len(settings.triggers)} triggers, "
             f"max {settings.max_rollback_attempts} attempts, timeout {settings.rollback_timeout:.0f}s; "
             f"stored, in force instead of safeship.yaml's until `rollback-manager --reset --service {service}`"))
    return EXIT_OK


def settings(args: argparse.Namespace, config_path: str, store: Store) -> int:
    """--settings shows what is in force and where it comes from; --reset drops the stored copy."""
    action = "--reset" if args.reset else "--settings"
    service = require(args.service, "--service", action)
    yaml_config = load(config_path)  # without the stored settings applied
    known_service(yaml_config, service, config_path)
    if args.reset:
        dropped = store.clear_service_rollback_settings(service)
        message = (f"{service}: stored rollback settings dropped; the rollback: settings of {config_path} apply"
                   if dropped else f"{service}: no stored rollback settings; {config_path} already applies")
        emit({"service": service, "dropped": dropped}, as_json=args.json,
             text=lambda: output.console.print(message))
        return EXIT_OK
    stored = store.service_rollback_settings(service)
    in_force = (validate(RollbackConfiguration, stored, f"stored rollback settings of {service}")
                if stored is not None else yaml_config.rollback_for(service))
    source = "rollback-manager --configure" if stored is not None else config_path
    body = {"service": service, "source": source, "rollback": in_force.model_dump(mode="json")}
    emit(body, as_json=args.json, text=lambda: _settings_text(body))
    return EXIT_OK


def _settings_text(body: dict[str, Any]) -> None:
    output.console.print(f"{body['service']}: rollback settings from {body['source']}")
    for key, value in body["rollback"].items():
        output.console.print(f"  {key}: {json.dumps(value)}")


def rollback(args: argparse.Namespace, config: SafeshipConfig, store: Store, config_path: str) -> int:
    deployment_id = require(args.deployment_id, "--deployment-id", "--rollback")
    record = store.get_deployment(deployment_id)
    environment = config.environment(record.environment)
    if environment is not None and runs_in_controller(environment.platform):
        from safeship.api.client import ControllerClient
        from safeship.cli.deployment_engine import queued, wait_ended
        from safeship.engine.simulate import inert_engine

        client = ControllerClient(state_dir(config, config_path))
        args.config = config_path  # what `queued` names in the command it suggests
        if not client.is_running():  # checked and recorded (a refusal is exit 2, nothing started)
            inert_engine(config, store, policy_for=policy_for).request_rollback(
                deployment_id, reason=args.reason, force=args.force)
            return queued(args, store, deployment_id, client.not_running_because() or "it does not answer")
        client.rollback(deployment_id, args.reason, force=args.force)
        ended = wait_ended(store, client, deployment_id, config.rollback_for(record.service).rollback_timeout + 60)
        if ended is None:
            return queued(args, store, deployment_id, client.not_running_because() or "it stopped answering")
        final = ended
    else:
        final = asyncio.run(_rollback_sim(config, store, record.id, args.reason, force=args.force))
        flush_notifications(store, config, config_path, new_from=getattr(args, "events_before", None))
    rows = [rollback_json(r) for r in store.rollbacks(deployment_id=deployment_id)]
    emit(rows[0] if rows else {}, as_json=args.json, text=lambda: output.console.print(
        f"{deployment_id}: {final.phase} - {final.reason or ''}"))
    return Phase(final.phase).exit_code if final.phase != Phase.ROLLED_BACK.value else EXIT_OK


async def _rollback_sim(config: SafeshipConfig, store: Store, deployment_id: str, reason: str, *,
                        force: bool) -> Any:
    from safeship.engine.simulate import sim_engine

    record = store.get_deployment(deployment_id)
    engine, _ = await sim_engine(config, store, service=record.service, environment=record.environment,
                                 candidate=record.version, policy_for=policy_for,
                                 start=max(time.time(), record.updated_at + 1))
    engine.request_rollback(deployment_id, reason=reason, force=force)
    return await engine.run(deployment_id)


def _history_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        output.console.print("no rollbacks")
    for r in rows:
        state = {True: "ok", False: "FAILED", None: "running"}[r["success"]]
        kind = "auto" if r["automatic"] else "manual"
        duration = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        # A forced rollback of a first deployment returns to no version: say so, never "-> None".
        moving = (f"{r['from_version']} -> {r['to_version']}" if r["to_version"]
                  else f"{r['from_version']} rolled back, no earlier version to serve")
        output.console.print(f"{when(r['timestamp'])}  {r['service']} {moving}  "
                             f"{kind} {state} in {duration}  [{r['deployment_id']}] {r['reason'] or ''}")
