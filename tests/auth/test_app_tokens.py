"""/v1/tokens: app tokens for third-party apps: issue once, list, revoke, scopes, tenants."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.tokens import assert_auth_error, bearer, claims_of

pytestmark = pytest.mark.db


@pytest.fixture()
def admin(make_user: Any) -> Any:
    return make_user(role="admin")


@pytest.fixture()
def admin_headers(admin: Any, tokens_for: Any) -> dict[str, str]:
    return bearer(tokens_for(admin)["access_token"])


def _issue(client: Any, headers: dict[str, str], **body: Any) -> Any:
    body = {"name": "ci bot", "scopes": ["chat", "read"], **body}
    return client.post("/v1/tokens", json=body, headers=headers)


def test_an_admin_issues_a_named_scoped_token_shown_once(
    client: Any, admin: Any, admin_headers: dict[str, str]
) -> None:
    from auth.models import AppToken, AuditEvent
    from core.store import db

    response = _issue(client, admin_headers, expires_in_days=30)

    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    claims = claims_of(body["token"])
    assert body["jti"] == claims["jti"] and body["name"] == "ci bot"
    assert body["scopes"] == ["chat", "read"] == claims["scopes"]
    assert (
        claims["kind"] == "app"
        and claims["sub"] == admin.id
        and claims["tenant"] == admin.tenant_id
    )
    assert claims["exp"] - claims["iat"] == 30 * 86400
    assert body["revoked_at"] is None and body["owner_id"] == admin.id
    row = db.session.get(AppToken, body["jti"])
    assert row is not None and row.tenant_id == admin.tenant_id
    assert body["token"] not in str(vars(row))  # the secret is not stored
    audit = db.session.execute(db.select(AuditEvent).filter_by(target_id=body["jti"])).scalar_one()
    assert audit.action == "app_token.create" and audit.actor_id == admin.id

    me = client.get("/v1/auth/me", headers=bearer(body["token"]))
    assert me.status_code == 200
    assert me.get_json()["token"]["kind"] == "app"


def test_the_list_shows_the_tenants_tokens_but_never_a_secret(
    client: Any, admin: Any, admin_headers: dict[str, str], make_user: Any, tokens_for: Any
) -> None:
    first = _issue(client, admin_headers, name="first").get_json()
    second = _issue(client, admin_headers, name="second").get_json()
    other_admin = make_user(role="admin")  # another tenant
    _issue(client, bearer(tokens_for(other_admin)["access_token"]), name="theirs")

    response = client.get("/v1/tokens", headers=admin_headers)

    assert response.status_code == 200
    listed = response.get_json()
    assert {t["jti"] for t in listed} == {first["jti"], second["jti"]}
    assert all("token" not in t for t in listed)
    assert first["token"] not in response.get_data(as_text=True)


def test_revoking_a_token_refuses_it_at_once(
    client: Any, admin: Any, admin_headers: dict[str, str]
) -> None:
    issued = _issue(client, admin_headers).get_json()
    assert client.get("/v1/auth/me", headers=bearer(issued["token"])).status_code == 200

    response = client.delete(f"/v1/tokens/{issued['jti']}", headers=admin_headers)

    assert response.status_code == 204
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))
    listed = {t["jti"]: t for t in client.get("/v1/tokens", headers=admin_headers).get_json()}
    assert listed[issued["jti"]]["revoked_at"] is not None
    # idempotent
    assert client.delete(f"/v1/tokens/{issued['jti']}", headers=admin_headers).status_code == 204


def test_an_unknown_jti_is_a_404(client: Any, admin_headers: dict[str, str]) -> None:
    response = client.delete("/v1/tokens/no-such-jti", headers=admin_headers)

    assert response.status_code == 404
    assert response.get_json()["code"] == 404


def test_an_admin_of_another_tenant_gets_404_and_the_token_keeps_working(
    client: Any, admin_headers: dict[str, str], make_user: Any, tokens_for: Any
) -> None:
    victim = make_user(role="admin")  # tenant B
    theirs = _issue(client, bearer(tokens_for(victim)["access_token"])).get_json()

    response = client.delete(f"/v1/tokens/{theirs['jti']}", headers=admin_headers)

    assert response.status_code == 404
    assert response.get_json()["message"] == "App token not found."
    assert client.get("/v1/auth/me", headers=bearer(theirs["token"])).status_code == 200


def test_an_operator_may_revoke_any_tenants_token(
    client: Any, make_user: Any, tokens_for: Any, admin_headers: dict[str, str]
) -> None:
    issued = _issue(client, admin_headers).get_json()
    operator = make_user(role="operator")  # of another tenant

    response = client.delete(
        f"/v1/tokens/{issued['jti']}", headers=bearer(tokens_for(operator)["access_token"])
    )

    assert response.status_code == 204
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))


def test_a_member_may_not_issue_tokens(client: Any, make_user: Any, tokens_for: Any) -> None:
    member = make_user()

    response = _issue(client, bearer(tokens_for(member)["access_token"]))

    assert_auth_error(response, status=403, error="insufficient_scope")
    assert 'scope="admin"' in response.headers["WWW-Authenticate"]


def test_a_read_only_app_token_lacks_the_scope_for_an_admin_route(
    client: Any, admin_headers: dict[str, str]
) -> None:
    reader = _issue(client, admin_headers, scopes=["read"]).get_json()["token"]

    for response in (
        _issue(client, bearer(reader), scopes=["read"]),
        client.get("/v1/tokens", headers=bearer(reader)),
    ):
        assert_auth_error(response, status=403, error="insufficient_scope")
        assert 'scope="admin"' in response.headers["WWW-Authenticate"]
    assert client.get("/v1/auth/me", headers=bearer(reader)).status_code == 200


def test_an_admin_scoped_app_token_cannot_grant_scopes_it_does_not_hold(
    client: Any, admin_headers: dict[str, str]
) -> None:
    automation = _issue(client, admin_headers, scopes=["admin"]).get_json()["token"]

    refused = _issue(client, bearer(automation), scopes=["chat"])
    allowed = _issue(client, bearer(automation), scopes=["admin"], expires_in_days=365)

    assert_auth_error(refused, status=403, error="insufficient_scope")
    assert allowed.status_code == 201
    # a token made by a token never outlives its maker
    assert claims_of(allowed.get_json()["token"])["exp"] <= claims_of(automation)["exp"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["write"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"name": ""}, "name"),
        ({"name": "bad\nname"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": 366}, "expires_in_days"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_requests_say_what_is_wrong_and_issue_nothing(
    client: Any, admin_headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    from auth.models import AppToken
    from core.store import db

    response = _issue(client, admin_headers, **body)

    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert db.session.execute(db.select(AppToken)).first() is None


def test_last_used_is_written_at_most_once_a_minute(
    client: Any, admin_headers: dict[str, str], redis: Any
) -> None:
    from auth.models import AppToken
    from core.store import db

    issued = _issue(client, admin_headers).get_json()
    headers = bearer(issued["token"])

    def last_used() -> Any:
        db.session.expire_all()
        return db.session.get(AppToken, issued["jti"]).last_used_at

    assert last_used() is None
    client.get("/v1/auth/me", headers=headers)
    first = last_used()
    assert first is not None
    assert 0 < redis.ttl(f"sg:tu:{issued['jti']}") <= 60

    client.get("/v1/auth/me", headers=headers)
    assert last_used() == first  # within the minute: no write

    redis.delete(f"sg:tu:{issued['jti']}")  # the minute has passed
    client.get("/v1/auth/me", headers=headers)
    assert last_used() > first


def test_a_revoked_app_token_stays_refused_if_redis_forgets(
    client: Any, admin_headers: dict[str, str], redis: Any
) -> None:
    issued = _issue(client, admin_headers).get_json()
    client.delete(f"/v1/tokens/{issued['jti']}", headers=admin_headers)

    redis.flushall()  # Redis restarted without persistence: the blocklist is gone

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))
    assert redis.exists(f"sg:rv:jti:{issued['jti']}")  # and the blocklist entry is restored


def test_logging_out_with_an_app_token_revokes_it_and_its_record(
    client: Any, admin_headers: dict[str, str]
) -> None:
    issued = _issue(client, admin_headers).get_json()

    assert client.post("/v1/auth/logout", headers=bearer(issued["token"])).status_code == 204

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))
    listed = {t["jti"]: t for t in client.get("/v1/tokens", headers=admin_headers).get_json()}
    assert listed[issued["jti"]]["revoked_at"] is not None


def test_disabling_the_owner_kills_their_app_tokens(
    client: Any, admin: Any, admin_headers: dict[str, str]
) -> None:
    from auth import service

    issued = _issue(client, admin_headers).get_json()

    service.disable_user(admin.tenant_id, admin.id, None)

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))
