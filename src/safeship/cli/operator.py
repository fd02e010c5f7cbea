"""`safeship operator run`: the in-cluster operator (docs/operator.md).

    safeship operator run [--config FILE] [--environment NAME] [--namespace NS] [--host H] [--port P]
                          [--api-host NAME]... [--no-api] [--identity ID] [--lease-namespace NS]
                          [--lease-duration S] [--kubeconfig FILE]

watches Releases (every namespace, or `--namespace`), and while it holds the Lease
`safeship-operator` rolls each one out with the engine, the store at `$SAFESHIP_STORE_URL` (else the
config's `store.url`). safeship's API and dashboard, `/healthz` and `/metrics` answer on
--host:--port (`safeship.operator.api`); the API's admin token is `$SAFESHIP_API_TOKEN` (at least
32 characters; `--no-api` serves /healthz and /metrics only), and requests must name this host,
loopback or an `--api-host` (the Service's names, the pod's IP) in their Host header. The identity is
`--identity`, else `$POD_NAME`, else the host name; the Lease lives in `--lease-namespace`, else
`$POD_NAMESPACE`, else `safeship-system`. It runs until SIGTERM or Ctrl-C, then gives the Lease up.
A bad flag or config is one sentence and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

from safeship.cli.common import EXIT_OK, load
from safeship.errors import InputError

STORE_URL_ENV = "SAFESHIP_STORE_URL"
API_TOKEN_ENV = "SAFESHIP_API_TOKEN"
_HOST_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+"
                        r"|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


def add_parser(sub: Any) -> None:
    """The `operator` command and its subcommands."""
    operator = sub.add_parser("operator", help="the in-cluster operator: run it, or print its install manifests")
    commands = operator.add_subparsers(dest="operator_command", required=True)
    run = commands.add_parser("run", help="watch Releases and roll them out (the Lease holder reconciles)")
    run.add_argument("--config", default="safeship.yaml", help="the operator's safeship.yaml (default: %(default)s)")
    run.add_argument("--environment", default=None,
                     help="the environment of a Release that names none (default: the config's only "
                          "kubernetes environment)")
    run.add_argument("--namespace", default=None, help="watch Releases in this namespace only (default: every one)")
    run.add_argument("--host", default="127.0.0.1",
                     help="where the API, dashboard, /healthz and /metrics listen (default: %(default)s)")
    run.add_argument("--port", type=int, default=8080, help="their port (default: %(default)s)")
    run.add_argument("--api-host", action="append", default=[], metavar="NAME",
                     help="another name (or IP) the API answers to in the Host header, such as the Service's "
                          "DNS names and the pod's IP (repeatable)")
    run.add_argument("--no-api", action="store_true",
                     help=f"serve /healthz and /metrics only (no API, no dashboard, no ${API_TOKEN_ENV})")
    run.add_argument("--identity", default=None, help="this instance's Lease identity (default: $POD_NAME, else "
                                                      "the host name)")
    run.add_argument("--lease-namespace", default=None,
                     help="where the Lease is (default: $POD_NAMESPACE, else safeship-system)")
    run.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                     help="how long the others wait after the holder's last renewal (default: %(default)s)")
    run.add_argument("--kubeconfig", default=None,
                     help="a kubeconfig (default: the pod's ServiceAccount, else $KUBECONFIG, else ~/.kube/config)")
    with contextlib.suppress(ImportError):
        from safeship.cli.operator_manifests import add_parser as add_manifests

        add_manifests(commands)


def main(args: argparse.Namespace) -> int:
    if args.operator_command == "manifests":
        from safeship.cli.operator_manifests import run as manifests

        return manifests(args)
    return asyncio.run(_run(args))


def _settings(args: argparse.Namespace) -> Any:
    from safeship.operator.lease import LeaseSettings
    from safeship.operator.runner import OperatorSettings

    config = load(args.config)
    if not 0 < args.port < 65536:
        raise InputError(f"--port: must be 1 to 65535, got {args.port}")
    clustered = [e for e in config.environment_management.environments if e.platform == "kubernetes"]
    name = args.environment
    if name is None:
        if len(clustered) != 1:
            raise InputError(f"--environment: {args.config} has {len(clustered)} kubernetes environments; name the "
                             "one a Release that names none runs in")
        name = clustered[0].name
    if name not in {e.name for e in clustered}:
        raise InputError(f"--environment: {name!r} is not a kubernetes environment of {args.config} (known: "
                         f"{', '.join(e.name for e in clustered) or 'none'})")
    if not 3.0 <= args.lease_duration <= 600.0:
        raise InputError(f"--lease-duration: must be 3 to 600 seconds, got {args.lease_duration:g}")
    url = os.environ.get(STORE_URL_ENV) or config.store.url
    config = config.model_copy(update={"store": config.store.model_copy(update={"url": url})})
    identity = args.identity or os.environ.get("POD_NAME") or socket.gethostname()
    duration = float(args.lease_duration)
    lease = LeaseSettings(name="safeship-operator",
                          namespace=args.lease_namespace or os.environ.get("POD_NAMESPACE") or "safeship-system",
                          identity=identity, duration_s=duration, renew_deadline_s=duration * 2 / 3,
                          retry_s=duration / 7.5)
    return OperatorSettings(config=config, environment=name, lease=lease, namespace=args.namespace,
                            state_dir=Path(config.state_dir))


def api_token(args: argparse.Namespace) -> str | None:
    """The API's admin token from the environment (None with --no-api); one sentence when it is
    missing or too short."""
    from safeship.tokens import MIN_TOKEN_CHARS

    if args.no_api:
        return None
    token = os.environ.get(API_TOKEN_ENV, "").strip()
    if not token:
        raise InputError(f"{API_TOKEN_ENV}: not set; the API needs its admin token (in the cluster, key `token` of "
                         "the Secret safeship-api), or pass --no-api")
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"{API_TOKEN_ENV}: {len(token)} characters, but the API token must be at least "
                         f"{MIN_TOKEN_CHARS} (make one with `openssl rand -hex 32`)")
    return token


def api_hosts(args: argparse.Namespace) -> list[str]:
    hosts = []
    for value in args.api_host:
        name = value.strip().lower()
        if not _HOST_NAME.match(name):
            raise InputError(f"--api-host: {value!r} is not a host name or IP address")
        hosts.append(f"[{name}]" if ":" in name and not name.startswith("[") else name)
    return hosts


async def _run(args: argparse.Namespace) -> int:
    from safeship.api.server import listen_socket
    from safeship.kube.client import KubeClient
    from safeship.operator.api import operator_app, server_for
    from safeship.operator.runner import Operator
    from safeship.store import Store

    settings = _settings(args)
    token = api_token(args)  # refused before anything is opened
    hosts = api_hosts(args)
    log = logging.getLogger("safeship.operator")
    sock = listen_socket(args.host, args.port, flag="--port")
    try:
        store = Store(settings.config.store.url)
    except BaseException:
        sock.close()
        raise
    try:
        kube = KubeClient.from_kubeconfig(args.kubeconfig, namespace=settings.lease.namespace)
    except BaseException:
        sock.close()
        store.close()
        raise
    operator = Operator(settings, store, kube)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(operator.run(stop))
    app = operator_app(operator, token, listen_host=args.host, api_hosts=hosts, running=lambda: not task.done())

    server = server_for(app)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("operator %s: watching Releases in %s; %s on %s:%d", settings.lease.identity,
             settings.namespace or "every namespace", "/healthz and /metrics" if token is None else
             "the API, the dashboard, /healthz and /metrics", args.host, args.port)
    try:
        await task
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, timeout=10)
        sock.close()
        await kube.close()
        store.close()
    return EXIT_OK
