"""Secret files and redaction: a planted value must never come back out, whatever path it takes."""

from __future__ import annotations

import io
import logging
import os
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safeship.environments import secrets
from safeship.environments.secrets import RedactingFilter, Redactor, install, load_secrets
from safeship.errors import ConfigError, InputError

SECRET = "hunter2-Xq9-planted"
OTHER = "db-pass-77"


def plant(root: Path, env: str, name: str, value: str, mode: int = 0o600) -> Path:
    directory = root / "secrets" / env
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(value)
    path.chmod(mode)
    return path


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_files_load_with_one_trailing_newline_dropped(tmp_path: Path, mode: int) -> None:
    plant(tmp_path, "prod", "API_TOKEN", SECRET + "\n", mode)
    plant(tmp_path, "prod", "DB_PASSWORD", OTHER + "\r\n", mode)
    plant(tmp_path, "prod", "MULTILINE", "line1\nline2\n\n", mode)
    assert load_secrets(tmp_path, "prod") == {"API_TOKEN": SECRET, "DB_PASSWORD": OTHER, "MULTILINE": "line1\nline2\n"}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o777])
def test_group_or_world_readable_file_is_refused_without_showing_the_value(tmp_path: Path, mode: int) -> None:
    path = plant(tmp_path, "prod", "API_TOKEN", SECRET, mode)
    with pytest.raises(ConfigError) as caught:
        load_secrets(tmp_path, "prod")
    message = str(caught.value)
    assert str(path) in message
    assert oct(mode) in message
    assert f"chmod 600 {path}" in message
    assert caught.value.field == "mode"
    assert SECRET not in message
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2


def test_only_the_requested_names_are_loaded(tmp_path: Path) -> None:
    plant(tmp_path, "prod", "API_TOKEN", SECRET)
    plant(tmp_path, "prod", "UNUSED", "loose", 0o644)  # not asked for, so its mode does not matter
    assert load_secrets(tmp_path, "prod", ["API_TOKEN"]) == {"API_TOKEN": SECRET}


def test_a_missing_requested_secret_is_named(tmp_path: Path) -> None:
    plant(tmp_path, "prod", "API_TOKEN", SECRET)
    with pytest.raises(ConfigError) as caught:
        load_secrets(tmp_path, "prod", ["API_TOKEN", "DB_PASSWORD"])
    assert caught.value.field == "DB_PASSWORD"
    assert "DB_PASSWORD" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_missing_directory_is_empty_unless_names_are_requested(tmp_path: Path) -> None:
    assert load_secrets(tmp_path, "staging") == {}
    assert load_secrets(tmp_path, "staging", []) == {}
    with pytest.raises(ConfigError, match="API_TOKEN"):
        load_secrets(tmp_path, "staging", ["API_TOKEN"])


def test_dot_files_are_skipped_and_symlinks_checked_at_their_target(tmp_path: Path) -> None:
    directory = plant(tmp_path, "prod", ".gitkeep", "", 0o644).parent
    data = directory / "..data"
    data.mkdir()
    (data / "API_TOKEN").write_text(SECRET)
    (data / "API_TOKEN").chmod(0o600)
    (directory / "API_TOKEN").symlink_to(data / "API_TOKEN")
    assert load_secrets(tmp_path, "prod") == {"API_TOKEN": SECRET}
    (data / "API_TOKEN").chmod(0o644)
    with pytest.raises(ConfigError, match="0o644"):
        load_secrets(tmp_path, "prod")


@pytest.mark.parametrize(
    ("environment", "names", "field"),
    [("../prod", None, "environment"), ("..", None, "environment"), ("prod", ["../../etc/passwd"], "secrets")],
)
def test_paths_cannot_escape_the_secrets_directory(
    tmp_path: Path, environment: str, names: list[str] | None, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_secrets(tmp_path, environment, names)
    assert caught.value.field == field


def test_a_file_that_is_not_a_variable_name_is_refused(tmp_path: Path) -> None:
    plant(tmp_path, "prod", "api-token", SECRET)
    with pytest.raises(ConfigError, match="variable names"):
        load_secrets(tmp_path, "prod")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    directory = tmp_path / "secrets" / "prod"
    directory.mkdir(parents=True)
    os.mkfifo(directory / "API_TOKEN", 0o600)
    with pytest.raises(ConfigError, match="regular files"):
        load_secrets(tmp_path, "prod")


# ---------------------------------------------------------------- redaction


def test_nested_structures_lose_every_occurrence_including_keys() -> None:
    Point = namedtuple("Point", "x y")
    redactor = Redactor([SECRET, OTHER])
    original: dict[str, Any] = {
        "env": {"API_TOKEN": SECRET, f"key-{SECRET}": [f"Bearer {SECRET}", (OTHER, 3, None)]},
        "argv": ("--token", f"--token={SECRET}"),
        "raw": f"auth {SECRET}".encode(),
        "tags": {SECRET, "plain"},
        "point": Point(SECRET, 1),
        "count": 4,
    }
    redacted = redactor.redact(original)
    assert SECRET not in repr(redacted) and OTHER not in repr(redacted)
    assert redacted["env"]["API_TOKEN"] == "***"
    assert redacted["env"]["key-***"] == ["Bearer ***", ("***", 3, None)]
    assert redacted["raw"] == b"auth ***"
    assert redacted["tags"] == {"***", "plain"}
    assert redacted["point"] == Point("***", 1) and type(redacted["point"]) is Point
    assert redacted["count"] == 4
    assert original["env"]["API_TOKEN"] == SECRET  # a copy: the input is untouched


@pytest.mark.parametrize(
    ("values", "text", "expected"),
    [
        (["abc", "abcdef"], "x abcdef y abc", "x *** y ***"),  # longest first: no "***def"
        (["abcd", "cdef"], "abcdef", "***"),  # overlapping values: no fragment survives
        (["aa"], "aaaaa", "***"),
        (["s"], "its secrets", "it*** ***ecret***"),  # short values too: see the module docstring
        ([""], "nothing to hide", "nothing to hide"),
        ([], "nothing to hide", "nothing to hide"),
    ],
)
def test_redact_text_table(values: list[str], text: str, expected: str) -> None:
    assert Redactor(values).redact_text(text) == expected


def test_exception_messages_are_redacted() -> None:
    redactor = Redactor([SECRET])
    try:
        raise RuntimeError(f"connect to postgres://app:{SECRET}@db failed")
    except RuntimeError as exc:
        message = redactor.redact_text(str(exc))
    assert message == "connect to postgres://app:***@db failed"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    parent = logging.getLogger("safeship-test-redaction")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    try:
        yield parent, stream
    finally:
        parent.removeHandler(handler)


def test_log_output_carries_the_mask_not_the_value(captured: tuple[logging.Logger, io.StringIO]) -> None:
    parent, stream = captured
    redactor = Redactor([SECRET])
    log_filter = install(redactor, parent)
    assert install(redactor, parent) is log_filter  # installing twice adds nothing
    child = parent.getChild("engine")  # propagated records pass handler filters too
    child.info("token is %s", SECRET)
    child.warning(f"inline {SECRET}")
    child.info("args %r", {"API_TOKEN": SECRET})
    try:
        raise ValueError(f"bad credentials {SECRET}")
    except ValueError:
        child.exception("login failed")
    child.info("stack", stack_info=True, extra={"unused": 1})
    output = stream.getvalue()
    assert SECRET not in output
    assert "token is ***" in output and "inline ***" in output and "'API_TOKEN': '***'" in output
    assert "ValueError: bad credentials ***" in output


def test_values_registered_later_are_masked_by_an_installed_filter(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    parent, stream = captured
    redactor = Redactor()
    install(redactor, parent)
    redactor.add([SECRET])
    parent.error("late %s", SECRET)
    assert stream.getvalue().strip().endswith("late ***")


def test_bad_format_arguments_are_masked_too() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d %d", (SECRET,), None)
    RedactingFilter(Redactor([SECRET])).filter(record)
    assert SECRET not in repr(record.args) and SECRET not in str(record.msg)


def test_the_process_wide_redactor_is_shared() -> None:
    value = "process-wide-secret-91"
    secrets.register([value])
    assert secrets.redactor() is secrets.redactor()
    assert secrets.redactor().redact_text(f"x {value}") == "x ***"
