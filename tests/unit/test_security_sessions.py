"""Dashboard sessions end on the server: a session cookie older than 12 hours is refused whatever
the browser keeps, and logging out revokes it, so a copy of the cookie taken before the logout
opens nothing afterwards, also after the controller restarts."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from securitykit import built_controller, write_config

from safeship.api.app import create_app
from safeship.api.controller import Controller
from safeship.api.dashboard.auth import COOKIE, GENERATION_FILE, SESSION_MAX_AGE_S, Sessions

TOKEN = "s" * 43
LOCAL = "http://127.0.0.1"
@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def controller(config: Path) -> Iterator[Controller]:
    with built_controller(config) as built:
        yield built


def _client(controller: Controller) -> TestClient:
    return TestClient(create_app(controller, TOKEN), base_url=LOCAL)


def _log_in(client: TestClient) -> tuple[str, str]:
    """The session cookie the login sets, and the CSRF token of the page it opens."""
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303
    cookie = client.cookies.get(COOKIE)
    assert cookie
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/").text)
    assert found is not None
    return cookie, found.group(1)


def _opens(controller: Controller, cookie: str) -> bool:
    """Whether a browser holding only `cookie` sees the overview (not the login page)."""
    with _client(controller) as other:
        other.cookies.set(COOKIE, cookie)
        answer = other.get("/", follow_redirects=False)
        assert answer.status_code in (200, 303)
        stream = other.get("/ui/deployments/deploy-0123456789/timeline.json")
        assert (answer.status_code == 200) == (stream.status_code != 401)
        return answer.status_code == 200


def test_a_cookie_copied_before_logout_is_refused_after_it(controller: Controller, config: Path) -> None:
    with _client(controller) as client:
        cookie, csrf = _log_in(client)
        assert _opens(controller, cookie)
        answer = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert not _opens(controller, cookie)  # the copy, replayed by someone else
    generation = controller.state_dir / GENERATION_FILE
    assert generation.stat().st_mode & 0o777 == 0o600

    restarted = Controller.from_config_file(config)  # a new controller on the same state folder
    try:
        assert not _opens(restarted, cookie)
        with _client(restarted) as client:
            fresh, _ = _log_in(client)  # logging in again works
        assert _opens(restarted, fresh)
    finally:
        restarted.store.close()


def test_a_session_older_than_its_maximum_age_is_refused_by_the_server(controller: Controller) -> None:
    now = time.time()
    stale = Sessions(TOKEN, clock=lambda: now - SESSION_MAX_AGE_S - 5).new_session()
    recent = Sessions(TOKEN, clock=lambda: now - SESSION_MAX_AGE_S + 600).new_session()
    assert not _opens(controller, stale)
    assert _opens(controller, recent)


def test_the_old_cookie_form_without_issue_time_is_no_session(controller: Controller) -> None:
    sessions = Sessions(TOKEN)
    nonce = "abcdefghijklmnopqrstuvwx"
    old_form = f"{nonce}.{sessions._mac('session', nonce)}"  # what an earlier safeship issued: never expired
    assert not _opens(controller, old_form)
