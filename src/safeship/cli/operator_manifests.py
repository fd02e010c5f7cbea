"""`safeship operator manifests [--image IMAGE] [--namespace NS] [--store-secret NAME]
[--service-monitor] [--sqlite]`: print the operator's install manifests as one YAML stream, for
`safeship operator manifests | kubectl apply -f -`. The same objects as the kustomize base in
`deploy/base` (built from `safeship.operator.manifests`), with the image and namespace set.
A bad argument is one sentence on stderr and exit code 2; nothing is printed then."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safeship.cli.common import EXIT_OK
from safeship.operator import manifests as mf


def add_parser(sub: Any) -> None:
    """Add `manifests` to the `operator` command's subcommands (`sub`, from add_subparsers)."""
    command = sub.add_parser("manifests", help="print the operator's install manifests (kubectl apply -f -)")
    command.add_argument("--image", default=mf.DEFAULT_IMAGE,
                         help="the operator's container image (default: %(default)s)")
    command.add_argument("--namespace", default=mf.DEFAULT_NAMESPACE,
                         help="the namespace the operator runs in (default: %(default)s)")
    command.add_argument("--store-secret", default=mf.DEFAULT_STORE_SECRET, metavar="NAME",
                         help="the Secret whose key `url` is the store's URL (default: %(default)s)")
    command.add_argument("--service-monitor", action="store_true",
                         help="add a ServiceMonitor for the Prometheus Operator")
    command.add_argument("--sqlite", action="store_true",
                         help="keep the store in SQLite on a PersistentVolumeClaim (one replica) instead of the "
                              "Secret's URL")


def run(args: argparse.Namespace) -> int:
    """Print the manifests; InputError (exit code 2) for a bad argument, before printing anything."""
    objects = mf.manifests(args.image, args.namespace, args.store_secret, service_monitor=args.service_monitor,
                           sqlite=args.sqlite)
    sys.stdout.write(mf.to_yaml(objects))
    return EXIT_OK
