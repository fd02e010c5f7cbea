"""rollback-manager: --configure, --rollback, --history (the seed's usage guide, section 2).

In `--configure` mode `--config` names the rollback settings file, as the seed writes it; the
safeship.yaml to use then comes from `--safeship-config` (or SAFESHIP_CONFIG, default safeship.yaml).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from safeship.cli import output
from safeship.cli.common import (
    EXIT_OK,
    add_common,
    emit,
    guarded,
    load,
    open_store,
    policy_for,
    require,
    when,
)
from safeship.config.loader import read_yaml, validate
from safeship.config.models import RollbackConfiguration, SafeshipConfig
from safeship.config.paths import state_dir
from safeship.engine.phases import Phase
from safeship.errors import ConfigError, NotFoundError
from safeship.store import RollbackRecord, Store


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollback-manager", description="Configure rollback, roll back, show history.")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--configure", action="store_true", help="set --service's rollback settings from --config")
    action.add_argument("--rollback", action="store_true", help="roll back --deployment-id now")
    action.add_argument("--history", action="store_true", help="list rollbacks (optionally of --service)")
    p.add_argument("--service")
    p.add_argument("--deployment-id")
    p.add_argument("--reason", default="manual rollback")
    p.add_argument("--safeship-config", default=None, help="safeship.yaml when --config names a rollback file")
    add_common(p)
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
    main_config = args.config
    if args.configure:
        main_config = args.safeship_config or os.environ.get("SAFESHIP_CONFIG", "safeship.yaml")
    config = load(main_config)
    store = open_store(config, main_config)
    try:
        if args.configure:
            return configure(args, config, store)
        if args.history:
            rows = [rollback_json(r) for r in store.rollbacks(service=args.service)]
            emit(rows, as_json=args.json, text=lambda: _history_table(rows))
            return EXIT_OK
        return rollback(args, config, store, main_config)
    finally:
        store.close()


def configure(args: argparse.Namespace, config: SafeshipConfig, store: Store) -> int:
    service = require(args.service, "--service", "--configure")
    if service not in config.services:
        raise NotFoundError(f"service {service!r} is not in the config")
    data = read_yaml(__import__("pathlib").Path(args.config)) or {}
    if not isinstance(data, dict):
        raise ConfigError(args.config, "", "a rollback config must be a mapping")
    block = data.get("rollback", data)
    settings = validate(RollbackConfiguration, block, args.config)
    store.set_service_rollback_settings(service, settings.model_dump(mode="json", by_alias=True), time.time())
    emit({"service": service, "rollback": settings.model_dump(mode="json")}, as_json=args.json,
         text=lambda: output.console.print(
             f"{service}: auto_rollback={settings.auto_rollback}, {len(settings.triggers)} triggers, "
             f"max {settings.max_rollback_attempts} attempts, timeout {settings.rollback_timeout:.0f}s"))
    return EXIT_OK


def rollback(args: argparse.Namespace, config: SafeshipConfig, store: Store, config_path: str) -> int:
    deployment_id = require(args.deployment_id, "--deployment-id", "--rollback")
    record = store.get_deployment(deployment_id)
    environment = config.environment(record.environment)
    if environment is not None and environment.platform != "sim":
        from safeship.api.client import ControllerClient

        client = ControllerClient(state_dir(config, config_path))
        client.ensure_running(config_path)
        client.rollback(deployment_id, args.reason)
        deadline = time.time() + config.rollback_for(record.service).rollback_timeout + 60
        while time.time() < deadline:
            data = client.get(deployment_id)
            if Phase(data["phase"]).is_final:
                break
            time.sleep(1.0)
        final = store.get_deployment(deployment_id)
    else:
        final = asyncio.run(_rollback_sim(config, store, record.id, args.reason))
    rows = [rollback_json(r) for r in store.rollbacks(deployment_id=deployment_id)]
    emit(rows[0] if rows else {}, as_json=args.json, text=lambda: output.console.print(
        f"{deployment_id}: {final.phase} - {final.reason or ''}"))
    return Phase(final.phase).exit_code if final.phase != Phase.ROLLED_BACK.value else EXIT_OK


async def _rollback_sim(config: SafeshipConfig, store: Store, deployment_id: str, reason: str) -> Any:
    from safeship.engine.simulate import sim_engine

    record = store.get_deployment(deployment_id)
    engine, _ = await sim_engine(config, store, service=record.service, environment=record.environment,
                                 candidate=record.version, policy_for=policy_for,
                                 start=max(time.time(), record.updated_at + 1))
    engine.request_rollback(deployment_id, reason=reason)
    return await engine.run(deployment_id)


def _history_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        output.console.print("no rollbacks")
    for r in rows:
        state = {True: "ok", False: "FAILED", None: "running"}[r["success"]]
        kind = "auto" if r["automatic"] else "manual"
        duration = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        output.console.print(f"{when(r['timestamp'])}  {r['service']} {r['from_version']} -> {r['to_version']}  "
                             f"{kind} {state} in {duration}  [{r['deployment_id']}] {r['reason']}")
