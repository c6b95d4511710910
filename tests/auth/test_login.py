"""/v1/auth: log in, refresh, log out, me; bearer and cookie (with CSRF) flows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.config import PASSWORD
from tests.support.tokens import (
    assert_auth_error,
    assert_pair_refused,
    bearer,
    claims_of,
    tenant_of,
)

pytestmark = pytest.mark.db

BAD_CREDENTIALS = "Invalid tenant, email or password."


def test_login_returns_a_token_pair_that_identifies_the_user(
    client: Any, make_user: Any, login: Any
) -> None:
    user = make_user(role="admin")

    response = login(user)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    access = claims_of(body["access_token"])
    assert access["sub"] == user.id and access["tenant"] == user.tenant_id
    assert access["role"] == "admin" and access["type"] == "access"
    assert access["iss"] == "streamgate" and access["aud"] == "streamgate-api"
    assert access["exp"] - access["iat"] == 900
    assert claims_of(body["refresh_token"])["type"] == "refresh"

    me = client.get("/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.get_json() == {
        "id": user.id,
        "email": user.email,
        "role": "admin",
        "tenant": {
            "id": user.tenant_id,
            "slug": tenant_of(user).slug,
            "name": tenant_of(user).name,
        },
        "token": {
            "jti": access["jti"],
            "kind": "user",
            "scopes": ["admin", "chat", "read"],
            "expires_at": me.get_json()["token"]["expires_at"],
        },
    }


def test_login_email_is_case_insensitive(make_user: Any, login: Any) -> None:
    user = make_user(email="alice@example.com")

    response = login(user, email="  ALICE@example.COM ")

    assert response.status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"password": "wrong password"},
        {"email": "nobody@example.com"},
        {"tenant": "no-such-tenant"},
    ],
    ids=["wrong-password", "unknown-email", "unknown-tenant"],
)
def test_bad_credentials_get_one_401_that_reveals_nothing(
    client: Any, make_user: Any, change: dict[str, str]
) -> None:
    user = make_user()
    body = {"tenant": tenant_of(user).slug, "email": user.email, "password": PASSWORD, **change}

    response = client.post("/v1/auth/login", json=body)

    assert_auth_error(response)
    assert response.get_json()["message"] == BAD_CREDENTIALS


def test_login_validates_its_body(client: Any) -> None:
    response = client.post("/v1/auth/login", json={"tenant": "acme", "email": "a@b.c"})

    assert response.status_code == 422
    assert "password" in response.get_json()["errors"]


def test_refresh_issues_a_new_access_token_with_the_current_role(
    client: Any, signed_in: tuple[Any, dict[str, str]]
) -> None:
    from auth import service

    user, pair = signed_in
    service.set_user_role(user.tenant_id, user.id, "admin", None)  # a promotion keeps tokens

    response = client.post("/v1/auth/refresh", headers=bearer(pair["refresh_token"]))

    assert response.status_code == 200
    body = response.get_json()
    assert body["refresh_token"] != pair["refresh_token"]  # rotated (tests/auth/test_sessions.py)
    assert claims_of(body["access_token"])["role"] == "admin"
    me = client.get("/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.get_json()["role"] == "admin"


def test_logout_revokes_the_access_token_and_the_given_refresh_token(
    client: Any, pair: dict[str, str]
) -> None:
    response = client.post(
        "/v1/auth/logout",
        headers=bearer(pair["access_token"]),
        json={"refresh_token": pair["refresh_token"]},
    )

    assert response.status_code == 204
    assert_pair_refused(client, pair)


def test_logout_without_a_body_ends_the_session_refresh_token_included(
    client: Any, pair: dict[str, str]
) -> None:
    assert client.post("/v1/auth/logout", headers=bearer(pair["access_token"])).status_code == 204

    assert_pair_refused(client, pair)


def test_successful_logins_are_rate_limited_per_account(
    client: Any, make_user: Any, login: Any
) -> None:
    user = make_user()
    for i in range(10):  # LOGIN_ACCOUNT_RPM default
        assert login(user, addr=f"10.8.0.{i + 1}").status_code == 200

    refused = login(user, addr="10.8.1.1")

    assert refused.status_code == 429
    wait = int(refused.headers["Retry-After"])
    assert 0 < wait <= 60 and f"try again in {wait} seconds" in refused.get_json()["message"]


def test_logout_refuses_another_users_refresh_token_and_revokes_nothing(
    client: Any, make_user: Any, tokens_for: Any
) -> None:
    mine, theirs = tokens_for(make_user()), tokens_for(make_user())

    response = client.post(
        "/v1/auth/logout",
        headers=bearer(mine["access_token"]),
        json={"refresh_token": theirs["refresh_token"]},
    )

    assert response.status_code == 422
    assert "refresh_token" in response.get_json()["errors"]
    assert client.get("/v1/auth/me", headers=bearer(mine["access_token"])).status_code == 200
    assert (
        client.post("/v1/auth/refresh", headers=bearer(theirs["refresh_token"])).status_code == 200
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/auth/me"),
        ("POST", "/v1/auth/refresh"),
        ("POST", "/v1/auth/logout"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens/some-jti"),
    ],
)
def test_every_authenticated_route_answers_401_without_a_token(
    client: Any, method: str, path: str
) -> None:
    response = client.open(path, method=method, json={})

    assert_auth_error(response, error="")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="streamgate"'
    assert response.get_json()["error_code"] == "missing_token"


@pytest.mark.parametrize("param", ["jwt", "access_token", "token"])
def test_a_token_in_the_query_string_is_not_accepted(
    client: Any, param: str, pair: dict[str, str]
) -> None:
    response = client.get(f"/v1/auth/me?{param}={pair['access_token']}")

    assert_auth_error(response, error="")


# --- browsers: cookies + CSRF -------------------------------------------------------------------


def _cookie_login(client: Any, user: Any) -> Any:
    body = {
        "tenant": tenant_of(user).slug,
        "email": user.email,
        "password": PASSWORD,
        "cookie": True,
    }
    response = client.post("/v1/auth/login", json=body)
    assert response.status_code == 200
    return response


def test_cookie_login_sets_httponly_samesite_cookies_and_no_tokens_in_the_body(
    client: Any, make_user: Any
) -> None:
    response = _cookie_login(client, make_user())

    assert "access_token" not in response.get_json()
    assert "refresh_token" not in response.get_json()
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    assert set(cookies) == {"sg_access", "sg_refresh", "csrf_access_token", "csrf_refresh_token"}
    for name in ("sg_access", "sg_refresh"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
    for name in ("csrf_access_token", "csrf_refresh_token"):
        assert "HttpOnly" not in cookies[name]  # the page's script reads it to send X-CSRF-TOKEN
    assert "Path=/v1/auth/" in cookies["sg_refresh"]
    assert client.get("/v1/auth/me").status_code == 200  # reads need no CSRF header


def test_a_state_changing_request_by_cookie_needs_the_csrf_header(
    client: Any, make_user: Any
) -> None:
    _cookie_login(client, make_user())
    csrf = client.get_cookie("csrf_access_token").value

    missing = client.post("/v1/auth/logout")
    wrong = client.post("/v1/auth/logout", headers={"X-CSRF-TOKEN": "forged"})

    assert_auth_error(missing)
    assert_auth_error(wrong)
    assert client.get("/v1/auth/me").status_code == 200  # still logged in

    response = client.post("/v1/auth/logout", headers={"X-CSRF-TOKEN": csrf})

    assert response.status_code == 204
    cleared = {c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie")}
    assert {"sg_access", "sg_refresh", "csrf_access_token", "csrf_refresh_token"} <= cleared
    assert client.get_cookie("sg_access") is None
    assert_auth_error(client.get("/v1/auth/me"), error="")


def test_cookie_logout_also_revokes_the_refresh_cookie(client: Any, make_user: Any) -> None:
    _cookie_login(client, make_user())
    refresh = client.get_cookie("sg_refresh", path="/v1/auth/").value
    csrf = client.get_cookie("csrf_access_token").value

    assert client.post("/v1/auth/logout", headers={"X-CSRF-TOKEN": csrf}).status_code == 204

    assert_auth_error(client.post("/v1/auth/refresh", headers=bearer(refresh)))


def test_cookie_refresh_needs_the_refresh_csrf_value_and_sets_a_new_access_cookie(
    client: Any, make_user: Any
) -> None:
    _cookie_login(client, make_user())
    old_access = client.get_cookie("sg_access").value

    assert_auth_error(client.post("/v1/auth/refresh"))

    csrf = client.get_cookie("csrf_refresh_token").value
    response = client.post("/v1/auth/refresh", headers={"X-CSRF-TOKEN": csrf})

    assert response.status_code == 200
    assert "access_token" not in response.get_json()
    new_access = client.get_cookie("sg_access").value
    assert new_access != old_access
    assert claims_of(new_access)["type"] == "access"
    assert client.get("/v1/auth/me").status_code == 200


def test_a_bearer_header_wins_over_a_cookie(client: Any, make_user: Any, tokens_for: Any) -> None:
    _cookie_login(client, make_user())
    other = make_user()
    pair = tokens_for(other)

    me = client.get("/v1/auth/me", headers=bearer(pair["access_token"]))

    assert me.get_json()["id"] == other.id


def test_status_says_whether_the_cookies_hold_a_session_and_never_answers_401(
    client: Any, make_user: Any
) -> None:
    """A page opened logged out asks this first, so its first load logs no 401."""
    logged_out = client.get("/v1/auth/status")
    assert logged_out.status_code == 200
    assert logged_out.get_json() == {"authenticated": False, "refreshable": False}
    _cookie_login(client, make_user())
    assert client.get("/v1/auth/status").get_json() == {
        "authenticated": True,
        "refreshable": True,
    }
    client.set_cookie("sg_access", "not-a-token")  # an expired or forged access cookie
    assert client.get("/v1/auth/status").get_json() == {
        "authenticated": False,
        "refreshable": True,
    }
