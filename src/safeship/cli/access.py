"""`safeship token create|list|revoke` and `safeship audit`: API tokens with a role, and the audit
table. Both read and write the store directly, so they work whether a controller runs or not; a
revoked token is refused by a running controller from its next request on.

    safeship token create --role deployer --environment staging [--name N]   prints the token once
    safeship token list [--json]
    safeship token revoke NAME
    safeship audit [--limit N] [--actor NAME] [--json]

Creating and revoking a token are written to the audit table themselves (actor `cli: <user>`),
whether they succeed or the store refuses them (a name taken, a token not found). Bad arguments
(an unknown role, an environment the config does not have) are one sentence and exit 2, before
anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from safeship.api.app import audit_json
from safeship.api.roles import (
    ROLE_NAMES,
    Role,
    check_token_name,
    environments_problem,
    new_token,
    parse_role,
    token_digest,
)
from safeship.cli import output
from safeship.cli.common import EXIT_OK, clean, load, open_store, when
from safeship.errors import InputError, SafeshipError
from safeship.store import AuditRecord, Store, TokenRecord, new_id

MAX_AUDIT_ROWS = 100_000
T = TypeVar("T")


def add_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="create, list or revoke API tokens with a role")
    actions = token.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser("create", help="make a token and print it once (the store keeps only its SHA-256)")
    create.add_argument("--role", required=True, help=f"what it may do: {', '.join(ROLE_NAMES)}")
    create.add_argument("--environment", action="append", default=None, metavar="NAME",
                        help="limit it to this environment (repeat for more; default: every environment)")
    create.add_argument("--name", help="what the audit table calls it (default: <role>-<random>)")
    listing = actions.add_parser("list", help="every token: name, role, environments, created, last used, revoked")
    revoke = actions.add_parser("revoke", help="revoke a token: a running controller refuses it from then on")
    revoke.add_argument("name", help="the token's name, as `safeship token list` shows it")
    for parser in (create, listing, revoke):
        parser.add_argument("--config", default="safeship.yaml", help="safeship.yaml to use (default: %(default)s)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    audit = sub.add_parser("audit", help="list the audit table: every mutating call, newest first")
    audit.add_argument("--config", default="safeship.yaml", help="safeship.yaml to use (default: %(default)s)")
    audit.add_argument("--limit", type=int, default=100, metavar="N",
                       help=f"at most this many rows, newest first (1 to {MAX_AUDIT_ROWS}; default: %(default)s)")
    audit.add_argument("--actor", help="only the rows of this actor (a token's name, `local admin`, ...)")
    audit.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def main(args: argparse.Namespace) -> int:
    if args.command == "audit":
        return _audit(args)
    if args.token_command == "create":
        return _create(args)
    if args.token_command == "revoke":
        return _revoke(args)
    return _list(args)


def token_json(record: TokenRecord) -> dict[str, Any]:
    """A token as `token list --json` shows it: never its digest, let alone the token."""
    return {"name": record.name, "role": record.role, "environments": record.environments,
            "created_at": record.created_at, "last_used_at": record.last_used_at, "revoked_at": record.revoked_at}


def _actor() -> str:
    try:
        return f"cli: {getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli: uid {os.getuid()}"


def _audited(store: Store, action: str, target: str, run: Callable[[], T]) -> T:
    """Run `run()` and write its audit row: exit code 0 and "ok", or the error's exit code and
    sentence (the error is raised again)."""
    row = AuditRecord(at=time.time(), actor=_actor(), role=Role.ADMIN.value, action=action, target=target,
                      source=f"cli pid {os.getpid()}", status=0, outcome="ok")
    try:
        result = run()
    except SafeshipError as exc:
        with contextlib.suppress(SafeshipError):  # the store that refused may refuse the row too
            store.append_audit(dataclasses.replace(row, status=exc.exit_code, outcome=str(exc)))
        raise
    store.append_audit(row)
    return result


def _create(args: argparse.Namespace) -> int:
    config = load(args.config)
    role = parse_role(args.role)
    environments: list[str] | None = None
    if args.environment is not None:
        if role is Role.VIEWER:
            raise InputError("--environment: a viewer changes nothing and every token reads every environment, "
                             "so a viewer token is not limited to environments; leave --environment out")
        environments = list(dict.fromkeys(args.environment))
        known = [e.name for e in config.environment_management.environments]
        problem = environments_problem(environments, known, args.config)
        if problem is not None:
            raise InputError(problem)
    name = check_token_name(args.name) if args.name is not None else f"{role.value}-{os.urandom(3).hex()}"
    token = new_token()
    record = TokenRecord(id=new_id("tok"), name=name, token_sha256=token_digest(token), role=role.value,
                         environments=environments, created_at=time.time())
    store = open_store(config, args.config)
    try:
        _audited(store, "safeship token create", name, lambda: store.create_token(record))
    finally:
        store.close()
    if args.json:
        print(json.dumps({**token_json(record), "token": token}))
    else:
        print(token)
        where = ", ".join(environments) if environments is not None else "every environment"
        print(f"token {name!r} ({role.value} of {where}) created; it is shown only now: the store keeps its "
              "SHA-256 only. Use it as `Authorization: Bearer <token>` or on the dashboard's login page.",
              file=sys.stderr)
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    config = load(args.config)
    store = open_store(config, args.config)
    try:
        record = _audited(store, "safeship token revoke", args.name, lambda: store.revoke_token(args.name, time.time()))
    finally:
        store.close()
    if args.json:
        print(json.dumps(token_json(record)))
    else:
        output.console.print(f"token {clean(record.name)!r} revoked: a running controller refuses it from its "
                             "next request on, and ends its dashboard sessions")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    config = load(args.config)
    store = open_store(config, args.config)
    try:
        found = store.tokens()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"tokens": [token_json(t) for t in found]}))
        return EXIT_OK
    if not found:
        output.console.print("no tokens (the local admin token in <state_dir>/token is not listed); "
                             "make one with `safeship token create --role viewer`")
        return EXIT_OK
    output.console.print(f"{'NAME':<24} {'ROLE':<9} {'ENVIRONMENTS':<24} {'CREATED (UTC)':<20} "
                         f"{'LAST USED (UTC)':<20} REVOKED (UTC)")
    for t in found:
        where = ",".join(t.environments) if t.environments is not None else "all"
        output.console.print(f"{clean(t.name):<24} {t.role:<9} {clean(where):<24} {when(t.created_at):<20} "
                             f"{when(t.last_used_at) or '-':<20} {when(t.revoked_at) or '-'}")
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_AUDIT_ROWS:
        raise InputError(f"--limit: must be 1 to {MAX_AUDIT_ROWS}, got {args.limit}")
    config = load(args.config)
    store = open_store(config, args.config)
    try:
        rows = store.audit(limit=args.limit, actor=args.actor)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"audit": [audit_json(r) for r in rows]}))
        return EXIT_OK
    if not rows:
        output.console.print("the audit table has no rows" + (f" of {clean(args.actor)!r}" if args.actor else ""))
        return EXIT_OK
    for r in rows:
        role = f" ({r.role})" if r.role else ""
        target = f" {clean(r.target)}" if r.target else ""
        output.console.print(f"{when(r.at)}  {clean(r.actor)}{role} from {clean(r.source) or '-'}: "
                             f"{clean(r.action)}{target} -> {r.status} {clean(r.outcome)}")
    return EXIT_OK
