"""The dashboard's gate: the JSON API stays bearer-only, pages need the session cookie the login
page sets, and an action without the CSRF token is refused and changes nothing."""

from __future__ import annotations

import re

import pytest
from apikit import AUTH, SERVICE, TOKEN
from fastapi.testclient import TestClient

from safeship.api.controller import Controller
from safeship.api.dashboard.auth import COOKIE, Sessions

DEPLOY = {"service_name": SERVICE, "version": "v1.2.0", "environment": "production"}


def log_in(client: TestClient) -> str:
    """Logs in through the form; returns the CSRF token the overview page carries."""
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    page = client.get("/")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("path", ["/deployments", "/rollbacks", "/environments", "/services/user-service/history"])
def test_the_api_answers_401_without_a_token_also_with_a_dashboard_session(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    log_in(client)
    answer = client.get(path)  # the session cookie is no bearer token
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert client.get(path, headers=AUTH).status_code == 200


def test_the_api_refuses_a_deployment_without_a_token(client: TestClient, controller: Controller) -> None:
    assert client.post("/deployments", json=DEPLOY).status_code == 401
    assert controller.store.list_deployments() == []


@pytest.mark.parametrize("path", ["/", "/ui/history", "/ui/environments", "/ui/deployments/deploy-0123456789"])
def test_a_page_without_the_cookie_redirects_to_the_login_page(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login?next=")
    login = client.get(answer.headers["location"])
    assert login.status_code == 200 and 'name="token"' in login.text


def test_a_forged_cookie_is_no_session(client: TestClient) -> None:
    client.cookies.set(COOKIE, "abc.def")
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.set(COOKIE, Sessions("another-token").new_session())
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_wrong_token_does_not_log_in(client: TestClient) -> None:
    answer = client.post("/ui/login", data={"token": "wrong", "next": "/"}, follow_redirects=False)
    assert answer.status_code == 401
    assert "not the token" in answer.text
    assert COOKIE not in answer.cookies
    assert client.get("/", follow_redirects=False).status_code == 303


def test_login_sets_an_httponly_samesite_strict_cookie_and_goes_only_to_local_paths(client: TestClient) -> None:
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "https://evil.example/"}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    again = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/history?service=billing"},
                        follow_redirects=False)
    assert again.headers["location"] == "/ui/history?service=billing"


@pytest.mark.parametrize("action", ["abort", "rollback", "approve", "promote"])
def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, controller: Controller, action: str
) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    csrf = log_in(client)
    before = controller.store.get_deployment(created["id"])
    events = len(controller.store.events(created["id"]))

    for form in ({"confirmed": "yes"}, {"confirmed": "yes", "csrf": "0" * 64}, {"confirmed": "yes", "csrf": csrf[:-1]}):
        answer = client.post(f"/ui/deployments/{created['id']}/{action}", data=form, follow_redirects=False)
        assert answer.status_code == 403, answer.text
        assert "CSRF token" in answer.text

    after = controller.store.get_deployment(created["id"])
    assert (after.phase, after.row_version) == (before.phase, before.row_version)
    assert len(controller.store.events(created["id"])) == events


def test_an_action_with_the_csrf_token_acts_and_abort_asks_first(client: TestClient, controller: Controller) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    csrf = log_in(client)
    url = f"/ui/deployments/{created['id']}/abort"

    asked = client.post(url, data={"csrf": csrf}, follow_redirects=False)  # no answer to "are you sure?"
    assert asked.status_code == 200 and "Yes, abort" in asked.text
    assert controller.store.get_deployment(created["id"]).phase == "pending"

    done = client.post(url, data={"csrf": csrf, "confirmed": "yes"}, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/deployments/{created['id']}?done=abort"
    cancelled = controller.store.get_deployment(created["id"])
    assert cancelled.phase in ("cancelled", "rolling_back")  # the engine undoes what it started first
    page = client.get(done.headers["location"])
    assert "Abort requested" in page.text and cancelled.phase.replace("_", " ") in page.text


def test_the_csrf_token_also_works_as_a_header(client: TestClient, controller: Controller) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    csrf = log_in(client)
    answer = client.post(f"/ui/deployments/{created['id']}/abort", data={"confirmed": "yes"},
                         headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert answer.status_code == 303
    assert controller.store.get_deployment(created["id"]).phase in ("cancelled", "rolling_back")


def test_a_refused_action_says_why_in_one_sentence(client: TestClient, controller: Controller) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    csrf = log_in(client)
    answer = client.post(f"/ui/deployments/{created['id']}/approve", data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 409
    assert "not awaiting approval" in answer.text
    assert controller.store.get_deployment(created["id"]).phase == "pending"


def test_logout_needs_the_csrf_token_and_ends_the_session(client: TestClient) -> None:
    csrf = log_in(client)
    assert client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200
    out = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_the_stream_and_chart_data_need_the_session(client: TestClient) -> None:
    assert client.get("/ui/stream").status_code == 401
    assert client.get("/ui/deployments/deploy-0123456789/timeline.json").status_code == 401


def test_promote_now_through_the_api_needs_the_token(client: TestClient, controller: Controller) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    url = f"/deployments/{created['id']}/promote"
    assert client.post(url).status_code == 401
    assert not [e for e in controller.store.events(created["id"]) if e.kind == "promote_now"]

    answer = client.post(url, json={"by": "alice"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    [event] = [e for e in controller.store.events(created["id"]) if e.kind == "promote_now"]
    assert "promote now by alice" in event.message
    assert client.post("/deployments/deploy-ffffffffff/promote", headers=AUTH).status_code == 404
    client.post(f"/deployments/{created['id']}/cancel", headers=AUTH)
    refused = client.post(url, headers=AUTH)
    assert refused.status_code == 409, refused.text


def test_the_promote_button_promotes_now_once(client: TestClient, controller: Controller) -> None:
    created = client.post("/deployments", json=DEPLOY, headers=AUTH).json()
    csrf = log_in(client)
    page = client.get(f"/ui/deployments/{created['id']}").text
    assert 'data-action="promote"' in page
    done = client.post(f"/ui/deployments/{created['id']}/promote", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    [event] = [e for e in controller.store.events(created["id"]) if e.kind == "promote_now"]
    assert "promote now by dashboard" in event.message
    page = client.get(done.headers["location"]).text
    assert "Promote requested" in page and 'data-action="promote"' not in page
