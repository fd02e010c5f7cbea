"""Fixtures for the Kubernetes tests: an API server emulator on loopback and a cluster simulator.

- `kube_api` -> `emulator.ApiHandle`: a `KubeEmulator` (kmock's Kubernetes emulator, extended to
  validate, conflict, merge-patch and check namespaces as a real API server does; see
  `emulator.py`) serving real HTTP on 127.0.0.1, with namespaces `default`, `kube-system` and
  `test` already there, and a kubeconfig for it in the test's tmp dir. The handle has `url`,
  `kubeconfig` (a Path), `context`, `namespace` ("test"), `environment(name="production",
  **fields)` (an `Environment` whose cluster, kubeconfig and namespace point at the emulator),
  `client()` (a `safeship.kube.client.KubeClient`), direct access without HTTP (`read`, `items`,
  `write`, `put`, `remove`, `ensure_namespace`) and `emulator` itself (`fail(...)` injects
  failures, `permissions` restricts SelfSubjectAccessReview, `objects` holds every version).
  Options go through `@pytest.mark.kube_api(permissions=[...], validate=False, ...)`.
- `cluster_sim` -> `clustersim.ClusterSim` on `kube_api`: `await cluster_sim.tick()` moves
  Deployments, ReplicaSets, Pods, Endpoints and HTTPRoute status one step as the controllers and
  the kubelet would (see `clustersim.py`); `cluster_sim.running()` is an async context manager
  that ticks in the background for a bounded time. Options through
  `@pytest.mark.cluster_sim(ready_after=2, ...)`.

Both are closed when the test ends, also when it fails. Every test in this folder has a timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from emulator import ApiHandle, running_emulator

if TYPE_CHECKING:
    from clustersim import ClusterSim

TEST_NAMESPACE = "test"
TIMEOUT_SECONDS = 180  # per test; a test may set its own pytest.mark.timeout


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kube_api(**options): options of the KubeEmulator behind kube_api")
    config.addinivalue_line("markers", "cluster_sim(**options): options of the ClusterSim behind cluster_sim")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_SECONDS))


def _options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):
        options.update(marker.kwargs)
    return options


@pytest_asyncio.fixture
async def kube_api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApiHandle]:
    async with running_emulator(tmp_path, namespace=TEST_NAMESPACE, **_options(request, "kube_api")) as handle:
        yield handle


@pytest_asyncio.fixture
async def cluster_sim(request: pytest.FixtureRequest, kube_api: ApiHandle) -> AsyncIterator[ClusterSim]:
    from clustersim import ClusterSim

    sim = ClusterSim(kube_api.emulator, **_options(request, "cluster_sim"))
    try:
        yield sim
    finally:
        await sim.stop()
