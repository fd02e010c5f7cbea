"""`safeship token create|list|revoke` and `safeship audit`: exit codes and sentences, the plain
token never stored (only its SHA-256), bad input (an unknown role or environment) refused with
exit 2 and nothing written, and `safeship audit --json` listing the rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from roleskit import run_cli

from safeship.store import Store

pytest_plugins = ("rolesfixtures",)  # the fixtures client, config_file and controller


def _store_bytes(config_file: Path) -> bytes:
    state = config_file.parent / "state"
    return b"".join(p.read_bytes() for p in sorted(state.glob("state.db*")))


def _tokens(config_file: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    code, out, err = run_cli(["token", "list", "--json", "--config", str(config_file)], capsys)
    assert code == 0, err
    tokens: list[dict[str, object]] = json.loads(out)["tokens"]
    return tokens


def test_create_prints_the_token_once_and_stores_only_its_sha256(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["token", "create", "--role", "deployer", "--environment", "staging",
                              "--name", "ci-staging", "--config", str(config_file)], capsys)

    assert code == 0, err
    token = out.strip()
    assert token.startswith("safeship_") and len(token) >= 40 and "\n" not in token
    assert "shown only now" in err
    raw = _store_bytes(config_file)
    assert token.encode() not in raw
    assert token.removeprefix("safeship_").encode() not in raw
    store = Store(f"sqlite:///{config_file.parent}/state/state.db")
    try:
        (record,) = store.tokens()
    finally:
        store.close()
    assert record.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert (record.name, record.role, record.environments) == ("ci-staging", "deployer", ["staging"])
    listed = _tokens(config_file, capsys)
    assert listed == [{"name": "ci-staging", "role": "deployer", "environments": ["staging"],
                       "created_at": record.created_at, "last_used_at": None, "revoked_at": None}]


@pytest.mark.parametrize(("argv", "sentence"), [
    (["--role", "boss"], "error: --role: 'boss' is not a role (roles: viewer, deployer, admin)"),
    (["--role", "deployer", "--environment", "prod"],
     "error: --environment: 'prod' is not an environment of {config} (known: production, staging)"),
    (["--role", "viewer", "--environment", "staging"], "error: --environment: a viewer changes nothing"),
    (["--role", "admin", "--name", "no spaces"], "error: --name: 'no spaces' cannot name a token"),
])
def test_bad_input_is_one_sentence_exit_2_and_nothing_written(
        config_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], sentence: str) -> None:
    code, out, err = run_cli(["token", "create", "--config", str(config_file), *argv], capsys)

    assert code == 2
    assert out == ""
    assert err.startswith(sentence.format(config=config_file)) and err.count("\n") == 1
    assert not (config_file.parent / "state" / "state.db").exists()  # not even opened


def test_revoke_then_revoke_again_or_an_unknown_name(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", str(config_file)]
    assert run_cli(["token", "create", "--role", "viewer", "--name", "watcher", *base], capsys)[0] == 0
    taken = run_cli(["token", "create", "--role", "admin", "--name", "watcher", *base], capsys)
    assert taken[0] == 2 and "a token named 'watcher' exists already" in taken[2]

    code, out, _err = run_cli(["token", "revoke", "watcher", *base], capsys)
    assert code == 0 and "token 'watcher' revoked" in out
    again = run_cli(["token", "revoke", "watcher", *base], capsys)
    assert again[0] == 2 and again[2] == "error: the token 'watcher' was revoked already\n"
    unknown = run_cli(["token", "revoke", "nobody", *base], capsys)
    assert unknown[0] == 2 and "no token is named 'nobody'" in unknown[2]
    (listed,) = _tokens(config_file, capsys)
    assert listed["revoked_at"] is not None


def test_audit_json_lists_the_token_commands_newest_first(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", str(config_file)]
    run_cli(["token", "create", "--role", "viewer", "--name", "watcher", *base], capsys)
    run_cli(["token", "revoke", "watcher", *base], capsys)
    run_cli(["token", "revoke", "watcher", *base], capsys)

    code, out, err = run_cli(["audit", "--json", *base], capsys)

    assert code == 0, err
    rows = json.loads(out)["audit"]
    assert [(r["action"], r["target"], r["status"]) for r in rows] == [
        ("safeship token revoke", "watcher", 2),
        ("safeship token revoke", "watcher", 0),
        ("safeship token create", "watcher", 0),
    ]
    assert rows[0]["outcome"] == "the token 'watcher' was revoked already"
    assert rows[1]["outcome"] == "ok"
    assert all(r["actor"].startswith("cli: ") and r["source"].startswith("cli pid ") for r in rows)
    limited = run_cli(["audit", "--json", "--limit", "1", *base], capsys)
    assert len(json.loads(limited[1])["audit"]) == 1
    bad = run_cli(["audit", "--limit", "0", *base], capsys)
    assert bad[0] == 2 and bad[2] == "error: --limit: must be 1 to 100000, got 0\n"
    text = run_cli(["audit", *base], capsys)
    assert text[0] == 0 and "safeship token revoke watcher -> 2 the token 'watcher' was revoked already" in text[1]
