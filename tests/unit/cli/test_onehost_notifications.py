"""A notification sink added to a config that has run before starts at the current event: it is
not sent the whole backlog, unless its config says `since: start`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from test_commands import deploy

CONFIG = """
environment_management:
  environments:
    - {name: production, type: production, platform: sim}
services:
  user-service:
    replicas: 2
    versions: [v1.2.0, v1.3.0, v1.4.0]
"""

RECORDER = "import sys, json; body = json.load(sys.stdin); open(sys.argv[1], 'a').write(body['deployment_id'] + '\\n')"


def sink(name: str, log: Path, since: str | None = None) -> str:
    command = json.dumps([sys.executable, "-c", RECORDER, str(log)])
    extra = f"\n    since: {since}" if since else ""
    return f"  - name: {name}\n    type: command\n    command: {command}{extra}\n"


def received(log: Path) -> set[str]:
    return set(log.read_text().split()) if log.exists() else set()


def test_a_new_sink_starts_at_the_current_event_unless_since_start(tmp_path: Path, capsys) -> None:
    config = tmp_path / "safeship.yaml"
    old, new, everything = tmp_path / "old.log", tmp_path / "new.log", tmp_path / "all.log"
    config.write_text(CONFIG + "notifications:\n" + sink("old", old))
    code, first = deploy(config, "v1.2.0", capsys)
    assert code == 0 and received(old) == {first["id"]}
    told_first = old.read_text().split().count(first["id"])

    config.write_text(CONFIG + "notifications:\n" + sink("old", old) + sink("new", new)
                      + sink("everything", everything, since="start"))
    code, second = deploy(config, "v1.4.0", capsys)
    assert code == 0
    assert received(new) == {second["id"]}  # not the first deployment's backlog
    assert received(everything) == {first["id"], second["id"]}
    assert received(old) == {first["id"], second["id"]}
    assert old.read_text().split().count(first["id"]) == told_first  # nothing sent twice

def test_since_takes_only_now_or_start(tmp_path: Path, capsys) -> None:
    config = tmp_path / "safeship.yaml"
    config.write_text(CONFIG + "notifications:\n" + sink("hook", tmp_path / "x.log", since="yesterday"))
    code, result = deploy(config, "v1.2.0", capsys)
    assert code == 2
    assert "notifications[0].since" in result["err"] and "'yesterday'" in result["err"]
