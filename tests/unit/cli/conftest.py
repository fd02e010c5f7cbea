from __future__ import annotations

from pathlib import Path

import pytest

CONFIG = """
intelligent_deployment:
  strategies:
    canary:
      traffic_percentages: [5, 25, 50, 100]
      step_duration: "1m"
  rollback:
    auto_rollback: true
    stable_after: "10m"
    monitoring: {duration: "1m", interval: "30s"}
    triggers:
      - type: "health_check_failure"
        timeout: "2m"
      - type: "error_rate_threshold"
        threshold: 0.05
        duration: "1m"
environment_management:
  environments:
    - name: "staging"
      type: "staging"
      platform: sim
    - name: "production"
      type: "production"
      platform: sim
services:
  user-service:
    criticality: high
    replicas: 2
    versions: [v1.2.0, v1.3.0, v1.4.0]
    simulate:
      v1.3.0: {error_rate: 0.2}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "safeship.yaml"
    path.write_text(CONFIG)
    return path

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
