"""The dashboard's pages render for every state a deployment can be in, and show what the store
holds: the overview's rows, a deployment's plan, chart data, evidence and events, the history
with its filters, and the environments' quota, freeze windows and validate results."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from apikit import LOCAL, TOKEN
from fastapi.testclient import TestClient

from safeship.api.app import create_app
from safeship.api.controller import Controller
from safeship.api.dashboard import views
from safeship.store import DeploymentRecord, EventRecord, RollbackRecord, StableVersion

SERVICE, ENV = "user-service", "production"
PLAN = [
    {"kind": "scale", "version": "v1.3.0", "replicas": 2},
    {"kind": "wait_ready", "version": "v1.3.0"},
    {"kind": "weights", "weights": {"v1.3.0": 25, "v1.2.0": 75}},
    {"kind": "analyze", "duration": 3.0},
    {"kind": "weights", "weights": {"v1.3.0": 100, "v1.2.0": 0}},
    {"kind": "promote"},
    {"kind": "monitor", "duration": 2.0},
]
PHASES = ["pending", "awaiting_approval", "preparing", "progressing", "monitoring", "succeeded",
          "rolling_back", "rolled_back", "failed", "cancelled"]


def record(id_: str, phase: str, *, step: int = 0, weight: int | None = None, created: float = 100.0,
           evidence: dict[str, object] | None = None, version: str = "v1.3.0") -> DeploymentRecord:
    status: dict[str, object] = {}
    if weight is not None:
        status["weights"] = {version: weight, "v1.2.0": 100 - weight}
    final = phase in ("succeeded", "rolled_back", "failed", "cancelled")
    return DeploymentRecord(
        id=id_, service=SERVICE, environment=ENV, version=version, from_version="v1.2.0",
        strategy="canary", strategy_reason="critical service with high availability: canary",
        policy="safeship", phase=phase, step_index=step, plan=PLAN, status=status, request={},
        created_at=created, updated_at=created + 10, phase_started_at=created, step_started_at=created,
        evidence=evidence, finished_at=created + 30 if final else None,
        reason="error rate 8% above the 5% trigger" if phase in ("rolled_back", "rolling_back") else None,
    )


def look(id_: str, at: float, weight: int, failed: int, e_errors: float) -> EventRecord:
    data = {
        "candidate_weight": weight,
        "candidate": {"requests": 100, "failed": failed, "error_rate": failed / 100, "p99_ms": 12.5},
        "baseline": {"requests": 300, "failed": 0, "error_rate": 0.0, "p99_ms": 10.0},
        "dt": 0.5, "verdict": "inconclusive", "reason": "too little candidate traffic yet",
        "evidence": {"candidate_requests": 100, "candidate_failed": failed, "baseline_requests": 300,
                     "baseline_failed": 0, "e_values": {"errors": e_errors, "latency_p99": 1.0},
                     "bounds": {"errors": 250.0, "latency_p99": 800.0}},
    }
    return EventRecord(id_, at, "look", f"look at {weight}%", data)


def rolled_back_deployment(controller: Controller, id_: str = "deploy-00000000bd") -> None:
    store = controller.store
    before = record(id_, "pending", created=200.0)
    store.create_deployment(before, [EventRecord(id_, 200.0, "created", "deploy user-service v1.3.0"),
                                     EventRecord(id_, 200.0, "strategy", "canary", {"strategy": "canary"})])
    evidence = {"trigger": "error_rate_threshold", "test": "errors", "e_value": 1234.5, "bound": 250.0,
                "alpha": 0.004, "candidate": {"requests": 300, "events": 24, "rate": 0.08},
                "e_values": {"errors": 1234.5, "latency_p99": 0.8},
                "bounds": {"errors": 250.0, "latency_p99": 800.0}}
    events = [
        EventRecord(id_, 201.0, "phase", "progressing", {"phase": "progressing"}),
        EventRecord(id_, 202.0, "weights", "traffic v1.3.0=25%, v1.2.0=75%",
                    {"weights": {"v1.3.0": 25, "v1.2.0": 75}}),
        look(id_, 203.0, 25, 4, 12.0),
        look(id_, 204.0, 25, 9, 400.0),
        EventRecord(id_, 204.0, "trigger", "error_rate_threshold: error rate 8% above the 5% trigger", evidence),
        EventRecord(id_, 204.0, "phase", "rolling back", {"phase": "rolling_back"}),
        EventRecord(id_, 206.0, "weights", "traffic v1.2.0=100%", {"weights": {"v1.2.0": 100}}),
        EventRecord(id_, 207.0, "phase", "rolled back", {"phase": "rolled_back"}),
    ]
    after = record(id_, "rolled_back", step=3, weight=0, created=200.0, evidence=evidence)
    rollback = RollbackRecord(id="rb-0001", deployment_id=id_, service=SERVICE, environment=ENV,
                              from_version="v1.3.0", to_version="v1.2.0", reason="error rate 8% above the 5% trigger",
                              evidence=evidence, automatic=True, started_at=204.0, duration_s=3.0, success=True,
                              timestamp=207.0)
    store.save_transition(before, after, events, rollback=rollback)


@pytest.fixture
def logged_in(client: TestClient) -> TestClient:
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303
    return client


@pytest.mark.parametrize("phase", PHASES)
def test_every_page_renders_for_a_deployment_in_each_phase(
    logged_in: TestClient, controller: Controller, phase: str
) -> None:
    id_ = "deploy-0000000001"
    weight = 25 if phase in ("progressing", "monitoring", "rolling_back") else None
    step = 6 if phase == "monitoring" else 3  # monitoring runs after the promotion
    controller.store.create_deployment(
        record(id_, phase, step=step, weight=weight),
        [EventRecord(id_, 100.0, "created", "deploy"), look(id_, 101.0, 25, 0, 1.5)],
    )
    for path in ("/", f"/ui/deployments/{id_}", "/ui/history", "/ui/environments",
                 f"/ui/deployments/{id_}/timeline.json"):
        answer = logged_in.get(path)
        assert answer.status_code == 200, (path, answer.text[-2000:])
    page = logged_in.get(f"/ui/deployments/{id_}").text
    assert phase.replace("_", " ") in page
    assert "critical service with high availability: canary" in page  # the strategy and why
    buttons = set(re.findall(r'data-action="(\w+)"', page))
    expected = {
        "awaiting_approval": {"approve", "promote", "abort"},
        "pending": {"promote", "abort"}, "preparing": {"promote", "abort"},
        "progressing": {"promote", "abort", "rollback"}, "monitoring": {"abort", "rollback"},
        "succeeded": {"rollback"},
    }.get(phase, set())
    assert buttons == expected
    overview = logged_in.get("/").text
    if phase in ("succeeded", "rolled_back", "failed", "cancelled"):
        assert "last: " in overview
    else:
        assert f'href="/ui/deployments/{id_}"' in overview and f"{step + 1}/7" in overview


def test_the_overview_shows_stable_version_active_deployment_weight_and_health(
    logged_in: TestClient, controller: Controller
) -> None:
    controller.store.record_stable(StableVersion(SERVICE, ENV, "v1.2.0", None, 1.0, None, True))
    controller.store.create_deployment(record("deploy-0000000002", "progressing", step=3, weight=25))
    page = logged_in.get("/").text
    row = page[page.index(f'data-service="{SERVICE}" data-environment="{ENV}"'):]
    row = row[: row.index("</tr>")]
    assert 'class="stable">v1.2.0<' in row
    assert "deploying" in row and "canary" in row and "progressing" in row
    assert "4/7" in row and "analyze 3s" in row and "25%" in row
    billing = page[page.index('data-service="billing" data-environment="production"'):]
    assert "not serving" in billing[: billing.index("</tr>")]


def test_a_rolled_back_deployment_shows_its_marker_evidence_and_rollback(
    logged_in: TestClient, controller: Controller
) -> None:
    rolled_back_deployment(controller)
    page = logged_in.get("/ui/deployments/deploy-00000000bd").text
    assert 'data-marker="rollback"' in page and 'data-marker="trigger"' in page
    assert 'class="step stopped"' in page and "analyze 3s" in page  # where it stopped
    # each test's e-value against its bound: errors crossed 250, p99 did not
    errors = page[page.index("<code>errors</code>"):]
    errors = errors[: errors.index("</tr>")]
    assert "1.23e+03" in errors and "250" in errors and "crossed" in errors
    p99 = page[page.index("<code>latency_p99</code>"):]
    assert "crossed" not in p99[: p99.index("</tr>")]
    assert "v1.3.0" in page and "error rate 8% above the 5% trigger" in page
    assert "Failed requests, candidate against baseline: its e-value 1234 reached the bound 250" in page
    assert "chance of at most 0.4%" in page and "The candidate: 24 of 300 requests in the window (8%)" in page
    timeline = logged_in.get("/ui/deployments/deploy-00000000bd/timeline.json").json()
    x, weight, err_c, err_b, p99_c, p99_b = timeline["columns"]
    assert weight == [25.0, 25.0, 25.0, 0.0]
    assert err_c == [None, 4.0, 9.0, None] and err_b == [None, 0.0, 0.0, None]
    assert p99_c[1:3] == [12.5, 12.5] and p99_b[1:3] == [10.0, 10.0]
    assert x == sorted(x)
    kinds = [m["kind"] for m in timeline["markers"]]
    assert kinds == ["step", "trigger", "rollback", "step", "rollback"]


def test_history_filters_by_service_environment_and_outcome(logged_in: TestClient, controller: Controller) -> None:
    rolled_back_deployment(controller)
    controller.store.create_deployment(record("deploy-00000000ok", "succeeded", created=300.0, version="v1.4.0"))
    page = logged_in.get("/ui/history").text
    assert "deploy-00000000bd" in page and "deploy-00000000ok" in page
    rollback_row = page[page.index('<tr class="rollback"'):]
    rollback_row = rollback_row[: rollback_row.index("</tr>")]
    assert all(s in rollback_row for s in ("v1.3.0", "v1.2.0", "error rate 8% above", "3.0s", "automatic"))
    assert 'href="/ui/deployments/deploy-00000000bd"' in rollback_row
    only_ok = logged_in.get("/ui/history?outcome=succeeded").text
    assert "deploy-00000000ok" in only_ok and 'data-deployment="deploy-00000000bd" data-phase' not in only_ok
    assert "Nothing matches" in logged_in.get("/ui/history?service=billing").text
    assert "Nothing matches" in logged_in.get("/ui/history?environment=staging").text
    bad = logged_in.get("/ui/history?service=..%2Fetc")
    assert bad.status_code == 400 and "service filter" in bad.text


def test_the_environments_page_shows_quota_freeze_windows_and_validate_results(
    tmp_path: Path, config_file: Path
) -> None:
    text = config_file.read_text().replace(
        "- {name: production, type: production, platform: local}",
        "- {name: production, type: production, platform: local, resource_quotas: {cpu: 2, memory: 1Gi},"
        " freeze_windows: [{name: mornings, start: '00:00', end: '12:00'}, {name: evenings, start: '12:00',"
        " end: '00:00'}]}",
    )
    config_file.write_text(text)
    controller = Controller.from_config_file(config_file)
    try:
        controller.store.record_stable(StableVersion(SERVICE, ENV, "v1.2.0", None, 1.0, None, True))
        with TestClient(create_app(controller, TOKEN), base_url=LOCAL) as client:
            client.post("/ui/login", data={"token": TOKEN}, follow_redirects=False)
            page = client.get("/ui/environments").text
            assert "mornings (daily 00:00-12:00 UTC)" in page and "evenings (daily 12:00-00:00 UTC)" in page
            assert page.count("in force now") == 1  # the two windows cover the day
            replicas = controller.config.services[SERVICE].replicas
            cpu = replicas * controller.config.services[SERVICE].resources.cpu
            assert f"cpu: {round(cpu, 3)} of 2.0 cores" in page
            assert "Not validated since this controller started" in page
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
            assert csrf is not None
            refused = client.post("/ui/environments/production/validate", data={}, follow_redirects=False)
            assert refused.status_code == 403
            done = client.post("/ui/environments/production/validate", data={"csrf": csrf.group(1)},
                               follow_redirects=False)
            assert done.status_code == 303
            page = client.get("/ui/environments").text
            assert "cpu quota" in page and "disk space" in page
    finally:
        controller.store.close()


def test_an_unknown_deployment_page_is_404_in_one_sentence(logged_in: TestClient) -> None:
    answer = logged_in.get("/ui/deployments/deploy-ffffffffff")
    assert answer.status_code == 404 and "not found" in answer.text
    assert logged_in.get("/ui/deployments/deploy%20x").status_code == 404


def test_the_stream_sends_the_events_written_after_its_cursor(
    config_file: Path, controller: Controller
) -> None:
    app = create_app(controller, TOKEN, dashboard=False)
    from safeship.api.dashboard import mount

    mount(app, controller, TOKEN, stream_max_s=1.0, stream_poll_s=0.05)
    controller.store.create_deployment(record("deploy-0000000003", "progressing"),
                                       [EventRecord("deploy-0000000003", 1.0, "created", "first")])
    with TestClient(app, base_url=LOCAL) as client:
        client.post("/ui/login", data={"token": TOKEN}, follow_redirects=False)
        with client.stream("GET", "/ui/stream?after=0&deployment=deploy-0000000003") as answer:
            assert answer.status_code == 200
            text = "".join(answer.iter_text())  # the stream ends by itself after stream_max_s
    changes = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "kind" in line]
    assert [(c["deployment_id"], c["kind"], c["message"]) for c in changes] == [
        ("deploy-0000000003", "created", "first")]
    assert "id: " in text  # a reconnecting browser resumes from the last id it saw


def test_chart_columns_line_up(controller: Controller) -> None:
    rolled_back_deployment(controller)
    chart = views.timeline(controller.store.get_deployment("deploy-00000000bd"),
                           controller.store.events("deploy-00000000bd"))
    columns = chart.to_json()["columns"]
    assert len({len(c) for c in columns}) == 1


@pytest.fixture
def no_dashboard(controller: Controller) -> Iterator[TestClient]:
    with TestClient(create_app(controller, TOKEN, dashboard=False), base_url=LOCAL) as client:
        yield client


def test_the_app_without_the_dashboard_has_no_pages(no_dashboard: TestClient) -> None:
    assert no_dashboard.get("/", follow_redirects=False).status_code == 404


class Browser:
    """A stand-in for the request of a stream: the client goes away after `stays` checks."""

    def __init__(self, stays: int) -> None:
        self.stays = stays
        self.checks = 0

    async def is_disconnected(self) -> bool:
        self.checks += 1
        return self.checks > self.stays


async def test_the_stream_ends_when_the_client_goes_away(controller: Controller) -> None:
    from safeship.api.dashboard.routes import Dashboard, _events

    board = Dashboard(controller, TOKEN, stream_max_s=3600.0, stream_poll_s=0.01)
    browser = Browser(stays=3)
    sent = [item async for item in _events(board, browser, None, 0)]  # type: ignore[arg-type]
    assert [item["event"] for item in sent] == ["hello"]
    assert browser.checks == 4  # it stopped at the first check after the client left


async def test_the_stream_holds_no_lock_between_reads(
    controller: Controller, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeship.api.dashboard.routes import Dashboard, _events
    from safeship.store import Store

    id_ = "deploy-0000000004"
    controller.store.create_deployment(record(id_, "progressing"), [EventRecord(id_, 1.0, "created", "first")])
    board = Dashboard(controller, TOKEN, stream_max_s=3600.0, stream_poll_s=0.01)
    stream = _events(board, Browser(stays=1000), id_, 0)  # type: ignore[arg-type]
    try:
        assert (await anext(stream))["event"] == "hello"
        first = json.loads((await anext(stream))["data"])
        assert first["message"] == "first"
        monkeypatch.setenv("SAFESHIP_STORE_BUSY_TIMEOUT", "0.5")
        writer = Store(f"sqlite:///{config_file.parent / 'state' / 'state.db'}")
        try:  # another process writes while the stream waits between reads
            writer.add_events([EventRecord(id_, 2.0, "weights", "second", {"weights": {"v1.3.0": 25}})])
        finally:
            writer.close()
        second = await anext(stream)
        assert json.loads(second["data"])["message"] == "second"
        assert int(second["id"]) > first["id"]
    finally:
        await stream.aclose()


def test_a_long_deployment_page_shows_its_newest_events(logged_in: TestClient, controller: Controller) -> None:
    id_ = "deploy-0000000005"
    looks = [look(id_, 100.0 + i, 25, 0, 1.0) for i in range(views.EVENTS_SHOWN + 20)]
    controller.store.create_deployment(record(id_, "progressing", step=3, weight=25), looks)
    page = logged_in.get(f"/ui/deployments/{id_}").text
    assert page.count('<tr class="event look">') == views.EVENTS_SHOWN
    assert "20 older events are not shown here" in page
    timeline = logged_in.get(f"/ui/deployments/{id_}/timeline.json").json()
    assert len(timeline["columns"][0]) == views.EVENTS_SHOWN + 20  # the chart has every look


def test_validate_results_kept_in_the_store_are_shown_when_newer(logged_in: TestClient, controller: Controller) -> None:
    checks = [{"check": "disk space", "ok": False, "detail": "3Mi free (at least 200Mi wanted)"}]
    controller.store.save_environment_state(
        "production", {"ports": {"user-service": None}, "last_validate": {"at": 5.0, "ok": False, "checks": checks}},
        at=5.0,
    )
    page = logged_in.get("/ui/environments").text
    assert "checks failed" in page and "3Mi free (at least 200Mi wanted)" in page
    assert "Prepared state" in page


def test_a_failure_below_a_page_is_one_sentence_and_a_status(
    logged_in: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeship.errors import StoreError

    def locked(*_args: object, **_kwargs: object) -> None:
        raise StoreError("the store is locked by PID 42 (deployment-engine)")

    monkeypatch.setattr(controller.store, "list_deployments", locked)
    answer = logged_in.get("/ui/history")
    assert answer.status_code == 503 and "locked by PID 42" in answer.text

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(controller.store, "list_deployments", broken)
    answer = logged_in.get("/ui/history")
    assert answer.status_code == 500 and "the controller failed (RuntimeError)" in answer.text
    assert "a bug" not in answer.text


def test_while_it_runs_the_evidence_names_the_test_closest_to_its_bound(
    logged_in: TestClient, controller: Controller
) -> None:
    id_ = "deploy-0000000006"
    controller.store.create_deployment(record(id_, "progressing", step=3, weight=25),
                                       [look(id_, 101.0, 25, 3, 40.0)])
    page = logged_in.get(f"/ui/deployments/{id_}").text
    assert "From the last look" in page
    assert "No test has reached its bound; the closest is failed requests, candidate against baseline" in page
    assert "So far the candidate failed 3 of 100 requests, the baseline 0 of 300." in page


def test_chart_data_embedded_in_the_page_cannot_end_its_script_element(
    logged_in: TestClient, controller: Controller
) -> None:
    id_ = "deploy-0000000007"
    controller.store.create_deployment(record(id_, "progressing", step=3, weight=25), [
        EventRecord(id_, 100.0, "trigger", "custom_metric: </script><script>alert(1)</script>", {}),
    ])
    page = logged_in.get(f"/ui/deployments/{id_}").text
    assert "</script><script>alert(1)" not in page
    embedded = page[page.index('id="timeline-data">') + len('id="timeline-data">'):]
    data = json.loads(embedded[: embedded.index("</script>")])
    assert data["markers"][0]["label"] == "custom_metric: </script><script>alert(1)</script>"


@pytest.mark.parametrize(("phase", "step", "shown"), [("pending", 0, "1/7"), ("progressing", 3, "4/7"),
                                                      ("succeeded", 7, "7/7")])
def test_the_dashboard_and_the_cli_show_the_same_step_and_say_times_are_utc(
    logged_in: TestClient, controller: Controller, phase: str, step: int, shown: str
) -> None:
    from safeship.cli.common import deployment_json
    from safeship.cli.output import console as cli_console
    from safeship.cli.output import progress_line, show_deployment

    id_ = "deploy-0000000009"
    at = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
    saved = record(id_, phase, step=step, weight=25 if phase == "progressing" else None, created=at)
    controller.store.create_deployment(saved, [EventRecord(id_, at + 1, "created", "deploy")])
    page = logged_in.get(f"/ui/deployments/{id_}").text
    assert f"<dt>Step</dt><dd>{shown}</dd>" in page
    if phase != "succeeded":
        assert f'data-label="Step">{shown}' in logged_in.get("/").text
    data = deployment_json(saved)
    assert f" step {shown} " in progress_line(data, 1.0)
    with cli_console.capture() as captured:
        show_deployment(data)
    assert re.search(rf"step\s+{shown}\b", captured.get())
    # one zone on the page, and it says which: the facts, the events and the chart's axis are UTC
    assert "2026-01-01 00:00:00 UTC" in page and "Times are UTC" in page
    script = (Path(views.__file__).parent / "static" / "dashboard.js").read_text()
    assert 'tzDate(new Date(ts * 1e3), "UTC")' in script and 'label: "time (UTC)"' in script
