"""The example service's own tests, run by its pipeline's `test` stage (not by safeship's suite).

Pure functions only: they run in well under a second."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from examples.user_service import build
from examples.user_service.app import DEFAULT_RELEASES, ReleaseError, _parse_head, load_release, request_length


def test_every_listed_release_loads() -> None:
    good = load_release(DEFAULT_RELEASES, "v1.2.0")
    assert good.error_rate == 0.0 and good.ready
    assert load_release(DEFAULT_RELEASES, "v1.3.0").error_rate == pytest.approx(0.08)
    assert load_release(DEFAULT_RELEASES, "v1.5.0").ready is False


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ReleaseError, match=r"unknown version 'v9\.9\.9'"):
        load_release(DEFAULT_RELEASES, "v9.9.9")


def test_bad_release_fields_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "releases.yaml"
    path.write_text("releases:\n  v1: {error_rate: 2.0}\n")
    with pytest.raises(ReleaseError, match=r"within 0\.\.1"):
        load_release(path, "v1")
    path.write_text("releases:\n  v1: {colour: red}\n")
    with pytest.raises(ReleaseError, match="unknown field 'colour'"):
        load_release(path, "v1")


def test_request_head_parsing() -> None:
    assert _parse_head(b"GET /users?id=1 HTTP/1.1\r\nHost: x\r\n") == ("GET", "/users", True)
    assert _parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n") == ("GET", "/", False)
    assert _parse_head(b"GET / HTTP/1.0\r\n") == ("GET", "/", False)
    assert _parse_head(b"garbage\r\n") is None
    assert request_length(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n") == 12
    assert request_length(b"POST / HTTP/1.1\r\n") == 0


def test_release_tarball_is_reproducible_and_runnable_layout(tmp_path: Path) -> None:
    first = build.build("v1.4.0", tmp_path / "a.tar.gz")
    second = build.build("v1.4.0", tmp_path / "b.tar.gz")
    assert first == second
    assert (tmp_path / "a.tar.gz.sha256").read_text().startswith(first)
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"examples/__init__.py", "examples/user_service/__main__.py", "examples/user_service/app.py",
            "examples/user_service/releases.yaml", "RELEASE"} <= names
    assert not any("/tests/" in name or name.endswith("build.py") for name in names)
