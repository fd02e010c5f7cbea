"""The starter `safeship.yaml` that `safeship init` writes: the seed's two blocks with short
comments, and one example service to replace with your own."""

from __future__ import annotations

import os
from pathlib import Path

from safeship.errors import InputError

STARTER_YAML = """\
# safeship.yaml - what to deploy, where, and when to roll back.
# Durations: "250ms", "30s", "5m", "1h". Unknown fields are errors, so typos are caught.
# Check it with: environment-manager --validate --environment development

intelligent_deployment:
  strategies:
    # safeship picks one per deployment (service criticality x environment) and says why.
    blue_green:
      enabled: true
      health_check_timeout: "5m"     # the new colour must be ready within this
      traffic_switch_timeout: "2m"
    canary:
      enabled: true
      traffic_percentages: [5, 10, 25, 50, 75, 100]   # share of requests at each step
      step_duration: "2m"            # longest a step waits for evidence (at most 7 days)
    rolling:
      enabled: true
      max_unavailable: 1
      max_surge: 1
      min_instance_seconds: "20s"    # each batch is judged at least this long before the next moves

  analysis:
    # What the service accepts of a new version before it is called worse:
    error_tolerance: 1.2             # its failure rate up to 1.2x the old version's
    latency_tolerance: 1.25          # its p95 and p99 up to 1.25x the old version's...
    latency_tolerance_ms: 0          # ...or this many ms above them, whichever allows more
    early_promotion: true            # end a step early once the new version is shown within all of these
    error_tolerance_abs: 0.001       # ...an error rate this low counting as within, whatever the old one's
    on_no_data: hold                 # no requests seen where some were expected: hold (or rollback)
    retry_after_incident: false      # deploy again after a rollback the old version's own incident caused

  health_checks:
    # type: http (GET path, 2xx = healthy), tcp (the port accepts), or exec (command exits 0)
    liveness:
      type: tcp
      timeout: "30s"
      interval: "10s"
    readiness:
      type: tcp
      timeout: "30s"
      interval: "5s"

  rollback:
    auto_rollback: true              # false: stop and tell you how to roll back
    # Leave `triggers` out to get these three defaults; an empty list is refused.
    triggers:
      - type: "health_check_failure"
        timeout: "2m"                # an instance unready this long
      - type: "error_rate_threshold"
        threshold: 0.05              # 5% of requests fail...
        duration: "1m"               # ...for a minute
      - type: "response_time_threshold"
        threshold: "5s"
        duration: "1m"

environment_management:
  environments:
    # name: a DNS-1123 label (lowercase letters, digits, '-').
    # platform: local (real processes on this machine) or sim (a simulated world, to try things out).
    - name: "development"
      type: "development"            # development | testing | staging | production
      platform: local
      resource_quotas:
        cpu: "4"
        memory: "8Gi"
    - name: "production"
      type: "production"             # production deployments are the most careful
      platform: local
      resource_quotas:
        cpu: "16"
        memory: "32Gi"

services:
  # One example; replace it with your own. The command is a template: {port} is the loopback
  # port safeship gives each instance, {version} the version being deployed.
  web:
    criticality: medium              # critical | high | medium | low
    replicas: 2
    resources:
      cpu: "250m"
      memory: "128Mi"
    command: ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", "releases/{version}"]
    versions: [v1.0.0, v1.1.0]       # known releases; leave out to allow any version
    grace_period: "10s"              # SIGTERM, then this long before SIGKILL
"""


def write_starter(path: Path, *, force: bool = False) -> Path:
    """Write STARTER_YAML to `path` and return it. An existing file is kept unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name such as {path / 'safeship.yaml'}")
    if path.exists() and not force:
        raise InputError(f"{path}: already exists; not overwriting it (use --force to replace it)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(STARTER_YAML, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot be written ({exc.strerror})") from None
    return path
