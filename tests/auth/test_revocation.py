"""Revocation is immediate on every instance sharing Redis; without Redis nothing gets through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.config import app_config
from tests.support.live import close_app
from tests.support.processes import free_port
from tests.support.tokens import assert_auth_error, bearer

pytestmark = pytest.mark.db


@pytest.fixture()
def second_app(app: Any, redis_server: Any, db_url: str, fake_upstream: Any) -> Iterator[Any]:
    """Another node: its own create_app(), the same Redis and database."""
    from api import create_app

    other = create_app(app_config(redis_server.url, db_url, fake_upstream.base_url))
    yield other
    close_app(other)


def test_logout_on_one_node_is_refused_on_the_other_at_the_next_request(
    client: Any, second_app: Any, pair: dict[str, str]
) -> None:
    other = second_app.test_client()
    assert other.get("/v1/auth/me", headers=bearer(pair["access_token"])).status_code == 200

    assert client.post("/v1/auth/logout", headers=bearer(pair["access_token"])).status_code == 204

    assert_auth_error(other.get("/v1/auth/me", headers=bearer(pair["access_token"])))


def test_an_app_token_revoked_on_one_node_is_refused_on_the_other(
    client: Any, second_app: Any, make_user: Any, tokens_for: Any
) -> None:
    admin_headers = bearer(tokens_for(make_user(role="admin"))["access_token"])
    issued = client.post(
        "/v1/tokens", json={"name": "bot", "scopes": ["read"]}, headers=admin_headers
    ).get_json()
    other = second_app.test_client()
    assert other.get("/v1/auth/me", headers=bearer(issued["token"])).status_code == 200

    other_admin = other.delete(f"/v1/tokens/{issued['jti']}", headers=admin_headers)
    assert other_admin.status_code == 204

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(issued["token"])))


def test_a_user_disabled_on_one_node_is_refused_on_the_other(
    client: Any, second_app: Any, signed_in: tuple[Any, dict[str, str]]
) -> None:
    from auth import service

    user, pair = signed_in
    # Read the ids here: touching an expired attribute inside the other app's context would
    # load it through that app's engine (Flask-SQLAlchemy binds by current_app).
    tenant_id, user_id = user.tenant_id, user.id
    other = second_app.test_client()
    assert other.get("/v1/auth/me", headers=bearer(pair["access_token"])).status_code == 200

    with second_app.app_context():
        service.disable_user(tenant_id, user_id, None, "compromised")

    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["access_token"])))
    assert_auth_error(other.get("/v1/auth/me", headers=bearer(pair["access_token"])))


@pytest.fixture()
def app_without_redis(app: Any, db_url: str, fake_upstream: Any) -> Iterator[Any]:
    """A node whose Redis is down (nothing listens on its port), sharing the database."""
    from api import create_app

    closed = f"redis://127.0.0.1:{free_port()}/0"
    broken = create_app(app_config(closed, db_url, fake_upstream.base_url))
    yield broken
    close_app(broken)


def test_without_redis_authenticated_requests_fail_closed_with_503(
    app_without_redis: Any, make_user: Any
) -> None:
    from auth.tokens import issue_user_tokens

    user = make_user(role="admin")
    user_id, tenant_id, email = user.id, user.tenant_id, user.email
    with app_without_redis.app_context():
        pair = issue_user_tokens(user_id=user_id, tenant_id=tenant_id, role="admin")
    client = app_without_redis.test_client()

    for response in (
        client.get("/v1/auth/me", headers=bearer(pair["access_token"])),
        client.post("/v1/auth/refresh", headers=bearer(pair["refresh_token"])),
        client.get("/v1/tokens", headers=bearer(pair["access_token"])),
        client.post("/v1/auth/login", json={"tenant": "any", "email": email, "password": "x"}),
    ):
        assert response.status_code == 503
        body = response.get_json()
        assert body["code"] == 503 and "Redis" in body["message"]
        assert body["error_code"] == "redis_unavailable"

    # A request without a token is still told to authenticate (no Redis needed to say so).
    assert_auth_error(client.get("/v1/auth/me"), error="")
