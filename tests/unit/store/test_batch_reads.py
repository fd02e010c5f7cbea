"""The store's reads of every service at once answer what the per-service reads answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from safeship.store import DeploymentRecord, StableVersion, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield opened
    finally:
        opened.close()


def deployment(id_: str, service: str, environment: str, phase: str, created_at: float,
               status: dict[str, object] | None = None) -> DeploymentRecord:
    return DeploymentRecord(id=id_, service=service, environment=environment, version="v2", from_version="v1",
                            strategy="canary", strategy_reason="", policy="safeship", phase=phase, step_index=0,
                            plan=[{"kind": "scale"}], status=status or {}, request={"service_name": service},
                            evidence={"e": 1.0}, created_at=created_at, updated_at=created_at,
                            phase_started_at=created_at, step_started_at=created_at)


def test_current_versions_are_each_services_current_version(store: Store) -> None:
    rows = [
        StableVersion("a", "prod", "v1", None, 1.0, 5.0, True),  # retired
        StableVersion("a", "prod", "v2", None, 5.0, None, True),
        StableVersion("b", "prod", "v1", None, 1.0, None, True),
        StableVersion("b", "prod", "v2", None, 6.0, None, False),  # rolled back: unhealthy
        StableVersion("c", "prod", "v1", None, 1.0, 2.0, True),  # serves nothing now
        StableVersion("a", "staging", "v9", None, 9.0, None, True),
    ]
    for row in rows:
        store.record_stable(row)
    found = store.current_versions("prod")
    assert found == {"a": "v2", "b": "v1"}
    for service in ("a", "b", "c", "d"):
        assert found.get(service) == store.current_version(service, "prod")
    assert store.current_versions("staging") == {"a": "v9"}
    assert store.current_versions("nowhere") == {}


def test_latest_deployments_and_active_keys(store: Store) -> None:
    records = [
        deployment("deploy-1", "a", "prod", "succeeded", 1.0),
        deployment("deploy-2", "a", "prod", "progressing", 2.0, status={"weights": {"v1": 90, "v2": 10}, "x": [1]}),
        deployment("deploy-3", "b", "prod", "rolled_back", 3.0),
        deployment("deploy-4", "b", "staging", "pending", 4.0),
        deployment("deploy-5", "c", "prod", "monitoring", 0.5),
    ]
    for record in records:
        store.create_deployment(record)
    latest = store.latest_deployments("prod")
    assert {s: r.id for s, r in latest.items()} == {"a": "deploy-2", "b": "deploy-3", "c": "deploy-5"}
    for service in ("a", "b", "c"):
        assert latest[service] == store.list_deployments(service=service, environment="prod", limit=1)[0]
    light = store.latest_deployments("prod", light=True)
    assert {s: r.id for s, r in light.items()} == {s: r.id for s, r in latest.items()}
    for service, record in light.items():
        assert record.status == ({"weights": latest[service].status["weights"]} if "weights" in latest[service].status
                                 else {})
        assert record.request == {} and record.evidence is None
        assert record.replace(status=latest[service].status, request=latest[service].request,
                              evidence=latest[service].evidence) == latest[service]
    assert store.active_deployment_keys() == [("deploy-5", "c", "prod"), ("deploy-2", "a", "prod"),
                                              ("deploy-4", "b", "staging")]
