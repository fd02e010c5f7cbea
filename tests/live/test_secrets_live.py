"""A planted secret reaches the instance that needs it and appears in no output: not in logs,
events, history, --status, --json, API answers, the ledger or error messages."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import ENV, SERVICE, Setup, controller_with, deploy, wait_final

from safeship.api.client import ControllerClient
from safeship.cli import deployment_engine, rollback_manager
from safeship.store import Store

pytestmark = [pytest.mark.live, pytest.mark.slow]

SECRET = "pl4nted-" + uuid.uuid4().hex


@pytest.fixture
def secret_setup(tmp_path: Path) -> Iterator[Setup]:
    folder = tmp_path / "secrets" / ENV
    folder.mkdir(parents=True)
    (folder / "DB_PASSWORD").write_text(SECRET + "\n")
    (folder / "DB_PASSWORD").chmod(0o600)
    with controller_with(tmp_path, lambda text: text + "    secrets: [DB_PASSWORD]\n") as made:
        yield made


def run_cli(main, argv: list[str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue() + err.getvalue()


def test_the_planted_secret_is_nowhere_but_in_the_instance(secret_setup: Setup) -> None:
    setup = secret_setup
    client = ControllerClient(setup.state_dir)
    good, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert good["phase"] == "succeeded", good["reason"]
    # The instance got it: that is the point of a secret.
    pids = setup.pids()
    environ = Path(f"/proc/{next(iter(pids.values()))}/environ").read_bytes()
    assert f"DB_PASSWORD={SECRET}".encode() in environ
    # A path that would leak without redaction: the value is written into an event's text.
    bad = deploy(client, "v1.3.0")
    client.cancel(bad["id"], by=f"operator with token {SECRET}")
    cancelled, _ = wait_final(client, bad["id"])
    assert cancelled["phase"] == "cancelled"

    outputs: dict[str, str] = {}
    outputs["api deployment"] = json.dumps(client.get(bad["id"]))
    outputs["api history"] = json.dumps(client.history(SERVICE))
    outputs["api rollbacks"] = json.dumps(client.rollbacks(SERVICE))
    outputs["api environments"] = json.dumps(client.environments())
    config = str(setup.config)
    outputs["status text"] = run_cli(deployment_engine.main, ["--status", "--deployment-id", bad["id"],
                                                              "--config", config])
    outputs["status json"] = run_cli(deployment_engine.main, ["--status", "--deployment-id", bad["id"],
                                                              "--config", config, "--json"])
    outputs["list json"] = run_cli(deployment_engine.main, ["--list", "--config", config, "--json"])
    outputs["history"] = run_cli(rollback_manager.main, ["--history", "--service", SERVICE, "--config", config])
    outputs["bad input"] = run_cli(deployment_engine.main, ["--deploy", "--service", SERVICE, "--version", SECRET,
                                                            "--environment", ENV, "--config", config])
    for path in setup.state_dir.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ""):
            outputs[str(path)] = path.read_text(errors="replace")
    controller_log = setup.state_dir.parent / "controller.log"
    outputs["controller log"] = controller_log.read_text(errors="replace")
    store = Store(f"sqlite:///{setup.state_dir}/state.db")
    outputs["ledger"] = json.dumps(store.load_instances())
    outputs["stored events"] = json.dumps([e.message for e in store.events(bad["id"])])
    store.close()

    leaked = [name for name, text in outputs.items() if SECRET in text]
    assert leaked == [], f"the secret leaked into: {leaked}"
    assert "***" in outputs["api deployment"] and "***" in outputs["status json"]
    assert "***" in outputs["bad input"]  # the error names the value it refused, masked
