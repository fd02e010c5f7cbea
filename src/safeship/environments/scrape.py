"""The scrape config a user's Prometheus needs for `traffic_source: prometheus` on one host.

`environment-manager --prepare` of such an environment writes, in the environment's state folder:

- `prometheus-scrape.yaml`: a `scrape_configs:` list to paste into (or include from) the user's
  prometheus.yml. Its job `safeship-<environment>` scrapes the controller's `/metrics` (the
  router's `safeship_*` series, `safeship.routing.metrics`), with the controller's API token as a
  bearer credential read from `<state_dir>/token` (`authorization: credentials_file`). /metrics
  answers without a token today; sending it costs nothing and keeps the job working if it ever
  needs one. Prometheus refuses a config whose credentials file is missing, so when the
  controller has not made the token yet, prepare makes it as the controller would (mode 0600, made
  only if absent: whichever comes first, the other reads it). Only this environment's series are
  kept (`metric_relabel_configs` on the `environment` label), so one job per prepared environment
  never stores a series twice.
- `prometheus-targets.json`: that job's target, as a `file_sd_configs` file. The controller
  listens on a port it picks when it starts (unless `safeship server --port N`), so the target is
  not fixed: prepare writes the address of the controller running now (from
  `<state_dir>/controller.json`), or no target when none runs. Prometheus re-reads the file when
  it changes, so running prepare again after the controller moved is enough: no reload.

For an environment on the `haproxy` router, a second job `haproxy-<environment>` scrapes HAProxy's
built-in Prometheus exporter (`haproxy_backend_*`, `haproxy_server_*`) where the router says it
serves it: `exporter_address(state_dir, environment)` in `safeship.routing.haproxy` when that
module has one (it returns "host:port" or None). When it has none, the snippet says so in a
comment and holds the controller's job only.

The files are plain data: paths are absolute, so the snippet works from whatever folder the user's
Prometheus runs in.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from safeship.config.models import Environment
from safeship.tokens import TOKEN_FILE, write_new_token

SNIPPET_FILE = "prometheus-scrape.yaml"
TARGETS_FILE = "prometheus-targets.json"
CONTROLLER_FILE = "controller.json"  # written by the controller once it listens: {pid, host, port, ...}
SCRAPE_INTERVAL = "5s"  # the analysis looks every few seconds; a slower scrape would blur its windows
HAPROXY_ROUTER = "haproxy"


def controller_address(state_dir: Path) -> str | None:
    """"host:port" of the controller that runs on `state_dir` now, from its controller.json."""
    try:
        data = json.loads((state_dir / CONTROLLER_FILE).read_text())
        host, port = str(data.get("host", "127.0.0.1")), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return f"{host}:{port}" if 0 < port < 65536 else None


def haproxy_exporter(state_dir: Path, environment: Environment) -> str | None:
    """Where the haproxy router serves HAProxy's Prometheus exporter, if it says."""
    try:
        module = importlib.import_module("safeship.routing.haproxy")
    except ImportError:
        return None
    find = getattr(module, "exporter_address", None)
    if not callable(find):
        return None
    found = find(state_dir, environment)
    return str(found) if found else None


def snippet(environment: Environment, state_dir: Path, folder: Path, *, haproxy: str | None) -> dict[str, Any]:
    """The `scrape_configs:` document for one environment whose state folder is `folder`."""
    controller: dict[str, Any] = {
        "job_name": f"safeship-{environment.name}",
        "scrape_interval": SCRAPE_INTERVAL,
        "metrics_path": "/metrics",
        "authorization": {"type": "Bearer", "credentials_file": str((state_dir / TOKEN_FILE).resolve())},
        "file_sd_configs": [{"files": [str((folder / TARGETS_FILE).resolve())]}],
        "metric_relabel_configs": [
            {"source_labels": ["environment"], "regex": environment.name, "action": "keep"},
        ],
    }
    jobs: list[dict[str, Any]] = [controller]
    if haproxy is not None:
        jobs.append({
            "job_name": f"haproxy-{environment.name}",
            "scrape_interval": SCRAPE_INTERVAL,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [haproxy], "labels": {"environment": environment.name}}],
        })
    return {"scrape_configs": jobs}


def ensure_token(state_dir: Path) -> Path:
    """`<state_dir>/token`, made (0600, written aside and renamed into place) when it is not there
    yet; the controller checks it when it starts (`safeship.tokens`)."""
    path = state_dir / TOKEN_FILE
    write_new_token(path)
    return path


def _write(path: Path, text: str) -> None:
    """Written whole or not at all: Prometheus may read the file while it changes."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_targets(state_dir: Path, folder: Path) -> str | None:
    """Rewrite `folder`'s targets file with the controller that runs on `state_dir` now (none when
    none runs); its address. A controller that calls this once it listens keeps Prometheus on it."""
    address = controller_address(state_dir)
    targets: list[Mapping[str, Any]] = [{"targets": [address]}] if address else []
    _write(folder / TARGETS_FILE, json.dumps(targets, indent=2) + "\n")
    return address


def write_scrape_config(environment: Environment, state_dir: Path, folder: Path) -> str:
    """Write the snippet and its targets file into `folder` (the environment's state folder, which
    prepare made); the check line's detail: where the snippet is and what it scrapes."""
    ensure_token(state_dir)
    address = write_targets(state_dir, folder)
    haproxy = haproxy_exporter(state_dir, environment) if environment.router == HAPROXY_ROUTER else None
    header = [
        f"# Prometheus scrape jobs for safeship environment {environment.name}, written by",
        f"# `environment-manager --prepare --environment {environment.name}`: add them under your",
        "# prometheus.yml's scrape_configs (or list this file in scrape_config_files, Prometheus 2.43+).",
        f"# The controller's address is in {folder / TARGETS_FILE}; run --prepare again when it moves.",
    ]
    if environment.router == HAPROXY_ROUTER and haproxy is None:
        header.append("# The haproxy router does not say where HAProxy's Prometheus exporter listens: no job for it.")
    document = snippet(environment, state_dir, folder, haproxy=haproxy)
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    path = folder / SNIPPET_FILE
    _write(path, "\n".join(header) + "\n" + body)
    scraped = f"the controller at {address}" if address else "the controller (not running now: no target yet)"
    if haproxy is not None:
        scraped += f" and HAProxy's exporter at {haproxy}"
    return f"{path} written for your Prometheus: scrapes {scraped}"
