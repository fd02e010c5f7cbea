"""Crash tests: a real controller SIGKILLed in the middle of real deployments, started again, and
the invariants a user can check afterwards.

A `Chain` is one controller setup (the example service, 2 replicas, the local platform, the
builtin router or HAProxy, a `command` notification sink that appends every body it gets to a
file) with open-loop load on the route port for its whole life. It deploys a baseline, then one
deployment per `Fault`: the controller that runs it is killed (SIGKILL) either at a named boundary
(the engine's `SAFESHIP_FAULT_STOP` hook stops the process there, then it is killed) or after a
seeded random delay; the next controller is started on the same state and drives the deployment
to its end. Each deployment ships the next of v2.0.0, v2.1.0, ... (all alike and healthy).

After each deployment `Chain.check` lists every broken invariant:

- it ended succeeded or rolled_back (not failed, not stuck);
- the ledger holds exactly the replicas of the version that serves, each PID alive; no process
  with the test's marker is alive outside the ledger (orphaned) and none is in it twice (doubled);
- the store: one deployments row, each phase entered once (its `phase` event), `promoted` at most
  once, one rollbacks row when rolled back (none otherwise), one unretired stable version (the
  serving one), at most one stable row per version for the deployment;
- notifications: every one the stored events make reached the sink, and every delivery of one
  idempotency key carries the same event; no event kind that happens once was sent under two keys;
- traffic: no request failed (HTTP 5xx or no answer) while the deployment ran, the kill included,
  and the last requests were all answered by the serving version (the router never pointed at a
  version that was not running).

Every process is stopped by PID on the way out (controllers, services by the ledger and by marker,
the router daemon, HAProxy), also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import livekit
from livekit import (
    CONFIG,
    ENV,
    FINAL,
    MARK,
    REPO,
    SERVICE,
    Load,
    Setup,
    _kill_services,
    _marked,
    alive,
    deploy,
    wait_final,
    wait_for,
)

from safeship.api.client import ControllerClient
from safeship.engine.faultpoint import ENV as HOOK
from safeship.engine.notify import notification_for
from safeship.errors import ControllerUnreachable
from safeship.loadgen import failed
from safeship.routing.haproxy import stop_haproxy
from safeship.store import Store

ROUTE = f"{ENV}/{SERVICE}"
# Each deployment ships a new release that behaves exactly like the one before (the example
# service's v1.2.0): a crash test wants the boundaries, and no analysis verdict between two
# releases that differ (v1.2.0's queue_depth gauge is worse than v1.4.0's, so the analysis rightly
# rolls a rolling v1.4.0 -> v1.2.0 back). The example's own releases stay (v1.3.0 is the bad one).
RELEASES = 100
VERSIONS = tuple(f"v2.{n}.0" for n in range(RELEASES))
STRATEGIES = ("canary", "blue_green", "rolling", "recreate")
ROUTERS = ("builtin", "haproxy")
# Event kinds that happen at most once in a deployment (their notification must not be doubled).
ONCE = {"started", "promoted", "succeeded", "rolled_back", "failed", "cancelled", "rollback_started"}
RECEIVER = ("import json, sys; body = json.loads(sys.stdin.read()); "
            "open(sys.argv[1], 'a').write(json.dumps(body, sort_keys=True) + '\\n')")
LOAD_RATE = 40.0
LOAD_LIMIT_S = 3 * 3600  # the generator's own bound: longer than the full matrix takes


@dataclass(frozen=True)
class Fault:
    """Where to kill: `boundary` (`before|after:<phase>[:<step>]`, see engine/faultpoint.py), or
    `delay` seconds after the deployment was asked for."""

    strategy: str
    boundary: str | None = None
    delay: float | None = None

    @property
    def name(self) -> str:
        return self.boundary if self.boundary is not None else f"random +{self.delay:.2f}s"


@dataclass
class Outcome:
    fault: Fault
    router: str
    deployment: str = ""
    phase: str = ""
    killed: str = ""  # "at the boundary" | "after the delay" | why it was not killed
    requests: int = 0
    failed: int = 0
    violations: list[str] = field(default_factory=list)

    def row(self) -> str:
        verdict = "ok" if not self.violations else "; ".join(self.violations)
        return (f"| {self.fault.name} | {self.fault.strategy} | {self.router} | {self.killed} | {self.phase} | "
                f"{self.failed}/{self.requests} | {verdict} |")


TABLE_HEAD = ("| fault | strategy | router | kill | outcome | failed/requests | invariants |\n"
              "|---|---|---|---|---|---|---|")


def edit_config(text: str, router: str, sink: Path, releases: Path) -> str:
    if router == "haproxy":
        text = text.replace("platform: local}", "platform: local, router: haproxy}")
        assert "router: haproxy" in text
    # Shorter steps than the live tests' (a crash test needs the boundaries, not the evidence of
    # long windows; both releases are healthy), so that many kills fit in a few minutes.
    for old, new in (("step_duration: 3s, min_step_duration: 1s", "step_duration: 1s, min_step_duration: 0.5s"),
                     ("scale_down_delay: 2s, post_switch_analysis: 3s",
                      "scale_down_delay: 1s, post_switch_analysis: 1s"),
                     ("monitoring: {duration: 2s", "monitoring: {duration: 1s"),
                     ("min_instance_seconds: 5s}", "min_instance_seconds: 2s}"),
                     ("grace_period: 5s", "grace_period: 2s")):
        assert old in text, old
        text = text.replace(old, new)
    text = text.replace('--version, "{version}"]', f'--version, "{{version}}", --releases, "{releases}"]')
    text = text.replace("versions: [v1.2.0, v1.3.0, v1.4.0, v1.5.0, v1.6.0]",
                        f"versions: [v1.2.0, v1.3.0, v1.4.0, {', '.join(VERSIONS)}]")
    assert str(releases) in text and VERSIONS[-1] in text
    # Liveness may take 3 s on a shared 2-core host.
    text = text.replace("interval: 0.5s, timeout: 1s, failure_threshold: 3",
                        "interval: 0.5s, timeout: 3s, failure_threshold: 3")
    command = json.dumps([sys.executable, "-c", RECEIVER, str(sink)])
    return text + ("notifications:\n"
                   f"  - {{name: receiver, type: command, command: {command}, timeout: 10s, retries: 20, "
                   "backoff: 0.2s}\n")


class Controller(livekit.Controller):
    """The live tests' controller process, without the fault hook unless `env` sets it."""

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != HOOK}
        env.update(PYTHONPATH=str(REPO), **self.env)
        return env

    def stopped_itself(self) -> bool:
        """True once the process is stopped (SIGSTOP, state T) — the hook fired."""
        assert self.process is not None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rfind(")") + 2:].startswith(("T", "t"))


class Chain:
    """One controller setup with load; deployments killed one after another (see the module text)."""

    def __init__(self, tmp_path: Path, router: str, edit: Callable[[str], str] = str,
                 rate: float = LOAD_RATE) -> None:
        self.router = router
        self.rate = rate
        self.sink = tmp_path / "notifications.jsonl"
        state_dir = tmp_path / "state"
        mark = uuid.uuid4().hex
        config = tmp_path / "safeship.yaml"
        releases = tmp_path / "releases.yaml"
        example = (REPO / "examples" / "user_service" / "releases.yaml").read_text()
        releases.write_text(example.rstrip("\n") + "\n" + "".join(f"  {v}: {{}}\n" for v in VERSIONS))
        config.write_text(edit(edit_config(CONFIG.format(state_dir=state_dir, env=ENV, service=SERVICE, mark=MARK,
                                                         mark_value=mark), router, self.sink, releases)))
        self.setup = Setup(config, state_dir, mark)
        self.controllers: list[Controller] = []
        self.client = ControllerClient(state_dir)
        self.load: Load | None = None
        self.current: str | None = None
        self.taken = 0

    # ------------------------------------------------------------ life

    def start(self, env: dict[str, str] | None = None) -> Controller:
        running = Controller(self.setup, env)
        self.controllers.append(running)
        running.start()
        return running

    def close(self) -> None:
        if self.load is not None:
            with contextlib.suppress(Exception):
                self.load.__exit__(None, None, None)
        for running in self.controllers:
            with contextlib.suppress(Exception):
                running.stop()
        _kill_services(self.setup)
        with contextlib.suppress(Exception):
            stop_haproxy(self.setup.state_dir)

    def baseline(self, first: Fault | None = None) -> None:
        """The first controller (carrying the hook for `first`), the first release (recreate),
        then load on the route port."""
        self.start(hook_for(first) if first is None or first.strategy != "recreate" else {})
        final, _ = wait_final(self.client, deploy(self.client, self._take_version(),
                                                  deployment_strategy="recreate")["id"], timeout=120)
        assert final["phase"] == "succeeded", final["reason"]
        self.current = final["version"]
        self.load = Load(self.client.routes()[ROUTE], rate=self.rate, max_s=LOAD_LIMIT_S)
        self.load.__enter__()
        time.sleep(1.0)

    @property
    def next_version(self) -> str:
        return VERSIONS[self.taken]

    def _take_version(self) -> str:
        version = VERSIONS[self.taken]
        self.taken += 1
        return version

    # ------------------------------------------------------------ one fault

    def run(self, fault: Fault, then: Fault | None = None) -> Outcome:
        """Deploy the other healthy version with `fault.strategy`, kill the controller as `fault`
        says, start another (carrying the hook for `then`, the next fault), wait for the end and
        check the invariants."""
        assert self.load is not None, "baseline() first"
        outcome = Outcome(fault, self.router)
        version = self._take_version()
        running = self.controllers[-1]
        if running.env != hook_for(fault):
            running.stop()  # the controller that runs the deployment must carry the hook for it
            running = self.start(hook_for(fault))
        started = time.time()
        try:
            # The engine may tick within the request and stop at the boundary before answering.
            asked_id: str | None = deploy(ControllerClient(self.setup.state_dir, timeout=4.0), version,
                                          deployment_strategy=fault.strategy)["id"]
        except ControllerUnreachable:
            asked_id = None
        if fault.boundary is not None:
            def stopped_or_ended() -> bool:
                found = asked_id or self._newest(started)
                return running.stopped_itself() or (found is not None and self._phase(found).split()[0] in FINAL)

            try:
                wait_for(stopped_or_ended, 120, f"the controller to reach {fault.boundary}")
                outcome.killed = "at the boundary" if running.stopped_itself() else "ended before the boundary"
            except AssertionError:
                outcome.killed = "boundary not reached"
        else:
            time.sleep(max(0.0, started + float(fault.delay or 0.0) - time.time()))
            outcome.killed = "after the delay"
        running.kill9()
        asked_id = asked_id or self._newest(started)
        assert asked_id is not None, f"no deployment was recorded for {fault.name}"
        outcome.deployment = asked_id
        phase_at_kill = self._phase(asked_id)
        if outcome.killed != "boundary not reached":
            outcome.killed += f" ({phase_at_kill})"
        # The next fault's hook, unless it could stop this deployment (one of the same strategy)
        self.start(hook_for(then) if then is None or then.strategy != fault.strategy else {})
        final, _ = wait_final(self.client, asked_id, timeout=180)
        ended = time.time()
        outcome.phase = final["phase"]
        serving = version if final["phase"] == "succeeded" else self.current
        if final["phase"] in ("succeeded", "rolled_back"):
            self.current = serving
        window = self.load.window(started, ended)  # type: ignore[arg-type]
        outcome.requests, outcome.failed = window
        self.check(outcome, final, serving, started, ended)
        if fault.boundary is not None and outcome.killed == "boundary not reached":
            outcome.violations.insert(0, f"the controller never reached {fault.boundary}")
        return outcome

    def _newest(self, since: float) -> str | None:
        store = Store(f"sqlite:///{self.setup.state_dir}/state.db")
        try:
            rows = [d for d in store.list_deployments(service=SERVICE) if d.created_at >= since - 1.0]
        finally:
            store.close()
        return max(rows, key=lambda d: d.created_at).id if rows else None

    def _phase(self, deployment_id: str) -> str:
        store = Store(f"sqlite:///{self.setup.state_dir}/state.db")
        try:
            record = store.get_deployment(deployment_id)
            return f"{record.phase} step {record.step_index}"
        finally:
            store.close()

    # ------------------------------------------------------------ invariants

    def check(self, outcome: Outcome, final: dict[str, Any], serving: str | None, started: float,
              ended: float) -> None:
        bad = outcome.violations
        if final["phase"] not in ("succeeded", "rolled_back"):
            bad.append(f"ended {final['phase']}: {final.get('reason')}")
        self._check_instances(bad, serving)
        self._check_store(bad, final)
        self._check_notifications(bad, final["id"])
        assert self.load is not None
        if outcome.failed:
            bad.append(f"{outcome.failed} of {outcome.requests} requests failed")
        if outcome.requests < 10:
            bad.append(f"only {outcome.requests} requests sent: too few to judge")
        load = self.load

        def answered_after() -> list[Any]:
            return [o for o in list(load.outcomes) if o.sent_at > ended and o.status is not None]

        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(answered_after()) >= 5, 15, "requests answered after the end")
        last = answered_after()
        after_failed = failed([o for o in list(load.outcomes) if o.sent_at > ended])
        if after_failed:
            bad.append(f"{after_failed} requests failed after the end")
        if not last:
            every = list(load.outcomes)
            bad.append(f"no request answered after the end ({len(every)} answered in all, the last sent "
                       f"{ended - max((o.sent_at for o in every), default=0.0):.1f}s before the end)")
        elif {o.version for o in last} != {serving}:
            bad.append(f"after the end requests were answered by {sorted(map(str, {o.version for o in last}))}, "
                       f"not only {serving}")

    def _check_instances(self, bad: list[str], serving: str | None) -> None:
        def settled() -> bool:
            rows = self.setup.ledger()
            return sorted(str(r["version"]) for r in rows) == [serving, serving] and all(
                alive(int(r["pid"])) for r in rows if r.get("pid"))

        with contextlib.suppress(AssertionError):
            wait_for(settled, 60, "the ledger to hold the serving version's replicas")
        rows = self.setup.ledger()
        versions = sorted(str(r["version"]) for r in rows)
        if versions != [serving, serving]:
            bad.append(f"ledger holds {versions}, not 2 x {serving}")
        pids = [int(r["pid"]) for r in rows if r.get("pid")]
        dead = [p for p in pids if not alive(p)]
        if dead:
            bad.append(f"ledger PIDs not running: {dead}")
        doubled = [key for key, n in Counter((str(r["version"]), r.get("index")) for r in rows).items() if n > 1]
        if doubled:
            bad.append(f"instances doubled: {doubled}")
        orphans = sorted(p for p in _marked(self.setup.mark) if alive(p) and p not in pids)
        if orphans:
            bad.append(f"orphaned service processes: {orphans}")

    def _check_store(self, bad: list[str], final: dict[str, Any]) -> None:
        store = Store(f"sqlite:///{self.setup.state_dir}/state.db")
        try:
            rows = [d for d in store.list_deployments() if d.id == final["id"]]
            if len(rows) != 1:
                bad.append(f"{len(rows)} deployments rows")
            events = store.events(final["id"])
            phases = Counter(str((e.data or {}).get("phase")) for e in events if e.kind == "phase")
            twice = sorted(p for p, n in phases.items() if n > 1)
            if twice:
                bad.append(f"phase events doubled: {twice}")
            promoted = sum(1 for e in events if e.kind == "promoted")
            if promoted > 1:
                bad.append(f"{promoted} promoted events")
            rollbacks = store.rollbacks(deployment_id=final["id"])
            wanted = 1 if final["phase"] == "rolled_back" else 0
            if len(rollbacks) != wanted:
                bad.append(f"{len(rollbacks)} rollbacks rows for a {final['phase']} deployment")
            stable = store.stable_versions(SERVICE, ENV)
            live = [s for s in stable if s.retired_at is None]
            if len(live) != 1 or (final["phase"] == "succeeded" and live[0].version != final["version"]):
                bad.append(f"unretired stable versions {[s.version for s in live]}")
            # promoted: the candidate's row; rolled back after that: also the replaced version's again
            mine = Counter(s.version for s in stable if s.deployment_id == final["id"])
            if any(n > 1 for n in mine.values()):
                bad.append(f"stable rows doubled for the deployment: {dict(mine)}")
        finally:
            store.close()

    def expected_notifications(self, deployment_id: str) -> dict[str, str]:
        store = Store(f"sqlite:///{self.setup.state_dir}/state.db")
        try:
            record = store.get_deployment(deployment_id)
            events = store.events(deployment_id)
        finally:
            store.close()
        made = (notification_for(event, record, events[:index]) for index, event in enumerate(events))
        return {n.key: n.kind for n in made if n is not None}

    def receipts(self) -> list[dict[str, Any]]:
        try:
            text = self.sink.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _check_notifications(self, bad: list[str], deployment_id: str) -> None:
        expected = self.expected_notifications(deployment_id)

        def delivered() -> bool:
            return set(expected) <= {r["idempotency_key"] for r in self.receipts()}

        with contextlib.suppress(AssertionError):
            wait_for(delivered, 60, "every notification")
        mine = [r for r in self.receipts() if r.get("deployment_id") == deployment_id]
        keys = {r["idempotency_key"] for r in mine}
        lost = sorted(set(expected) - keys)
        if lost:
            bad.append(f"notifications lost: {[expected[k] for k in lost]}")
        unknown = sorted(keys - set(expected))
        if unknown:
            bad.append(f"notifications with keys the store does not make: {unknown}")
        by_key: dict[str, set[str]] = {}
        for receipt in mine:
            by_key.setdefault(receipt["idempotency_key"], set()).add(receipt["event"])
        if any(len(kinds) > 1 for kinds in by_key.values()):
            bad.append("one idempotency key carried different events")
        kinds = Counter(next(iter(k)) for k in by_key.values())
        doubled = sorted(k for k, n in kinds.items() if k in ONCE and n > 1)
        if doubled:
            bad.append(f"notifications doubled under different keys: {doubled}")


def hook_for(fault: Fault | None) -> dict[str, str]:
    """The controller environment that stops it at `fault`'s boundary (none for a random kill)."""
    if fault is None or fault.boundary is None:
        return {}
    return {HOOK: f"{fault.boundary}@{fault.strategy}"}


@contextlib.contextmanager
def chain(tmp_path: Path, router: str, first: Fault | None = None,
          edit: Callable[[str], str] = str, rate: float = LOAD_RATE) -> Iterator[Chain]:
    made = Chain(tmp_path, router, edit, rate)
    try:
        made.baseline(first)
        yield made
    finally:
        made.close()


# One seed per test session (both routers' tests draw from it): SAFESHIP_FAULTS_SEED, else the time.
SEED = int(os.environ.get("SAFESHIP_FAULTS_SEED") or time.time_ns() % 1_000_000)


def seeded(name: str) -> random.Random:
    """A Random from SEED, which is printed."""
    print(f"\n{name}: seed {SEED} (SAFESHIP_FAULTS_SEED={SEED} repeats it)")
    return random.Random(SEED)


# ---------------------------------------------------------------- a faulty service

FAULT_SERVICE = Path(__file__).with_name("faultservice.py")
EXAMPLE_COMMAND = "command: [python, -m, examples.user_service, "


def with_faults(tmp_path: Path, faults: dict[str, dict[str, Any]]) -> Callable[[str], str]:
    """A config edit that runs the service as tests/faults/faultservice.py with `faults` (version ->
    its faults: hang/drip a probe path, ignore SIGTERM, an error rate); other versions are the
    plain example."""
    file = tmp_path / "faults.yaml"
    file.write_text(json.dumps(faults))  # JSON is YAML

    def edit(text: str) -> str:
        assert EXAMPLE_COMMAND in text
        return text.replace(EXAMPLE_COMMAND, f'command: [python, "{FAULT_SERVICE}", --faults, "{file}", ', 1)

    return edit


def then(*edits: Callable[[str], str]) -> Callable[[str], str]:
    """The config edits one after another."""
    def edit(text: str) -> str:
        for one in edits:
            text = one(text)
        return text

    return edit


def replaced(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return edit


def events_of(setup: Setup, deployment_id: str) -> list[tuple[str, str]]:
    """(kind, message) of every stored event of the deployment, in order."""
    store = Store(f"sqlite:///{setup.state_dir}/state.db")
    try:
        return [(e.kind, str(e.message)) for e in store.events(deployment_id)]
    finally:
        store.close()
