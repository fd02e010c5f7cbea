"""No request makes the controller's API answer 5xx.

schemathesis reads the API's own OpenAPI schema (fetched with the bearer token) and sends every
operation requests that follow it and requests that break it (negative mode), with the token.
Half the generated names are swapped for configured services, environments and versions, and
deployment ids for real ones, so the requests also reach the engine's refusals (gates, conflicts,
phases) instead of stopping at 404.

The controller runs in process on a temp config and store and is not started: no routes, no
router daemon, no service processes. Deployments it accepts stay pending; cancels and rollbacks
only move stored phases."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from safeship.api.app import create_app
from safeship.api.controller import Controller
from safeship.config.models import DeploymentRequest

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 50

CONFIG = """\
state_dir: {state_dir}
store: {{url: "sqlite:///{state_dir}/state.db"}}
router_process: false
environment_management:
  environments:
    - {{name: staging, type: staging, platform: sim}}
    - {{name: production, type: production, platform: local}}
    - {{name: gated, type: production, platform: local, approval: required}}
{spares}
services:
  user-service:
    replicas: 2
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
    versions: [v1.2.0, v1.3.0]
  billing:
    replicas: 1
    command: [python, -m, examples.user_service, --port, "{{port}}", --version, "{{version}}"]
"""

SERVICES = ["user-service", "billing"]
# Each accepted deployment holds its service and environment until it ends, which it never does
# here: spare local environments (of every type, some small) let many requests reach strategy
# selection and planning instead of the one-active-deployment refusal.
SPARES = [(f"spare-{n}", ["development", "staging", "production"][n % 3], n % 4 == 0) for n in range(16)]
ENVIRONMENTS = ["staging", "production", "gated", *(name for name, _, _ in SPARES)]
VERSIONS = ["v1.2.0", "v1.3.0", "v9.0.0"]

statuses: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints how many requests each operation got, by status (shown with -s)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not statuses:
        return
    reporter.write_line(f"\nAPI fuzz: {sum(statuses.values())} requests")
    for (operation, status), count in sorted(statuses.items()):
        reporter.write_line(f"  {operation:48} {status}: {count}")


def _world() -> tuple[tempfile.TemporaryDirectory[str], Controller, list[str]]:
    """The controller on a temp config, with real deployments in several phases: pending,
    awaiting approval, cancelled. Built at import, as schemathesis loads the schema then; the
    folder goes when the module's fixture below ends (or, at the latest, when the process exits)."""
    folder = tempfile.TemporaryDirectory(prefix="safeship-api-fuzz-")
    config = Path(folder.name) / "safeship.yaml"
    spares = "\n".join(
        f"    - {{name: {name}, type: {kind}, platform: local"
        + (", resource_quotas: {cpu: 1, memory: 512Mi}, approval: required}" if small else "}")
        for name, kind, small in SPARES
    )
    config.write_text(CONFIG.format(state_dir=Path(folder.name) / "state", spares=spares))
    built = Controller.from_config_file(config)
    ids = []
    for service, environment in [("user-service", "production"), ("user-service", "gated"), ("billing", "gated")]:
        request = DeploymentRequest(service_name=service, version="v1.2.0", environment=environment)
        ids.append(built.submit(request).id)
    built.cancel(ids[-1], by="fuzz")
    return folder, built, ids


FOLDER, CONTROLLER, DEPLOYMENT_IDS = _world()
# schemathesis calls the app with `Host: testserver`
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(CONTROLLER, TOKEN, extra_hosts=["testserver"]),
                                        headers=AUTH)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES)


@schema.hook  # type: ignore[untyped-decorator]
def flatmap_path_parameters(_context: Any, path_parameters: dict[str, Any] | None) -> Any:
    if not path_parameters:
        return st.just(path_parameters)
    known = dict(path_parameters)
    if "deployment_id" in known:
        return st.sampled_from(DEPLOYMENT_IDS).map(lambda i: known | {"deployment_id": i}) | st.just(known)
    if "service" in known:
        return st.sampled_from(SERVICES).map(lambda s: known | {"service": s}) | st.just(known)
    if "environment" in known:
        return st.sampled_from(ENVIRONMENTS).map(lambda e: known | {"environment": e}) | st.just(known)
    return st.just(known)


@schema.hook  # type: ignore[untyped-decorator]
def flatmap_body(_context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or "service_name" not in body:
        return st.just(body)
    named = st.fixed_dictionaries(
        {
            "service_name": st.sampled_from(SERVICES),
            "environment": st.sampled_from(ENVIRONMENTS),
            "version": st.sampled_from(VERSIONS),
        }
    )
    return named.map(lambda names: body | names) | st.just(body)


@pytest.fixture(scope="module", autouse=True)
def world() -> Iterator[None]:
    yield
    CONTROLLER.store.close()
    FOLDER.cleanup()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: Any) -> None:
    response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
    statuses[(f"{case.method} {case.path}", response.status_code)] += 1
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code >= 400 and content_type.startswith("application/json"):
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail, response.text  # one sentence, never a list


configured_names = st.fixed_dictionaries(
    {
        "service_name": st.sampled_from(SERVICES),
        "environment": st.sampled_from([*ENVIRONMENTS[3:], *ENVIRONMENTS[:3]]),  # the spares first
        "version": st.sampled_from(VERSIONS),
    }
)


@settings(max_examples=MAX_EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    case=schema["/deployments"]["POST"].as_strategy(),
    names=configured_names,
    policy=st.sampled_from([None, "safeship", "flagger", "argo", "kayenta", "seed"]),
)
def test_deployment_requests_with_configured_names_get_no_server_error(
    case: Any, names: dict[str, str], policy: str | None
) -> None:
    """Bodies that follow the schema, all naming a configured service, environment and version:
    they reach the gates, strategy selection and planning with generated settings."""
    case.body = case.body | names | {"policy": policy}
    response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error])
    statuses[("POST /deployments (configured names)", response.status_code)] += 1
    assert response.status_code in {201, 400, 404, 409, 422}, response.text
