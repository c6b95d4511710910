"""Findings 18.10, 18.12, 18.13 and 18.14 of the security review, through real gunicorn workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.support.live import LiveServer
from tests.support.waiting import wait_until


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def hub_status(client: httpx.Client, params: dict[str, str], headers: dict[str, str]) -> int:
    """The status of GET /v1/events (the connection is closed as soon as it is known)."""
    with client.stream("GET", "/v1/events", params=params, headers=headers) as response:
        return response.status_code


def short_lived_token(user: Any, seconds: int) -> str:
    """An access token of ``user`` that expires in ``seconds`` (current app context)."""
    from flask_jwt_extended import create_access_token

    claims = {
        "tenant": user.tenant_id,
        "role": user.role,
        "scopes": ["chat", "read"],
        "kind": "user",
        "iat_ms": int(time.time() * 1000),
        "ver": 0,
    }
    return str(
        create_access_token(
            identity=user.id, additional_claims=claims, expires_delta=timedelta(seconds=seconds)
        )
    )


def test_a_ticket_is_refused_once_its_token_has_expired(
    live: LiveServer, make_user: Callable[..., Any]
) -> None:
    with live.app.app_context():
        user = make_user()
        token = short_lived_token(user, 3)
        channel = f"users/{user.id}"
    with live.client() as client:
        issued = client.post("/v1/events/tickets", headers=bearer(token), json={"channel": channel})
        assert issued.status_code == 201, issued.text
        ticket = issued.json()["ticket"]
        wait_until(lambda: client.get("/v1/auth/me", headers=bearer(token)).status_code == 401)

        assert hub_status(client, {"channel": channel, "ticket": ticket}, {}) == 401


def test_a_ticket_works_after_a_sign_out_everywhere_and_dies_with_its_session(
    live: LiveServer, make_user: Callable[..., Any]
) -> None:
    from auth import service
    from tests.support.config import PASSWORD
    from tests.support.tokens import tenant_of

    with live.app.app_context():
        user = make_user()
        service.sign_out_everywhere(user.tenant_id, user.id, None)  # token_version is now 1
        body = {"tenant": tenant_of(user).slug, "email": user.email, "password": PASSWORD}
        channel = f"users/{user.id}"
    with live.client() as client:
        access = client.post("/v1/auth/login", json=body).json()["access_token"]

        def ticket() -> str:
            issued = client.post(
                "/v1/events/tickets", headers=bearer(access), json={"channel": channel}
            )
            assert issued.status_code == 201, issued.text
            return str(issued.json()["ticket"])

        assert hub_status(client, {"channel": channel, "ticket": ticket()}, {}) == 200
        unused = ticket()
        assert client.post("/v1/auth/logout", headers=bearer(access)).status_code == 204
        assert hub_status(client, {"channel": channel, "ticket": unused}, {}) == 401


@dataclass
class OperatorAndAdmin:
    """An operator and an admin of one tenant, and a client of the live server."""

    operator_id: str
    operator_headers: dict[str, str]
    admin_headers: dict[str, str]
    client: httpx.Client


@pytest.fixture()
def operator_and_admin(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> Iterator[OperatorAndAdmin]:
    with live.app.app_context(), live.client() as client:
        tenant = make_tenant()
        operator = make_user(tenant, role="operator")
        admin = make_user(tenant, role="admin")
        yield OperatorAndAdmin(operator.id, auth_headers(operator), auth_headers(admin), client)


def test_a_tenant_admin_cannot_zero_an_operators_limits(
    operator_and_admin: OperatorAndAdmin,
) -> None:
    both = operator_and_admin
    response = both.client.put(
        f"/v1/admin/users/{both.operator_id}/limits",
        headers=both.admin_headers,
        json={"rpm": 0, "concurrent": 0, "tpm": 0, "tpd": 0},
    )
    assert response.status_code == 403, response.text
    own = both.client.put(
        f"/v1/admin/users/{both.operator_id}/limits", headers=both.operator_headers, json={"rpm": 5}
    )
    assert own.status_code == 200, own.text  # an operator still may


def test_a_tenant_admin_cannot_revoke_an_operators_app_token(
    operator_and_admin: OperatorAndAdmin,
) -> None:
    both = operator_and_admin
    created = both.client.post(
        "/v1/tokens", headers=both.operator_headers, json={"name": "ops", "scopes": ["read"]}
    )
    assert created.status_code == 201, created.text
    app = created.json()

    revoke = both.client.delete(f"/v1/tokens/{app['jti']}", headers=both.admin_headers)
    assert revoke.status_code == 403
    assert both.client.get("/v1/auth/me", headers=bearer(app["token"])).status_code == 200


def test_a_tenant_admin_cannot_watch_an_operators_user_channel(
    operator_and_admin: OperatorAndAdmin,
) -> None:
    both = operator_and_admin
    channel = {"channel": f"users/{both.operator_id}"}
    assert hub_status(both.client, channel, both.admin_headers) == 403
    assert hub_status(both.client, channel, both.operator_headers) == 200


@pytest.mark.parametrize("when", ["0001-01-01", "9999-12-31", "0001-01-01T00:00:00+01:00"])
def test_usage_dates_out_of_range_are_a_client_error(
    live: LiveServer,
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
    when: str,
) -> None:
    with live.app.app_context():
        headers = auth_headers(make_user(role="admin"))
    with live.client() as client:
        for param in ("to", "from"):
            response = client.get("/v1/admin/usage", params={param: when}, headers=headers)
            assert response.status_code in {400, 422}, (param, response.status_code, response.text)
            assert "2000-01-01" in response.text


# In-process (the proxy handling and the metrics check are the app's, not gunicorn's): a live
# server with this setting of its own would cost a gunicorn start, and another for the next test.
@pytest.mark.parametrize("app_overrides", [{"TRUSTED_PROXIES": 1}])
def test_behind_a_proxy_metrics_need_the_token(client: Any) -> None:
    # Through a loopback proxy every client is 127.0.0.1 (the test client's address); without a
    # forwarded header the proxy itself would pass a loopback-only check.
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403


def test_readiness_probes_do_not_flood_the_model_server(
    live: LiveServer, fake_upstream: Any
) -> None:
    with live.client() as client:
        before = fake_upstream.snapshot()
        for _ in range(30):
            assert client.get("/readyz").status_code == 200
        after = fake_upstream.snapshot()
    calls = after["connections"] - before["connections"]  # one connection per probe call
    assert calls <= 8, (before, after)  # 2 workers, a cached probe each (a few if slow)
