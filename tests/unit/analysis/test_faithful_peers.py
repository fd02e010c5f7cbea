"""The models of other tools run those tools' own rollouts through the real engine on the sim world:
none of them gets safeship's own mechanisms (the confirmation split, the record before the
deployment), and each tool's blue-green runs as that tool documents it. Everything asserted is
observable: the weights the router applied, the events in the store, the decision."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from safeship.analysis.policies import get_policy
from safeship.analysis.policies.flagger import FlaggerPolicy
from safeship.analysis.policies.safeship import SafeshipPolicy
from safeship.config.models import DeploymentRequest, DeploymentStrategy
from safeship.config.scenario import Scenario
from safeship.engine.phases import Phase
from safeship.engine.simulate import CANDIDATE, ENVIRONMENT, SERVICE, Simulation, build
from safeship.store import DeploymentRecord, EventRecord

BASELINE = "baseline"
PEERS = ["seed", "flagger", "argo", "kayenta", "flagger-tuned", "argo-tuned", "kayenta-tuned"]
STRATEGIES = [DeploymentStrategy.CANARY, DeploymentStrategy.BLUE_GREEN, DeploymentStrategy.ROLLING,
              DeploymentStrategy.RECREATE]
SAFESHIP_ONLY = {"confirming", "confirm_cleared", "history", "history_unavailable"}
GROSS = {"error_rate": 0.2}  # a clearly bad release, from its first request
LATE = {"error_rate": 0.12, "onset_s": 1200}  # good for 20 minutes, then bad: after any promotion


def scenario(candidate: dict[str, Any], *, incidents: list[dict[str, Any]] | None = None) -> Scenario:
    return Scenario.model_validate({
        "name": "peer", "seed": 5, "duration_s": 2400,
        "traffic": {"rps": 80, "incidents": incidents or []},
        "baseline": {"error_rate": 0.004, "latency_ms": {"p50": 45, "p99": 220}},
        "candidate": candidate, "expect": "promote",
    })


@dataclass
class Run:
    record: DeploymentRecord
    events: list[EventRecord]
    weights: list[dict[str, int]]  # every split the router applied, in order
    sim: Simulation

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[EventRecord]:
        return [e for e in self.events if e.kind == kind]

    def switch(self) -> int:
        """The position among the events where the candidate first took all user traffic (the
        number of events: never). Positions, not times: steps of one tick share a time."""
        return next((i for i, e in enumerate(self.events)
                     if e.kind == "weights" and e.data["weights"] == {CANDIDATE: 100}), len(self.events))

    def looks(self, *, before: int | None = None, after: int | None = None) -> list[EventRecord]:
        """The looks (between the positions given)."""
        return [e for i, e in enumerate(self.events) if e.kind == "look"
                and (before is None or i < before) and (after is None or i > after)]


async def deploy(policy: str, strategy: DeploymentStrategy, candidate: dict[str, Any], *,
                 seed: int = 1, incidents: list[dict[str, Any]] | None = None) -> Run:
    sim = await build(scenario(candidate, incidents=incidents), seed=seed, policy_for=get_policy)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=strategy), policy=policy)
    sim.world.start_deployment(record.created_at)
    return await drive(sim, record.id)


async def drive(sim: Simulation, deployment_id: str) -> Run:
    for _ in range(50_000):
        wait = await sim.engine.advance(deployment_id)
        record = sim.store.get_deployment(deployment_id)
        if Phase(record.phase).is_final:
            break
        sim.clock.advance(max(wait, 0.05))
    else:
        raise AssertionError("the deployment never ended")
    return Run(record, sim.store.events(deployment_id), [w for _, _, w in sim.router.weight_log], sim)


def after_all_traffic(weights: list[dict[str, int]]) -> list[dict[str, int]]:
    """The splits applied after the candidate first took all traffic."""
    first = next((i for i, w in enumerate(weights) if w == {CANDIDATE: 100}), len(weights))
    return weights[first + 1:]


# ---------------------------------------------------------------- safeship's own mechanisms


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("policy", PEERS)
async def test_no_peer_gets_the_confirmation_split_or_the_record_before_the_deployment(
        policy: str, strategy: DeploymentStrategy) -> None:
    for candidate in (GROSS, LATE):
        run = await deploy(policy, strategy, candidate)
        assert not SAFESHIP_ONLY & set(run.kinds), (candidate, run.kinds)
        assert not any("confirm" in step for step in run.record.plan), run.record.plan
        # once the candidate took all traffic, the only other split is a rollback's
        assert all(w in ({CANDIDATE: 100}, {BASELINE: 100}) for w in after_all_traffic(run.weights)), run.weights
        if strategy is not DeploymentStrategy.CANARY:  # where 50% is no configured canary weight
            assert {BASELINE: 50, CANDIDATE: 50} not in run.weights, run.weights
        assert Phase(run.record.phase).is_final


async def test_safeship_itself_keeps_its_mechanisms() -> None:
    """The control for the test above: the same bad blue-green release under safeship's policy is
    checked side by side, against the record taken before the deployment."""
    run = await deploy("safeship", DeploymentStrategy.BLUE_GREEN, {"error_rate": 0.04})
    assert "history" in run.kinds and "confirming" in run.kinds, run.kinds
    assert {BASELINE: 50, CANDIDATE: 50} in run.weights


async def test_the_executors_refuse_a_split_for_a_peer_whatever_the_stored_plan_says() -> None:
    """A plan stored with safeship's `confirm` (planned for safeship) and run with a peer's
    judge: the failure is not second-guessed and no record is taken."""
    sim = await build(scenario({"error_rate": 0.2}), policy_for=lambda _n: SafeshipPolicy())
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.BLUE_GREEN),
                               policy="safeship")
    assert any("confirm" in step for step in record.plan)
    peer = FlaggerPolicy()
    sim.engine.policy_for = sim.engine.steps.policy_for = lambda _n: peer
    sim.world.start_deployment(record.created_at)
    run = await drive(sim, record.id)
    assert run.record.phase == Phase.ROLLED_BACK.value, run.record.reason
    assert not SAFESHIP_ONLY & set(run.kinds), run.kinds
    assert {BASELINE: 50, CANDIDATE: 50} not in run.weights


# ---------------------------------------------------------------- Flagger's blue/green


async def test_flagger_blue_green_analyses_the_green_pods_on_load_tester_traffic_then_switches_at_once() -> None:
    run = await deploy("flagger", DeploymentStrategy.BLUE_GREEN, {})
    assert run.record.phase == Phase.SUCCEEDED.value, run.record.reason
    # users: all on the old colour, then all at once on the new one
    candidate_share = [w.get(CANDIDATE, 0) for w in run.weights]
    assert set(candidate_share) == {0, 100} and candidate_share == sorted(candidate_share)
    switch = run.switch()
    # the load tester: 20 requests/s while the analysis runs, stopped before the switch
    load = [(i, e) for i, e in enumerate(run.events) if e.kind == "test_traffic"]
    assert [(e.data["version"], e.data["rps"]) for _, e in load] == [(CANDIDATE, 20.0), (CANDIDATE, 0.0)]
    assert all(i < switch for i, _ in load)
    before, after = run.looks(before=switch), run.looks(after=switch)
    # ten iterations, each one check of the load tester's requests to a version users do not reach
    assert len(before) == 10
    assert all(e.data["candidate_weight"] == 0 and e.data["candidate"]["requests"] > 0 for e in before)
    assert before[-1].data["evidence"]["iterations"] == 10
    # after the switch nothing is analysed (promotion ends Flagger's analysis)
    assert after and all(e.data["evidence"] == {"promoted": True} for e in after)
    users = await run.sim.router.user_counters(run.sim.route)
    everyone = await run.sim.router.counters(run.sim.route)
    assert everyone[CANDIDATE].requests > users[CANDIDATE].requests > 0


async def test_flagger_blue_green_rolls_back_before_any_user_sees_a_bad_release() -> None:
    run = await deploy("flagger", DeploymentStrategy.BLUE_GREEN, GROSS)
    assert run.record.phase == Phase.ROLLED_BACK.value
    assert all(w.get(CANDIDATE, 0) == 0 for w in run.weights)
    assert "failed checks threshold reached (2 of 2)" in (run.record.reason or "")
    assert len(run.looks()) == 2  # the documented threshold: 2 failed checks
    users = await run.sim.router.user_counters(run.sim.route)
    assert users.get(CANDIDATE) is None or users[CANDIDATE].requests == 0
    # the load tester stopped with the rollback: the candidate's count no longer grows
    before = (await run.sim.router.counters(run.sim.route))[CANDIDATE].requests
    run.sim.clock.advance(300)
    assert (await run.sim.router.counters(run.sim.route))[CANDIDATE].requests == before > 0


async def test_flagger_blue_green_without_a_router_that_sends_test_traffic_says_so() -> None:
    """Without load-tester traffic the green pods get no requests: Flagger finds no values, and
    two such checks roll the release back, as Flagger itself would."""
    sim = await build(scenario({}), policy_for=get_policy)
    sim.router.set_test_traffic = None  # type: ignore[assignment,method-assign]
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.BLUE_GREEN),
                               policy="flagger")
    sim.world.start_deployment(record.created_at)
    run = await drive(sim, record.id)
    unsupported = run.of("test_traffic_unsupported")
    assert len(unsupported) == 1 and "test traffic is only simulated" in unsupported[0].message
    assert run.record.phase == Phase.ROLLED_BACK.value
    assert "no values found" in (run.record.reason or "")


# ---------------------------------------------------------------- Argo's blue-green


async def test_argo_blue_green_runs_pre_and_post_promotion_analyses_of_count_measurements() -> None:
    run = await deploy("argo", DeploymentStrategy.BLUE_GREEN, {})
    assert run.record.phase == Phase.SUCCEEDED.value, run.record.reason
    looks = [e for e in run.looks() if "run" in e.data["evidence"]]
    pre = [e for e in looks if e.data["evidence"]["run"] == "run-0"]
    post = [e for e in looks if e.data["evidence"]["run"] == "run-1"]
    assert len(pre) == 5 and len(post) == 5  # count: 5 each, interval 60 s
    assert all(e.data["candidate_weight"] == 0 and e.data["candidate"]["requests"] > 0 for e in pre)
    assert all(e.data["candidate_weight"] == 100 for e in post)
    switch = run.switch()
    assert pre == run.looks(before=switch) and post == run.looks(after=switch)[:5]
    promoted = next(i for i, e in enumerate(run.events) if e.kind == "promoted")
    assert post == run.looks(after=switch, before=promoted)  # successful once the post run is


async def test_argo_blue_green_switches_back_a_release_that_fails_under_user_load() -> None:
    """A regression that shows only with production load (20% errors once the release takes at
    least half the users) passes the preview's run and fails the post-promotion run: Argo aborts
    and switches traffic back."""
    run = await deploy("argo", DeploymentStrategy.BLUE_GREEN, {"error_rate": 0.2, "min_weight_percent": 50})
    assert run.record.phase == Phase.ROLLED_BACK.value, run.record.reason
    assert run.switch() < len(run.events)
    assert run.weights[-1] == {BASELINE: 100}  # switched back
    evidence = run.record.evidence or {}
    assert evidence.get("trigger") == "success-rate" and evidence.get("failed") == 4  # failed > failureLimit 3
    post = [e for e in run.looks() if e.data["evidence"].get("run") == "run-1"]
    assert len(post) == 4  # within the run's count of 5
    assert not run.of("promoted")


async def test_argo_blue_green_aborts_a_clearly_bad_release_on_the_preview() -> None:
    run = await deploy("argo", DeploymentStrategy.BLUE_GREEN, GROSS)
    assert run.record.phase == Phase.ROLLED_BACK.value
    assert all(w.get(CANDIDATE, 0) == 0 for w in run.weights)


async def test_argo_canary_measures_at_the_documented_5_minute_interval() -> None:
    run = await deploy("argo", DeploymentStrategy.CANARY, {})
    assert run.record.phase == Phase.SUCCEEDED.value, run.record.reason
    analyses = [s for s in run.record.plan if s["kind"] == "analyze"]
    assert analyses and all(s["interval"] == 300.0 and s["duration"] == 300.0 for s in analyses)
    canary = [e for e in run.looks() if e.data["evidence"].get("run") == "background"]
    assert len(canary) == len(analyses)  # one measurement per weight
    gaps = {round(b.at - a.at) for a, b in itertools.pairwise(canary)}
    assert min(gaps) >= 300


# ---------------------------------------------------------------- Kayenta before a switch


async def test_kayenta_blue_green_runs_a_canary_stage_before_the_red_black_switch() -> None:
    run = await deploy("kayenta", DeploymentStrategy.BLUE_GREEN, {})
    assert run.record.phase == Phase.SUCCEEDED.value, run.record.reason
    assert run.weights[1] == {BASELINE: 95, CANDIDATE: 5}  # after the initial {baseline: 100}
    switch = run.switch()
    judged = [e for e in run.looks() if "score" in e.data["evidence"]]
    assert len(judged) == 3 and judged == [e for e in run.looks(before=switch) if "score" in e.data["evidence"]]
    assert not [e for e in run.looks(after=switch) if e.data["evidence"]]


async def test_kayenta_blue_green_fails_a_worse_release_in_the_canary_stage() -> None:
    run = await deploy("kayenta", DeploymentStrategy.BLUE_GREEN, {"error_rate": 0.032})
    assert run.record.phase == Phase.ROLLED_BACK.value, run.record.reason
    assert max(w.get(CANDIDATE, 0) for w in run.weights) == 5


# ---------------------------------------------------------------- the plans


@pytest.mark.parametrize("policy", ["flagger", "flagger-tuned", "argo", "argo-tuned"])
async def test_blue_green_plans_send_test_traffic_only_around_the_analysis_before_the_switch(policy: str) -> None:
    sim = await build(scenario({}), policy_for=get_policy)
    record = sim.engine.submit(DeploymentRequest(service_name=SERVICE, version=CANDIDATE, environment=ENVIRONMENT,
                                                 deployment_strategy=DeploymentStrategy.BLUE_GREEN), policy=policy)
    kinds = [s["kind"] for s in record.plan]
    start, stop = kinds.index("test_traffic"), len(kinds) - 1 - kinds[::-1].index("test_traffic")
    assert record.plan[start]["rps"] == 20.0 and record.plan[stop]["rps"] == 0.0
    assert kinds[start + 1] == "analyze" and stop == start + 2
    switch = next(i for i, s in enumerate(record.plan) if s["kind"] == "weights" and s["weights"] == {CANDIDATE: 100})
    assert stop < switch
    after = [s for s in record.plan[switch:kinds.index("promote")] if s["kind"] == "analyze"]
    assert len(after) == (1 if policy.startswith("argo") else 0)  # Argo's post-promotion run only
