"""The API token file: a controller refuses to start (exit 2, one sentence naming the file and what
is wrong) with an empty, short or world-readable token, instead of switching authentication off;
a new token is made 0600 in a 0700 state folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from securitykit import USER_SERVICE, write_config

from safeship.api.app import create_app, load_or_create_token
from safeship.api.client import ControllerClient
from safeship.api.controller import Controller
from safeship.errors import InputError
from safeship.tokens import MIN_TOKEN_CHARS

REPO = Path(__file__).resolve().parents[2]
def _config(tmp_path: Path) -> tuple[Path, Path]:
    return write_config(tmp_path, command=USER_SERVICE), tmp_path / "state"


def _start_controller(config: Path) -> subprocess.CompletedProcess[str]:
    """`python -m safeship.api.server`; a controller that does start (the old behaviour) is killed
    by the timeout, and the test fails on its exit code."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "safeship.api.server", "--config", str(config), "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


def _run_or_timeout(config: Path) -> tuple[int | None, str]:
    try:
        done = _start_controller(config)
    except subprocess.TimeoutExpired as exc:  # it started and served: the refusal is missing
        out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        return None, out
    return done.returncode, done.stderr


@pytest.mark.parametrize(("content", "mode", "expected"), [
    ("", 0o600, "is empty"),
    ("   \n", 0o600, "is empty"),
    ("short-token\n", 0o600, "holds a token of 11 characters"),
    ("x" * 40 + "\n", 0o644, "has mode 0644"),
])
def test_the_controller_refuses_a_weak_token_file(tmp_path: Path, content: str, mode: int, expected: str) -> None:
    config, state = _config(tmp_path)
    state.mkdir(mode=0o700)
    token = state / "token"
    token.write_text(content)
    token.chmod(mode)
    code, err = _run_or_timeout(config)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert str(token) in lines[0] and expected in lines[0]
    assert "listening" not in err
    assert not (state / "controller.json").exists()


def test_a_new_token_is_long_private_and_in_a_private_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = load_or_create_token(state)
    path = state / "token"
    assert len(token) >= MIN_TOKEN_CHARS
    assert path.read_text().strip() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in state.iterdir()] == ["token"]  # the temp file it was written to is gone
    assert load_or_create_token(state) == token  # the second start reads it back


def test_a_token_readable_by_others_is_refused_in_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = load_or_create_token(state)
    (state / "token").chmod(0o640)
    with pytest.raises(InputError, match=r"token has mode 0640, which lets other users read the API token") as err:
        load_or_create_token(state)
    assert token not in str(err.value)


def test_the_cli_says_so_before_starting_a_controller(tmp_path: Path) -> None:
    config, state = _config(tmp_path)
    state.mkdir(mode=0o700)
    (state / "token").write_text("\n")
    (state / "token").chmod(0o600)
    with pytest.raises(InputError, match=r"token file .* is empty") as err:
        ControllerClient(state).ensure_running(config)
    assert err.value.exit_code == 2
    assert not (state / "logs" / "controller.log").exists()  # nothing was started


def test_an_app_built_with_a_real_token_still_refuses_an_empty_bearer(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    config, state = _config(tmp_path)
    controller = Controller.from_config_file(config)
    try:
        token = load_or_create_token(state)
        with TestClient(create_app(controller, token), base_url="http://127.0.0.1") as client:
            assert client.get("/deployments", headers={"Authorization": "Bearer "}).status_code == 401
            assert client.get("/deployments", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        controller.store.close()
