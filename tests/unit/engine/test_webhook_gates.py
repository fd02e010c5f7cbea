"""Webhook gates on the sim world, with a real HTTP receiver on loopback: where each gate type runs
in a plan, what a confirm gate's hold looks like to a user (the deployment waits, `--status` and
the API view say which gate holds it, since when and what it answered) and how a 2xx releases it,
a pre-rollout failure that rolls back naming the gate, a rollback gate that rolls back, and
post-rollout answers that change nothing. Also `Engine.promote` (promote now)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness import drive, scenario
from policies import StepPolicy

from safeship.cli.common import deployment_json
from safeship.cli.output import show_deployment
from safeship.config.models import DeploymentRequest, DeploymentStrategy, SafeshipConfig
from safeship.config.webhooks import WebhookGateConfig
from safeship.engine.phases import Phase
from safeship.engine.simulate import BASELINE, CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.engine.views import deployment_view
from safeship.errors import ConflictError, InputError
from safeship.store import DeploymentRecord
from safeship.strategies import STRATEGIES, PlanInput
from safeship.strategies.base import Step, with_gates

# ---------------------------------------------------------------- a receiver on loopback


@dataclass
class Receiver:
    """Answers POST /<gate> with the status set for that path (default 200) and keeps the bodies.
    A path set to `slow` waits (bounded) before it answers, to stand for a gate that hangs."""

    url: str = ""
    answers: dict[str, int] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)
    bodies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> str:
        return f"{self.url}/{path}"

    def got(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies.get(path, []))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            path = self.path.strip("/")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.bodies.setdefault(path, []).append(body)
                code = state.answers.get(path, 200)
                slow = path in state.slow
            if slow:
                state.release.wait(10.0)
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- helpers


def gate(receiver: Receiver, name: str, kind: str, **settings: Any) -> WebhookGateConfig:
    return WebhookGateConfig.model_validate({"name": name, "type": kind, "url": receiver.at(name),
                                             "timeout": "2s", "backoff": "1s", "interval": "10s", **settings})


def _config() -> SafeshipConfig:
    return SafeshipConfig.model_validate({"intelligent_deployment": {
        "strategies": {"canary": {"traffic_percentages": [20, 50, 100], "step_duration": "10s",
                                  "min_step_duration": "5s"}},
        "rollback": {"monitoring": {"duration": "10s", "interval": "5s"}},
    }})


async def _sim(*gates: WebhookGateConfig, store: Any = None) -> Simulation:
    sim = await build(scenario(error_rate=0.005), policy_for=lambda _n: StepPolicy(), config=_config(), store=store)
    sim.engine.config.services[SERVICE].webhooks = list(gates)
    return sim


def _submit(sim: Simulation, strategy: DeploymentStrategy = DeploymentStrategy.CANARY) -> str:
    request = DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                deployment_strategy=strategy)
    return sim.engine.submit(request, policy="step").id


async def _until(sim: Simulation, deployment_id: str, done: Any, ticks: int = 400) -> DeploymentRecord:
    """Tick (advancing the virtual clock by each wait) until `done(record)` or the deployment ends."""
    for _ in range(ticks):
        wait = await sim.engine.advance(deployment_id)
        record = sim.store.get_deployment(deployment_id)
        if done(record) or Phase(record.phase).is_final:
            return record
        sim.clock.advance(max(wait, 0.05))
    raise AssertionError("the condition was never met")


def _held(record: DeploymentRecord) -> bool:
    return bool((record.status.get("gate") or {}).get("held_since"))


def _kinds(sim: Simulation, deployment_id: str) -> list[str]:
    return [e.kind for e in sim.store.events(deployment_id)]


def _candidate_share(sim: Simulation) -> list[int]:
    return [w.get(CANDIDATE, 0) for _, _, w in sim.router.weight_log]


def _kinds_of(plan: list[Step]) -> list[str]:
    return [f"gate:{s['type']}" if s["kind"] == "gate" else s["kind"] for s in plan]  # type: ignore[typeddict-item]


# ---------------------------------------------------------------- where gates run in a plan


ALL_TYPES = ("confirm-rollout", "pre-rollout", "confirm-traffic-increase", "confirm-promotion", "post-rollout",
             "rollback")


def _plan_input(baseline: str | None = BASELINE) -> PlanInput:
    settings = _config().intelligent_deployment
    return PlanInput(service=SERVICE, candidate=CANDIDATE, baseline=baseline, replicas=2, settings=settings,
                     policy_weights=[20, 50, 100], readiness_timeout=30.0)


def _every_gate() -> list[WebhookGateConfig]:
    return [WebhookGateConfig(name=kind, type=kind, url=f"http://127.0.0.1:9/{kind}") for kind in ALL_TYPES]


@pytest.mark.parametrize("strategy", list(DeploymentStrategy))
@pytest.mark.parametrize("baseline", [BASELINE, None])
def test_without_gates_every_plan_is_unchanged(strategy: DeploymentStrategy, baseline: str | None) -> None:
    plan = STRATEGIES[strategy].plan(_plan_input(baseline))
    assert with_gates(plan, [], CANDIDATE) == plan
    only_engine_asked = [g for g in _every_gate() if g.type in ("post-rollout", "rollback")]
    assert with_gates(plan, only_engine_asked, CANDIDATE) == plan


def test_canary_gates_run_before_the_rollout_traffic_increases_and_the_promotion() -> None:
    plan = with_gates(STRATEGIES[DeploymentStrategy.CANARY].plan(_plan_input()), _every_gate(), CANDIDATE)
    assert _kinds_of(plan) == [
        "gate:confirm-rollout", "scale", "wait_ready",
        "gate:pre-rollout", "gate:confirm-traffic-increase", "weights", "analyze",  # 20%
        "gate:confirm-traffic-increase", "weights", "analyze",  # 50%
        "scale", "wait_ready", "gate:confirm-promotion", "weights", "promote", "monitor", "scale",
    ]


def test_blue_green_recreate_rolling_and_first_deployments_place_their_gates() -> None:
    def kinds(strategy: DeploymentStrategy, baseline: str | None = BASELINE) -> list[str]:
        return _kinds_of(with_gates(STRATEGIES[strategy].plan(_plan_input(baseline)), _every_gate(), CANDIDATE))

    assert kinds(DeploymentStrategy.BLUE_GREEN) == [
        "gate:confirm-rollout", "scale", "wait_ready", "gate:pre-rollout", "gate:confirm-traffic-increase",
        "prove", "gate:confirm-traffic-increase", "weights", "wait_ready", "analyze", "gate:confirm-promotion",
        "promote", "monitor", "pause", "scale"]
    assert kinds(DeploymentStrategy.RECREATE) == [
        "gate:confirm-rollout", "hold", "scale", "scale", "wait_ready", "gate:pre-rollout",
        "gate:confirm-traffic-increase", "weights", "analyze", "gate:confirm-promotion", "promote", "monitor"]
    # rolling: 33% then 100% are raises; the second 100% is not; the last one is the promotion's
    assert kinds(DeploymentStrategy.ROLLING) == [
        "gate:confirm-rollout", "scale", "wait_ready", "gate:pre-rollout", "gate:confirm-traffic-increase",
        "weights", "scale", "analyze", "gate:confirm-traffic-increase", "weights", "scale", "scale", "wait_ready",
        "weights", "scale", "gate:confirm-promotion", "weights", "promote", "monitor"]
    assert kinds(DeploymentStrategy.CANARY, None) == [
        "gate:confirm-rollout", "scale", "wait_ready", "gate:pre-rollout", "gate:confirm-promotion", "weights",
        "promote", "monitor"]


def test_gates_of_one_type_run_in_the_order_the_config_lists_them() -> None:
    gates = [WebhookGateConfig(name=name, type="confirm-promotion", url="http://127.0.0.1:9/x")
             for name in ("qa", "ops", "security")]
    plan = with_gates(STRATEGIES[DeploymentStrategy.BLUE_GREEN].plan(_plan_input()), gates, CANDIDATE)
    assert [s["gate"] for s in plan if s["kind"] == "gate"] == ["qa", "ops", "security"]


async def test_the_stored_plan_carries_the_gate_steps_and_not_their_urls(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion", metadata={"team": "payments"}))
    record = sim.store.get_deployment(_submit(sim))
    gates = [s for s in record.plan if s["kind"] == "gate"]
    assert gates == [{"kind": "gate", "gate": "ask-ops", "type": "confirm-promotion"}]
    assert receiver.url not in json.dumps(record.plan)


async def test_gate_names_used_twice_are_refused_naming_the_name(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "same", "confirm-rollout"), gate(receiver, "same", "pre-rollout"))
    with pytest.raises(InputError, match="webhooks: gate name 'same' is used twice"):
        _submit(sim)
    assert sim.store.list_deployments() == []


def test_a_gate_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="must start with http:// or https://, got 'ftp://x'"):
        WebhookGateConfig.model_validate({"name": "g", "type": "pre-rollout", "url": "ftp://x"})


# ---------------------------------------------------------------- confirm gates hold


async def test_a_500_from_confirm_promotion_holds_the_promotion_and_a_200_releases_it(
        receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion", metadata={"ticket": "OPS-7"}))
    receiver.answers["ask-ops"] = 500
    deployment_id = _submit(sim)
    held = await _until(sim, deployment_id, _held)
    assert held.phase == "progressing" and held.decision is None
    # the candidate has not taken all traffic: the promotion waits
    assert max(_candidate_share(sim)) == 50 and sim.router.weight_log[-1][2][CANDIDATE] == 50
    view = deployment_view(held)
    assert view["gate"]["name"] == "ask-ops" and view["gate"]["type"] == "confirm-promotion"
    assert view["gate"]["held"] is True and view["gate"]["last_answer"] == "HTTP 500"
    since = view["gate"]["since"]
    show_deployment(deployment_json(held, sim.store.events(deployment_id)))  # what --status prints
    printed = capsys.readouterr().out
    assert "held by confirm-promotion gate 'ask-ops' since" in printed and "last answer HTTP 500" in printed
    assert "gate_held" in printed
    # asked again every interval, still held; one gate_held event for one answer
    for _ in range(3):
        sim.clock.advance(10.0)
        await sim.engine.advance(deployment_id)
    again = sim.store.get_deployment(deployment_id)
    assert _held(again) and deployment_view(again)["gate"]["since"] == since
    assert len(receiver.got("ask-ops")) == 4
    assert _kinds(sim, deployment_id).count("gate_held") == 1
    receiver.answers["ask-ops"] = 200
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded", seen.record.reason
    assert len(receiver.got("ask-ops")) == 5
    passed = [e for e in sim.store.events(deployment_id) if e.kind == "gate_passed"]
    assert len(passed) == 1 and "ask-ops" in passed[0].message and "HTTP 200" in passed[0].message
    assert deployment_view(seen.record)["gate"] is None
    body = receiver.got("ask-ops")[-1]
    assert body["id"] == deployment_id and body["service"] == SERVICE and body["environment"] == ENVIRONMENT
    assert (body["version"], body["baseline"], body["phase"]) == (CANDIDATE, BASELINE, "progressing")
    assert body["gate"] == {"name": "ask-ops", "type": "confirm-promotion"}
    assert body["metadata"] == {"ticket": "OPS-7"} and body["weights"] == {BASELINE: 50, CANDIDATE: 50}


async def test_a_held_confirm_rollout_starts_nothing_and_a_cancel_ends_the_hold(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "window", "confirm-rollout"))
    receiver.answers["window"] = 403
    deployment_id = _submit(sim)
    held = await _until(sim, deployment_id, _held)
    assert held.step_index == 0
    instances = await sim.platform.instances(SERVICE, ENVIRONMENT)
    assert {i.version for i in instances} == {BASELINE}
    sim.engine.cancel(deployment_id, by="ops")
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "cancelled" and deployment_view(seen.record)["gate"] is None
    assert max(_candidate_share(sim)) == 0


async def test_confirm_traffic_increase_holds_each_raise_until_it_answers_2xx(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "more", "confirm-traffic-increase"))
    receiver.answers["more"] = 503
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, _held)
    assert max(_candidate_share(sim)) == 0  # not even the first 20%
    receiver.answers["more"] = 204
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded"
    assert [w for w in _candidate_share(sim) if w] == [20, 50, 100]
    assert len([e for e in sim.store.events(deployment_id) if e.kind == "gate_passed"]) == 2


async def test_a_gate_that_never_answers_holds_with_a_timeout(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "hangs", "confirm-rollout", timeout="300ms"))
    receiver.slow.add("hangs")
    deployment_id = _submit(sim)
    held = await _until(sim, deployment_id, _held)
    assert deployment_view(held)["gate"]["last_answer"] == "timed out after 0.3s"


# ---------------------------------------------------------------- pre-rollout, rollback, post-rollout


async def test_a_failing_pre_rollout_gate_rolls_back_naming_the_gate_and_its_answer(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "smoke", "pre-rollout", retries=2))
    receiver.answers["smoke"] = 500
    deployment_id = _submit(sim)
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "rolled_back"
    assert seen.record.reason == "pre-rollout gate 'smoke' failed: HTTP 500 (3 attempts)"
    assert len(receiver.got("smoke")) == 3
    assert max(_candidate_share(sim)) == 0  # it never took a request
    failed = [e for e in sim.store.events(deployment_id) if e.kind == "gate_failed"]
    assert len(failed) == 1 and failed[0].data["answer"] == "HTTP 500"
    assert sim.store.rollbacks(service=SERVICE)[0].reason.startswith("webhook: pre-rollout gate 'smoke'")


async def test_a_pre_rollout_gate_that_recovers_within_its_retries_passes(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "smoke", "pre-rollout", retries=3))
    receiver.answers["smoke"] = 502
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, lambda r: len(receiver.got("smoke")) >= 2)
    receiver.answers["smoke"] = 200
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded" and len(receiver.got("smoke")) == 3


async def test_a_2xx_from_a_rollback_gate_during_analysis_rolls_back(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "big-red-button", "rollback", interval="5s"))
    receiver.answers["big-red-button"] = 404
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, lambda r: len(receiver.got("big-red-button")) >= 2)
    assert sim.store.get_deployment(deployment_id).phase == "progressing"
    receiver.answers["big-red-button"] = 200
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "rolled_back"
    assert seen.record.reason == "rollback gate 'big-red-button' answered HTTP 200: roll back"
    assert sim.router.weight_log[-1][2] == {BASELINE: 100}
    rollback = sim.store.rollbacks(service=SERVICE)[0]
    assert rollback.automatic is False and "big-red-button" in rollback.reason


async def test_a_rollback_gate_is_asked_while_a_confirm_gate_holds(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion"), gate(receiver, "abort", "rollback"))
    receiver.answers.update({"ask-ops": 500, "abort": 404})
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, _held)
    receiver.answers["abort"] = 200
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "rolled_back" and "abort" in (seen.record.reason or "")
    assert max(_candidate_share(sim)) == 50


async def test_post_rollout_is_told_the_end_and_its_failure_changes_nothing(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "tell", "post-rollout", retries=1, backoff="10ms"),
                     gate(receiver, "down", "post-rollout", retries=1, backoff="10ms"))
    receiver.answers["down"] = 500
    deployment_id = _submit(sim)
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded"
    [told] = receiver.got("tell")
    assert told["phase"] == "succeeded" and told["weights"] == {CANDIDATE: 100}
    assert len(receiver.got("down")) == 2
    events = {e.kind: e for e in sim.store.events(deployment_id) if e.kind in ("gate_passed", "gate_failed")}
    assert events["gate_failed"].data["gate"] == "down" and events["gate_failed"].data["attempts"] == 2
    assert events["gate_passed"].data["gate"] == "tell"


# ---------------------------------------------------------------- promote now


async def test_promote_now_skips_the_analysis_and_records_who(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion"))
    receiver.answers["ask-ops"] = 500
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, lambda r: r.status.get("weights", {}).get(CANDIDATE) == 20)
    sim.engine.promote(deployment_id, by="alice")
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded" and seen.record.decision == "promote"
    assert [w for w in _candidate_share(sim) if w] == [20, 100]  # 50% and the held gate were skipped
    assert receiver.got("ask-ops") == []
    [event] = [e for e in sim.store.events(deployment_id) if e.kind == "promote_now"]
    assert event.data["by"] == "alice" and "alice" in event.message
    instances = await sim.platform.instances(SERVICE, ENVIRONMENT)
    assert {i.version for i in instances if i.state.value != "stopped"} == {CANDIDATE}


async def test_promote_now_starts_the_whole_candidate_before_it_takes_all_traffic() -> None:
    sim = await _sim()
    deployment_id = _submit(sim, DeploymentStrategy.RECREATE)
    sim.engine.promote(deployment_id, by="bob")  # still pending: nothing ran yet
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded"
    instances = await sim.platform.instances(SERVICE, ENVIRONMENT)
    assert sorted(i.version for i in instances if i.state.value != "stopped") == [CANDIDATE, CANDIDATE]


async def test_promote_now_is_refused_once_ended_while_rolling_back_or_after_the_promotion() -> None:
    sim = await _sim()
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, lambda r: r.decision == "promote")
    with pytest.raises(ConflictError, match="already promoted"):
        sim.engine.promote(deployment_id, by="alice")
    await drive(sim, deployment_id)
    with pytest.raises(ConflictError, match="already ended"):
        sim.engine.promote(deployment_id, by="alice")
    sim.engine.request_rollback(deployment_id, reason="manual")
    with pytest.raises(ConflictError, match="rolling back"):
        sim.engine.promote(deployment_id, by="alice")
    assert "promote_now" not in _kinds(sim, deployment_id)


async def test_a_foreground_run_on_the_virtual_clock_returns_while_a_gate_holds(receiver: Receiver) -> None:
    # virtual intervals pass at once: the run returns instead of asking the gate without pause
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion"))
    receiver.answers["ask-ops"] = 500
    deployment_id = _submit(sim)
    record = await sim.engine.run(deployment_id)
    assert record.phase == "progressing" and _held(record)
    assert len(receiver.got("ask-ops")) == 1
    receiver.answers["ask-ops"] = 200
    sim.clock.advance(10.0)
    final = await sim.engine.run(deployment_id)  # the next driver asks again
    assert final.phase == "succeeded" and len(receiver.got("ask-ops")) == 2


async def test_a_second_engine_resumes_a_hold_where_the_first_left_it(receiver: Receiver, tmp_path: Any) -> None:
    from safeship.engine.context import World
    from safeship.engine.engine import DeploymentEngine
    from safeship.store import Store

    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion"), store=Store(f"sqlite:///{tmp_path / 'state.db'}"))
    receiver.answers["ask-ops"] = 500
    deployment_id = _submit(sim)
    held = await _until(sim, deployment_id, _held)
    since = held.status["gate"]["held_since"]
    sim.engine = DeploymentEngine(sim.engine.config, Store(sim.store.url),
                                  World(sim.platform, sim.router, sim.clock, None), policy_for=lambda _n: StepPolicy())
    sim.store = sim.engine.store
    sim.clock.advance(10.0)
    await sim.engine.advance(deployment_id)
    again = sim.store.get_deployment(deployment_id)
    assert again.status["gate"]["held_since"] == since and again.status["gate"]["attempts"] == 2
    receiver.answers["ask-ops"] = 200
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded"


async def test_promote_now_releases_a_held_gate_without_asking_it_again(receiver: Receiver) -> None:
    sim = await _sim(gate(receiver, "ask-ops", "confirm-promotion"))
    receiver.answers["ask-ops"] = 500
    deployment_id = _submit(sim)
    await _until(sim, deployment_id, _held)
    promoted = sim.engine.promote(deployment_id, by="carol")
    assert deployment_view(promoted)["gate"] is None
    seen = await drive(sim, deployment_id)
    assert seen.record.phase == "succeeded" and len(receiver.got("ask-ops")) == 1
    assert sim.router.weight_log[-1][2] == {CANDIDATE: 100}


async def test_promote_now_waits_for_an_approval_first() -> None:
    sim = await _sim()
    sim.engine.config.environment_management.environments[0].approval = "required"
    deployment_id = _submit(sim)
    await sim.engine.advance(deployment_id)
    with pytest.raises(ConflictError, match="awaits approval; approve it first"):
        sim.engine.promote(deployment_id, by="dave")
