"""What each dashboard page shows, as plain data built from the store, the config and the engine.

The templates only lay this out; nothing here renders HTML. Every function reads; none changes
the store. The deployment page's chart is drawn from the deployment's events:

- `look` events (one per analysis look): the candidate's weight, and each version's error rate
  and p99 in that look;
- `weights` events: the weight moves, and each is a step boundary on the chart;
- `promoted`, `trigger` and `phase` events (`rolling_back`, `rolled_back`, `failed`,
  `cancelled`, `succeeded`): the markers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from safeship.api.controller import Controller
from safeship.config.models import Environment, SafeshipConfig
from safeship.engine.gates import free_capacity
from safeship.engine.phases import Phase
from safeship.engine.status import DeploymentStatus
from safeship.environments.freeze import active_window, describe, parse_window
from safeship.store import DeploymentRecord, EventRecord, RollbackRecord

EVENTS_SHOWN = 400  # newest first; the API and --status have them all
OUTCOMES = ("succeeded", "rolled_back", "failed", "cancelled", "active")
MARKER_PHASES = {
    Phase.ROLLING_BACK.value: ("rollback", "rollback started"),
    Phase.ROLLED_BACK.value: ("rollback", "rolled back"),
    Phase.FAILED.value: ("failed", "failed"),
    Phase.CANCELLED.value: ("cancelled", "cancelled"),
    Phase.SUCCEEDED.value: ("succeeded", "succeeded"),
    Phase.MONITORING.value: ("phase", "monitoring"),
}


def when(at: float | None) -> str:
    """A UTC time people read; '' for none."""
    if at is None or not math.isfinite(at):
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def candidate_weight(record: DeploymentRecord) -> int | None:
    weights = record.status.get("weights")  # the status's weights (DeploymentStatus.weights), read alone
    if not weights:
        return None
    return int(weights.get(record.version, 0))


def step_label(step: Mapping[str, Any]) -> str:
    """One plan step in words: its kind and what it does."""
    kind = str(step.get("kind", "?"))
    if kind == "gate":
        return f"gate {step.get('type', '?')} {step.get('gate', '?')!r}"
    if kind == "weights":
        split = step.get("weights") or {}
        return "weights " + ", ".join(f"{v} {w}%" for v, w in split.items())
    if kind == "scale":
        return f"scale {step.get('version', '?')} to {step.get('replicas', '?')}"
    if kind in ("analyze", "monitor", "hold", "pause"):
        duration = step.get("duration")
        return f"{kind} {float(duration):g}s" if isinstance(duration, int | float) else kind
    if kind == "wait_ready":
        return f"wait until {step.get('version', '?')} is ready"
    return kind


@dataclass(frozen=True)
class Badge:
    label: str
    tone: str  # ok, busy, warn, bad, idle


def health(current: str | None, active: DeploymentRecord | None, last: DeploymentRecord | None) -> Badge:
    """How a service stands in one environment, from the state of its deployments."""
    if active is not None:
        if active.phase == Phase.ROLLING_BACK.value:
            return Badge("rolling back", "bad")
        if active.phase == Phase.AWAITING_APPROVAL.value:
            return Badge("awaiting approval", "warn")
        return Badge("deploying", "busy")
    if current is None:
        return Badge("not serving", "idle")
    if last is not None and last.phase in (Phase.ROLLED_BACK.value, Phase.FAILED.value):
        return Badge(f"healthy (last release {last.phase.replace('_', ' ')})", "warn")
    return Badge("healthy", "ok")


# ---------------------------------------------------------------- overview


def overview(controller: Controller) -> dict[str, Any]:
    """Each environment's services: the stable version, the newest deployment and the active one.

    A few queries per environment, however many services it has: the current versions, the newest
    deployment of each service, and the ids of the active deployments; a service whose active
    deployment is not its newest one (an older deployment still rolling back, say) is read alone."""
    store = controller.store
    environments = []
    active_ids: dict[tuple[str, str], str] = {}
    for deployment_id, service, environment_name in store.active_deployment_keys():
        active_ids[(service, environment_name)] = deployment_id  # oldest first: the newest active one wins
    for environment in controller.config.environment_management.environments:
        rows = []
        serving = store.current_versions(environment.name)
        newest = store.latest_deployments(environment.name, light=True)  # the status's weights alone
        for service in controller.config.services:
            current = serving.get(service)
            last = newest.get(service)
            active = last if last is not None and Phase(last.phase).is_active else None
            if active is None and (service, environment.name) in active_ids:
                active = store.active_deployment(service, environment.name)
            plan_step = None
            if active is not None and 0 <= active.step_index < len(active.plan):
                plan_step = step_label(active.plan[active.step_index])
            rows.append({
                "service": service,
                "stable": current,
                "active": active,
                "active_step": plan_step,
                "active_weight": candidate_weight(active) if active is not None else None,
                "last": last,
                "badge": health(current, active, last),
            })
        environments.append({"environment": environment, "rows": rows})
    return {"environments": environments}


# ---------------------------------------------------------------- the deployment page


@dataclass
class Timeline:
    """The chart's columns (uPlot's aligned arrays: one x, then one array per series; None is a
    gap) and its markers."""

    candidate: str
    baseline: str | None
    x: list[float] = field(default_factory=list)
    weight: list[float | None] = field(default_factory=list)
    error_candidate: list[float | None] = field(default_factory=list)
    error_baseline: list[float | None] = field(default_factory=list)
    p99_candidate: list[float | None] = field(default_factory=list)
    p99_baseline: list[float | None] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)

    def add(self, at: float, weight: float | None, look: Mapping[str, Any] | None = None) -> None:
        def side(name: str, key: str, scale: float) -> float | None:
            part = look.get(name) if look is not None else None
            value = part.get(key) if isinstance(part, Mapping) else None
            return round(float(value) * scale, 4) if isinstance(value, int | float) else None

        self.x.append(at)
        self.weight.append(weight)
        self.error_candidate.append(side("candidate", "error_rate", 100.0))
        self.error_baseline.append(side("baseline", "error_rate", 100.0))
        self.p99_candidate.append(side("candidate", "p99_ms", 1.0))
        self.p99_baseline.append(side("baseline", "p99_ms", 1.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "columns": [self.x, self.weight, self.error_candidate, self.error_baseline,
                        self.p99_candidate, self.p99_baseline],
            "markers": self.markers,
        }


def timeline(record: DeploymentRecord, events: Iterable[EventRecord]) -> Timeline:
    chart = Timeline(candidate=record.version, baseline=record.from_version)
    for event in events:
        data = event.data
        if event.kind == "look":
            weight = data.get("candidate_weight")
            chart.add(event.at, float(weight) if isinstance(weight, int | float) else None, data)
        elif event.kind == "weights":
            split = data.get("weights")
            weight = split.get(record.version, 0) if isinstance(split, Mapping) else None
            chart.add(event.at, float(weight) if isinstance(weight, int | float) else None)
            chart.markers.append({"at": event.at, "kind": "step", "label": f"{weight}%"})
        elif event.kind == "promoted":
            chart.markers.append({"at": event.at, "kind": "promoted", "label": "promoted"})
        elif event.kind == "trigger":
            chart.markers.append({"at": event.at, "kind": "trigger", "label": event.message[:80]})
        elif event.kind == "phase":
            phase = str(data.get("phase", ""))
            if phase in MARKER_PHASES:
                kind, label = MARKER_PHASES[phase]
                chart.markers.append({"at": event.at, "kind": kind, "label": label})
    return chart


@dataclass(frozen=True)
class EvidenceRow:
    test: str
    meaning: str
    e_value: float
    bound: float | None
    crossed: bool


_TEST_WORDS = {
    "errors": "failed requests, candidate against baseline",
    "latency_p95": "requests slower than the baseline's p95",
    "latency_p99": "requests slower than the baseline's p99",
    "single_errors": "failed requests against the replaced version's record",
    "single_p95": "slow requests (p95) against the replaced version's record",
    "single_p99": "slow requests (p99) against the replaced version's record",
}


def test_words(name: str) -> str:
    if name in _TEST_WORDS:
        return _TEST_WORDS[name]
    if name.startswith("trigger:"):
        parts = name.split(":")
        return f"the seed's {parts[1].replace('_', ' ')} trigger ({', '.join(parts[2:])})"
    if name.startswith("metric:"):
        return f"custom gauge {name.removeprefix('metric:')} against the baseline"
    return name


def evidence_rows(evidence: Mapping[str, Any] | None) -> list[EvidenceRow]:
    """Each test's e-value against its bound (crossing the bound rejects "no worse than the
    baseline" at the test's share of alpha). Bounds come from the evidence (`bounds`, which
    safeship's policy records for every test, or `bound` for the test that failed); a policy that
    records none shows its e-values without a bound."""
    if not evidence:
        return []
    values = evidence.get("e_values")
    if not isinstance(values, Mapping):
        return []
    given = evidence.get("bounds")
    bounds: dict[str, float] = {}
    if isinstance(given, Mapping):
        bounds.update({str(k): float(v) for k, v in given.items() if isinstance(v, int | float)})
    failed_test, failed_bound = evidence.get("test"), evidence.get("bound")
    if isinstance(failed_test, str) and isinstance(failed_bound, int | float):
        bounds[failed_test] = float(failed_bound)
    rows = []
    for name, raw in values.items():
        e = float(raw) if isinstance(raw, int | float) else math.nan
        bound = bounds.get(str(name))
        rows.append(EvidenceRow(str(name), test_words(str(name)), e, bound,
                                bound is not None and math.isfinite(e) and e >= bound))
    return rows


def evidence_words(evidence: Mapping[str, Any] | None, rows: Sequence[EvidenceRow]) -> list[str]:
    """The evidence in a few sentences: which test decided (or which is closest to deciding),
    with the counts it saw."""
    if not evidence:
        return []
    said: list[str] = []
    test, e_value, bound = evidence.get("test"), evidence.get("e_value"), evidence.get("bound")
    if isinstance(test, str) and isinstance(e_value, int | float) and isinstance(bound, int | float) and bound > 0:
        words = test_words(test)
        said.append(f"{words[:1].upper() + words[1:]}: its e-value {_number(float(e_value))} reached the bound "
                    f"{_number(float(bound))}, so a release no worse than its baseline shows evidence this strong "
                    f"with a chance of at most {100.0 / float(bound):.2g}%.")
    else:
        judged = [r for r in rows if r.bound is not None and math.isfinite(r.e_value)]
        crossed = [r for r in judged if r.crossed]
        if judged and not crossed:
            closest = max(judged, key=lambda r: math.log(max(r.e_value, 1e-300)) / math.log(r.bound or 2.0))
            said.append(f"No test has reached its bound; the closest is {closest.meaning} "
                        f"(e-value {_number(closest.e_value)} of {_number(closest.bound)}).")
    for side in ("candidate", "baseline"):
        counts = evidence.get(side)
        if isinstance(counts, Mapping) and isinstance(counts.get("requests"), int | float):
            events, requests = counts.get("events", 0), counts["requests"]
            rate = counts.get("rate")
            share = f" ({100.0 * float(rate):.2g}%)" if isinstance(rate, int | float) else ""
            said.append(f"The {side}: {_number(events)} of {_number(requests)} requests in the window{share}.")
    if not any(isinstance(evidence.get(side), Mapping) for side in ("candidate", "baseline")):
        requests, failed = evidence.get("candidate_requests"), evidence.get("candidate_failed")
        base_requests, base_failed = evidence.get("baseline_requests"), evidence.get("baseline_failed")
        if isinstance(requests, int | float) and isinstance(failed, int | float):
            line = f"So far the candidate failed {_number(failed)} of {_number(requests)} requests"
            if isinstance(base_requests, int | float) and isinstance(base_failed, int | float):
                line += f", the baseline {_number(base_failed)} of {_number(base_requests)}"
            said.append(line + ".")
    return said


def counts_rows(evidence: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The numbers of the evidence other than e-values, as (name, value) pairs."""
    if not evidence:
        return []
    found = []
    for key, value in evidence.items():
        if key in ("e_values", "bounds"):
            continue
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {_number(v)}" for k, v in value.items())
        found.append((str(key), _number(value)))
    return found


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def last_look(events: Sequence[EventRecord]) -> EventRecord | None:
    for event in reversed(events):
        if event.kind == "look":
            return event
    return None


def plan_rows(record: DeploymentRecord) -> list[dict[str, Any]]:
    final = Phase(record.phase).is_final
    rows = []
    for index, step in enumerate(record.plan):
        if record.phase == Phase.SUCCEEDED.value or index < record.step_index:
            state = "done"
        elif index == record.step_index and not final:
            state = "current"
        elif index == record.step_index:
            state = "stopped"
        else:
            state = "pending"
        rows.append({"index": index + 1, "label": step_label(step), "kind": step.get("kind"), "state": state})
    return rows


def can_promote(record: DeploymentRecord, events: Sequence[EventRecord] = ()) -> bool:
    """Promote now would be taken: the deployment runs, was neither promoted nor told to promote
    now, and a promotion is still ahead in its plan (`Engine.promote` decides; this only chooses
    whether to offer it)."""
    phase = Phase(record.phase)
    if phase not in (Phase.PENDING, Phase.PREPARING, Phase.PROGRESSING, Phase.MONITORING):
        return False
    if record.decision == "promote" or any(e.kind == "promote_now" for e in events):
        return False
    start = record.step_index if phase in (Phase.PROGRESSING, Phase.MONITORING) else 0
    return any(step.get("kind") == "promote" for step in record.plan[start:])


def actions(record: DeploymentRecord, events: Sequence[EventRecord] = ()) -> dict[str, bool]:
    """Which buttons the page offers; the engine still decides (a refused action is shown).
    Promote approves a deployment that awaits approval, and otherwise promotes it now."""
    phase = Phase(record.phase)
    awaiting = phase is Phase.AWAITING_APPROVAL
    return {
        "approve": awaiting,
        "promote": awaiting or can_promote(record, events),
        "abort": phase.is_active and phase is not Phase.ROLLING_BACK,
        "rollback": phase in (Phase.PROGRESSING, Phase.MONITORING, Phase.SUCCEEDED),
    }


def deployment_page(controller: Controller, deployment_id: str) -> dict[str, Any]:
    store = controller.store
    record = store.get_deployment(deployment_id)
    events = store.events(deployment_id)
    evidence = record.evidence
    look = last_look(events)
    if not evidence and look is not None:
        look_evidence = look.data.get("evidence")
        evidence = dict(look_evidence) if isinstance(look_evidence, Mapping) else None
    rows = evidence_rows(evidence)
    return {
        "record": record,
        "weights": dict(DeploymentStatus.from_json(record.status).weights or {}),
        "candidate_weight": candidate_weight(record),
        "plan": plan_rows(record),
        "timeline": timeline(record, events).to_json(),
        "evidence_source": "decision" if record.evidence else ("last look" if evidence else ""),
        "evidence": rows,
        "evidence_words": evidence_words(evidence, rows),
        "evidence_counts": counts_rows(evidence),
        "last_look": look,
        "events": list(reversed(events))[:EVENTS_SHOWN],
        "events_hidden": max(0, len(events) - EVENTS_SHOWN),
        "last_event_id": max((e.id or 0 for e in events), default=0),
        "rollbacks": store.rollbacks(deployment_id=deployment_id),
        "actions": actions(record, events),
    }


# ---------------------------------------------------------------- history


def outcome_of(record: DeploymentRecord) -> str:
    return "active" if Phase(record.phase).is_active else record.phase


def history(
    controller: Controller, *, service: str | None, environment: str | None, outcome: str | None, limit: int = 200
) -> dict[str, Any]:
    store = controller.store
    found = store.list_deployments(service=service, environment=environment, limit=limit)
    if outcome:
        found = [d for d in found if outcome_of(d) == outcome]
    rows: list[RollbackRecord] = [
        r for r in store.rollbacks(service=service) if environment is None or r.environment == environment
    ]
    services: dict[str, list[DeploymentRecord]] = {}
    for record in found:
        services.setdefault(record.service, []).append(record)
    rollbacks: dict[str, list[RollbackRecord]] = {}
    for row in rows:
        rollbacks.setdefault(row.service, []).append(row)
    names = [s for s in controller.config.services if s in services or s in rollbacks]
    return {
        "services": [{"service": s, "deployments": services.get(s, []), "rollbacks": rollbacks.get(s, [])}
                     for s in names],
        "filters": {"service": service or "", "environment": environment or "", "outcome": outcome or ""},
        "choices": {
            "service": list(controller.config.services),
            "environment": [e.name for e in controller.config.environment_management.environments],
            "outcome": list(OUTCOMES),
        },
    }


# ---------------------------------------------------------------- environments


def freeze_windows(environment: Environment, now: datetime) -> list[dict[str, Any]]:
    where = f"environments.{environment.name}.freeze_windows"
    windows = [parse_window(w.model_dump(), "safeship.yaml", where) for w in environment.freeze_windows]
    in_force = active_window(windows, now)
    return [{"name": w.name, "described": describe(w), "active": w is in_force} for w in windows]


def quota_usage(config: SafeshipConfig, controller: Controller, environment: Environment) -> list[dict[str, Any]]:
    """What the serving services request of the environment's quota (the admission gate's sums)."""
    free = free_capacity(config, controller.store, "", environment)
    quota = environment.resource_quotas
    bars = []
    for name, total, left, unit in (("cpu", quota.cpu, free.cpu_free, " cores"),
                                    ("memory", quota.memory, free.memory_free_mb, "Mi")):
        used = max(0.0, float(total) - float(left))
        share = 0.0 if total <= 0 else min(100.0, 100.0 * used / float(total))
        bars.append({"resource": name, "used": round(used, 3), "total": float(total), "unit": unit,
                     "percent": round(share, 1)})
    return bars


def environments_page(controller: Controller, validations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per environment: its last validate results (the newer of the run from this dashboard and
    a `last_validate` record in the store's environment state, `{at, ok, checks}`, should
    validate keep one there), its prepared state, quota bars, freeze windows."""
    now = datetime.now(UTC)
    found = []
    for environment in controller.config.environment_management.environments:
        state = controller.store.environment_state(environment.name) or {}
        stored = state.get("last_validate")
        runs = [r for r in (validations.get(environment.name), stored) if isinstance(r, Mapping)]
        validate = max(runs, key=lambda r: float(r.get("at") or 0.0), default=None)  # the newer one
        found.append({
            "environment": environment,
            "validate": validate,
            "prepared": {k: v for k, v in state.items() if k != "last_validate"},
            "quota": quota_usage(controller.config, controller, environment),
            "freeze": freeze_windows(environment, now),
            "runs_here": environment.name in controller.environment_names,
        })
    return {"environments": found, "now": when(time.time())}
