"""Admin API for limits: who may read and set a tenant's and a user's limits, validation, audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.db

Headers = dict[str, str]
ROUTES = ("/v1/admin/tenants/{tenant}/limits", "/v1/admin/users/{user}/limits")


@pytest.fixture()
def world(
    app: Any,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., Headers],
) -> dict[str, Any]:
    """Two tenants, each with an admin and a member, and an operator."""
    out: dict[str, Any] = {}
    for name in ("acme", "other"):
        tenant = make_tenant(name)
        admin, member = make_user(tenant, role="admin"), make_user(tenant)
        out[name] = {
            "tenant": tenant.id,
            "admin": auth_headers(admin),
            "member_id": member.id,
            "member": auth_headers(member),
        }
    operator = make_user(make_tenant("ops"), role="operator")
    out["operator"] = auth_headers(operator)
    return out


def audit_events(action: str) -> list[Any]:
    from sqlalchemy import select

    from auth.models import AuditEvent
    from core.store import db

    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.mark.parametrize("method", ["get", "put"])
@pytest.mark.parametrize("route", ROUTES)
def test_limits_routes_require_a_token(client: Any, world: Any, route: str, method: str) -> None:
    url = route.format(tenant=world["acme"]["tenant"], user=world["acme"]["member_id"])
    response = getattr(client, method)(url, json={"rpm": 1})
    assert response.status_code == 401
    assert response.get_json()["code"] == 401


@pytest.mark.parametrize("route", ROUTES)
def test_members_may_not_use_the_admin_limits_api(client: Any, world: Any, route: str) -> None:
    url = route.format(tenant=world["acme"]["tenant"], user=world["acme"]["member_id"])
    assert client.get(url, headers=world["acme"]["member"]).status_code == 403
    assert client.put(url, json={"rpm": 1}, headers=world["acme"]["member"]).status_code == 403


def test_a_tenant_admin_reads_but_does_not_set_their_tenants_limits(
    client: Any, world: Any
) -> None:
    acme = world["acme"]
    url = f"/v1/admin/tenants/{acme['tenant']}/limits"
    response = client.get(url, headers=acme["admin"])
    assert response.status_code == 200
    assert response.get_json() == {
        "tenant_id": acme["tenant"],
        "overrides": {},
        "defaults": {"rpm": 1200, "concurrent": 64, "tpm": 1_000_000, "tpd": 20_000_000},
        "effective": {"rpm": 1200, "concurrent": 64, "tpm": 1_000_000, "tpd": 20_000_000},
    }
    refused = client.put(url, json={"rpm": 5}, headers=acme["admin"])
    assert refused.status_code == 403
    assert client.get(url, headers=acme["admin"]).get_json()["overrides"] == {}


def test_another_tenant_is_a_404(client: Any, world: Any) -> None:
    acme, other = world["acme"], world["other"]
    for url in (
        f"/v1/admin/tenants/{other['tenant']}/limits",
        f"/v1/admin/users/{other['member_id']}/limits",
        "/v1/admin/tenants/ten_doesnotexist0000000/limits",
        "/v1/admin/users/usr_doesnotexist0000000/limits",
    ):
        assert client.get(url, headers=acme["admin"]).status_code == 404
        assert client.put(url, json={"rpm": 5}, headers=acme["admin"]).status_code == 404


def test_an_operator_sets_a_tenants_limits_and_it_is_audited(client: Any, world: Any) -> None:
    acme = world["acme"]
    url = f"/v1/admin/tenants/{acme['tenant']}/limits"
    response = client.put(
        url, json={"concurrent": 3, "tpd": 5000, "reason": "trial plan"}, headers=world["operator"]
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["overrides"] == {"concurrent": 3, "tpd": 5000}
    assert body["effective"] == {"rpm": 1200, "concurrent": 3, "tpm": 1_000_000, "tpd": 5000}
    # PUT replaces: what is left out goes back to the default
    again = client.put(url, json={"concurrent": 4, "tpd": None}, headers=world["operator"])
    assert again.get_json()["overrides"] == {"concurrent": 4}
    events = audit_events("tenant.limits.set")
    assert [(e.target_id, e.details) for e in events] == [
        (acme["tenant"], {"before": {}, "after": {"concurrent": 3, "tpd": 5000}}),
        (acme["tenant"], {"before": {"concurrent": 3, "tpd": 5000}, "after": {"concurrent": 4}}),
    ]
    assert events[0].reason == "trial plan"
    # the tenant's members see it in their usage at once
    usage = client.get("/v1/usage", headers=acme["member"]).get_json()
    assert usage["limits"]["tenant"]["concurrent"]["limit"] == 4


def test_a_tenant_admin_sets_a_users_limits(client: Any, world: Any) -> None:
    acme = world["acme"]
    url = f"/v1/admin/users/{acme['member_id']}/limits"
    response = client.put(url, json={"rpm": 10, "tpm": 2000}, headers=acme["admin"])
    assert response.status_code == 200
    assert response.get_json() == {
        "user_id": acme["member_id"],
        "tenant_id": acme["tenant"],
        "overrides": {"rpm": 10, "tpm": 2000},
        "defaults": {"rpm": 120, "concurrent": 8, "tpm": 100_000, "tpd": 2_000_000},
        "effective": {"rpm": 10, "concurrent": 8, "tpm": 2000, "tpd": 2_000_000},
    }
    assert client.get(url, headers=world["operator"]).get_json()["overrides"] == {
        "rpm": 10,
        "tpm": 2000,
    }
    [event] = audit_events("user.limits.set")
    assert event.tenant_id == acme["tenant"] and event.target_id == acme["member_id"]
    usage = client.get("/v1/usage", headers=acme["member"]).get_json()
    assert usage["limits"]["user"]["rpm"]["limit"] == 10
    assert usage["limits"]["user"]["tpm"] == {
        "limit": 2000,
        "used": 0,
        "remaining": 2000,
        "reset": usage["limits"]["user"]["tpm"]["reset"],
    }


@pytest.mark.parametrize(
    "payload",
    [
        {"rpm": -1},
        {"rpm": "10"},
        {"rpm": 1.5},
        {"rpm": True},
        {"burst": 3},
        {"tpd": 10**16},
    ],
    ids=["negative", "string", "float", "bool", "unknown-key", "too-large"],
)
def test_invalid_limits_are_refused_and_nothing_changes(
    client: Any, world: Any, payload: dict[str, Any]
) -> None:
    acme = world["acme"]
    url = f"/v1/admin/users/{acme['member_id']}/limits"
    response = client.put(url, json=payload, headers=acme["admin"])
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == set(payload)
    assert client.get(url, headers=acme["admin"]).get_json()["overrides"] == {}
    assert audit_events("user.limits.set") == []
