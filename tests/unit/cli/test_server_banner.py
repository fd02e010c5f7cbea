"""What `safeship server` prints once it listens tells a user how to restart it without an outage
(Ctrl-C or SIGTERM: the routes keep serving) apart from `--stop`, which takes the routes down too."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeship.cli.main import _listening


def test_the_banner_says_how_to_restart_without_an_outage_and_what_stop_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info: dict[str, object] = {"host": "127.0.0.1", "port": 41234, "pid": 4321, "state_dir": str(tmp_path)}
    _listening(info, "safeship.yaml")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "safeship controller listening on http://127.0.0.1:41234 (pid 4321)",
        f"token: {tmp_path / 'token'}",
        "restart it with no outage: Ctrl-C here (or SIGTERM to pid 4321), then `safeship server` again; "
        "the routes and instances keep serving meanwhile",
        "stop it and its routes (they then no longer listen): `safeship server --stop --config safeship.yaml`",
    ]
