"""Human output with rich: progress lines and status panels.

Every string printed here may carry text a user wrote (names, reasons, versions from old rows),
so the console reads no markup, escapes control characters (newlines, ANSI escapes, bidi
overrides) instead of sending them to the terminal, masks secrets, and wraps lines only on a
terminal: piped output keeps one record per line for grep.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from safeship.cli.common import clean, format_weights, when
from safeship.engine.views import step_of


class _SafeConsole(Console):
    """Prints strings as plain text: secrets masked, control characters escaped."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        from safeship.environments.secrets import redactor

        shown = [clean(redactor().redact_text(o)) if isinstance(o, str) else o for o in objects]
        if not self.is_terminal:
            kwargs.setdefault("soft_wrap", True)
        super().print(*shown, **kwargs)


_TTY = sys.stdout.isatty()
console = _SafeConsole(highlight=False, markup=False, emoji=False, width=None if _TTY else 100_000)


def styled(text: str, style: str) -> Text:
    """A fixed label in a colour; only for text safeship writes itself, never for user input."""
    return Text(text, style=style)


class ProgressPrinter:
    """Prints a progress line when the phase, step or weights change, and otherwise every
    `heartbeat` seconds, so a long step still shows its live error rate and p99."""

    def __init__(self, heartbeat: float = 5.0) -> None:
        self.heartbeat = heartbeat
        self._key: tuple[Any, ...] | None = None
        self._printed_at = 0.0

    def update(self, data: dict[str, Any], elapsed: float) -> None:
        gate = data.get("gate") or {}
        decisions = [e for e in data.get("events") or [] if e.get("kind") != "look"]
        key = (data["phase"], data["step"], str(data.get("weights")), gate.get("held"), gate.get("last_answer"),
               decisions[-1]["message"] if decisions else None)
        if key != self._key or elapsed - self._printed_at >= self.heartbeat:
            console.print(progress_line(data, elapsed))
            self._key, self._printed_at = key, elapsed


class EventStream:
    """`-v`: the controller's events for one deployment, each once, in the order it recorded them,
    as log lines on stderr (`INFO safeship.events: 2026-12-06 07:10:02 UTC deploy-... weights: ...`).
    Without -v the `safeship` logger drops them, like every other log line."""

    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        self.shown = 0
        self.log = logging.getLogger("safeship.events")

    def update(self, events: list[dict[str, Any]]) -> None:
        from safeship.redaction import redactor

        for event in events[self.shown:]:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(event.get("at") or 0.0)))
            message = redactor().redact(str(event.get("message") or ""))
            self.log.info("%s UTC %s %s: %s", at, self.deployment_id, event.get("kind"), clean(message))
        self.shown = max(self.shown, len(events))


def progress_line(data: dict[str, Any], elapsed: float) -> str:
    sample = data.get("last_sample") or {}
    parts = [f"[+{elapsed:6.1f}s] {data['phase']:<12} step {step_of(data['step'], data['steps'])}",
             format_weights(data.get("weights", {}))]
    for side in ("baseline", "candidate"):
        one = sample.get(side) or {}
        if one.get("requests"):
            rate = one.get("error_rate") or 0.0
            p99 = one.get("p99_ms")
            parts.append(f"{side} {rate:.2%} err p99 {p99:.0f}ms" if p99 is not None else f"{side} {rate:.2%} err")
    gate = data.get("gate")
    if gate and gate.get("held"):
        parts.append(f"held by {gate.get('type')} gate {gate.get('name')!r}: {gate.get('last_answer')}")
    events = data.get("events") or []
    if events:  # the last thing decided or done, in the engine's own sentence
        parts.append(f"{events[-1].get('kind')}: {events[-1].get('message')}")
    return " | ".join(parts)


def show_deployment(data: dict[str, Any]) -> None:
    from safeship.redaction import redactor

    data = redactor().redact(data)  # a table's cells do not pass through print's masking
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for label, key in [("deployment", "id"), ("service", "service"), ("environment", "environment"),
                       ("version", "version"), ("from", "from_version"), ("strategy", "strategy"),
                       ("why", "strategy_reason"), ("policy", "policy"), ("phase", "phase"),
                       ("decision", "decision"), ("reason", "reason")]:
        table.add_row(label, clean(str(data.get(key) if data.get(key) is not None else "-")))
    table.add_row("step", step_of(data["step"], data["steps"]))
    table.add_row("weights", clean(format_weights(data.get("weights", {}))))
    gate = data.get("gate")
    if gate:
        table.add_row("gate", clean(gate_line(gate)))
    table.add_row("created", when(data.get("created_at")))
    table.add_row("finished", when(data.get("finished_at")))
    console.print(table)
    events = data.get("events", [])
    # Looks (one per analysis interval) would crowd out the transitions; only the last is shown.
    looks = [e for e in events if e["kind"] == "look"]
    shown = [e for e in events if e["kind"] != "look" or e is looks[-1]]
    for event in shown[-15:]:
        console.print(f"  {when(event['at'])}  {event['kind']:<16} {event['message']}")


def gate_line(gate: dict[str, Any]) -> str:
    """The webhook gate a deployment waits on, in one line: which, since when, its last answer."""
    what = f"{gate.get('type')} gate {gate.get('name')!r}"
    answer = gate.get("last_answer")
    asked = f"{gate.get('attempts', 0)} time{'s' if gate.get('attempts') != 1 else ''}"
    if gate.get("held"):
        return f"held by {what} since {when(gate.get('since'))}; last answer {answer} (asked {asked})"
    if answer is None:
        return f"asking {what}"
    return f"asking {what} again; last answer {answer} (asked {asked})"


def show_list(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(f"{r['id']}  {r['service']} {r['version']} -> {r['environment']}  {r['strategy']}  {r['phase']}")
