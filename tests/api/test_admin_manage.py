"""Admin console: users, tenants, usage and the audit log (SQLite and PostgreSQL).

What an admin notices: users they create can log in with the role they were given; a disabled
user is locked out; operators alone manage tenants and their model allow-lists, and disabling a
tenant locks out everyone in it; usage adds up per tenant, user and day over the range asked;
every admin action appears in the audit log with who, what, target, when and why, and a refused
action leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.admin_helpers import Headers, build_world, start_channel
from tests.support.config import PASSWORD
from tests.support.hub import add_stream_record
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.db

NEW_PASSWORD = "a different horse battery staple"


@pytest.fixture()
def world(app: Any, make_tenant: Any, make_user: Any, auth_headers: Any) -> dict[str, Any]:
    """Two tenants, each with an admin and a member, and an operator in a third."""
    return build_world(make_tenant, make_user, auth_headers)


def login(client: Any, slug: str, email: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/v1/auth/login", json={"tenant": slug, "email": email, "password": password}
    )


def audit(client: Any, headers: Headers, **query: str) -> list[dict[str, Any]]:
    response = client.get("/v1/admin/audit", query_string=query, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json())


# --- users ------------------------------------------------------------------------------------


def test_a_tenant_admin_creates_a_user_who_can_then_log_in(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]
    response = client.post(
        "/v1/admin/users",
        json={"email": "New@Example.com", "password": NEW_PASSWORD, "role": "admin"},
        headers=a["admin_h"],
    )
    assert response.status_code == 201, response.get_json()
    user = response.get_json()
    assert user["email"] == "new@example.com" and user["role"] == "admin"
    assert user["tenant_id"] == a["tenant"].id and user["disabled"] is False
    assert "password" not in user and "password_hash" not in user
    assert login(client, a["tenant"].slug, "new@example.com", NEW_PASSWORD).status_code == 200

    again = client.post(
        "/v1/admin/users",
        json={"email": "new@example.com", "password": NEW_PASSWORD},
        headers=a["admin_h"],
    )
    assert again.status_code == 409
    [event] = audit(client, a["admin_h"], action="user.create")
    assert event["target_id"] == user["id"] and event["actor_id"] == a["admin"].id
    assert event["actor_email"] == a["admin"].email and event["details"] == {"role": "admin"}


def test_nobody_makes_an_operator_through_the_api(client: Any, world: dict[str, Any]) -> None:
    for headers in (world["a"]["admin_h"], world["operator_h"]):
        response = client.post(
            "/v1/admin/users",
            json={
                "email": "op@example.com",
                "password": NEW_PASSWORD,
                "role": "operator",
                "tenant_id": world["a"]["tenant"].id,
            },
            headers=headers,
        )
        assert response.status_code == 403
        promote = client.patch(
            f"/v1/admin/users/{world['a']['member'].id}", json={"role": "operator"}, headers=headers
        )
        assert promote.status_code == 403
    assert audit(client, world["operator_h"], action="user.create") == []


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": NEW_PASSWORD},
        {"email": "x@example.com", "password": "short"},
        {"email": "x@example.com"},
        {"email": "x@exa\u0000mple.com", "password": NEW_PASSWORD},
        {"email": "x@example.com", "password": NEW_PASSWORD, "role": "boss"},
    ],
)
def test_bad_user_input_is_a_422_and_writes_nothing(
    client: Any, world: dict[str, Any], body: dict[str, Any]
) -> None:
    response = client.post("/v1/admin/users", json=body, headers=world["a"]["admin_h"])
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["errors"]
    assert audit(client, world["a"]["admin_h"]) == []


def test_an_operator_creates_users_in_a_named_tenant(client: Any, world: dict[str, Any]) -> None:
    b = world["b"]
    response = client.post(
        "/v1/admin/users",
        json={"email": "x@example.com", "password": NEW_PASSWORD, "tenant_id": b["tenant"].id},
        headers=world["operator_h"],
    )
    assert response.status_code == 201 and response.get_json()["tenant_id"] == b["tenant"].id


def test_users_are_listed_per_tenant_and_paginated(client: Any, world: dict[str, Any]) -> None:
    a = world["a"]
    for i in range(3):
        client.post(
            "/v1/admin/users",
            json={"email": f"u{i}@example.com", "password": NEW_PASSWORD},
            headers=a["admin_h"],
        )
    response = client.get("/v1/admin/users", query_string={"page_size": 2}, headers=a["admin_h"])
    assert response.status_code == 200
    assert len(response.get_json()) == 2
    assert '"total": 5' in response.headers["X-Pagination"]
    second = client.get(
        "/v1/admin/users", query_string={"page_size": 2, "page": 3}, headers=a["admin_h"]
    )
    assert len(second.get_json()) == 1
    everyone = client.get(
        "/v1/admin/users", query_string={"page_size": 100}, headers=a["admin_h"]
    ).get_json()
    assert {u["tenant_id"] for u in everyone} == {a["tenant"].id}
    admins = client.get(
        "/v1/admin/users", query_string={"role": "admin"}, headers=a["admin_h"]
    ).get_json()
    assert [u["id"] for u in admins] == [a["admin"].id]
    all_tenants = client.get(
        "/v1/admin/users", query_string={"page_size": 100}, headers=world["operator_h"]
    ).get_json()
    assert len(all_tenants) == 8  # 5 in a, 2 in b, the operator
    only_b = client.get(
        "/v1/admin/users",
        query_string={"tenant": world["b"]["tenant"].id},
        headers=world["operator_h"],
    ).get_json()
    assert {u["id"] for u in only_b} == {world["b"]["admin"].id, world["b"]["member"].id}


def test_setting_a_role_and_disabling_and_enabling_a_user(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]
    member = a["member"]
    response = client.patch(
        f"/v1/admin/users/{member.id}",
        json={"role": "admin", "reason": "promoted"},
        headers=a["admin_h"],
    )
    assert response.status_code == 200 and response.get_json()["role"] == "admin"
    assert (
        client.get(f"/v1/admin/users/{member.id}", headers=a["admin_h"]).get_json()["role"]
        == "admin"
    )

    response = client.patch(
        f"/v1/admin/users/{member.id}",
        json={"disabled": True, "reason": "left"},
        headers=a["admin_h"],
    )
    assert response.status_code == 200 and response.get_json()["disabled"] is True
    assert client.get("/v1/auth/me", headers=a["member_h"]).status_code == 401
    assert login(client, a["tenant"].slug, member.email).status_code == 401

    response = client.patch(
        f"/v1/admin/users/{member.id}", json={"disabled": False}, headers=a["admin_h"]
    )
    assert response.get_json()["disabled"] is False
    assert login(client, a["tenant"].slug, member.email).status_code == 200
    assert (
        client.get("/v1/auth/me", headers=a["member_h"]).status_code == 401
    )  # old tokens stay dead

    actions = [(e["action"], e["reason"]) for e in audit(client, a["admin_h"], target_id=member.id)]
    assert actions == [
        ("user.enable", None),
        ("user.disable", "left"),
        ("user.set_role", "promoted"),
    ]


def test_an_update_must_change_something_and_an_admin_cannot_demote_themselves(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]

    def patch(user: Any, body: dict[str, Any]) -> int:
        """The status of the tenant admin's PATCH of ``user`` with ``body``."""
        url = f"/v1/admin/users/{user.id}"
        return int(client.patch(url, json=body, headers=a["admin_h"]).status_code)

    assert patch(a["member"], {"reason": "x"}) == 422
    assert patch(a["admin"], {"role": "member"}) == 409
    assert patch(a["admin"], {"disabled": True}) == 409


def test_a_tenant_admin_cannot_touch_an_operator_in_their_tenant(
    client: Any,
    world: dict[str, Any],
    make_user: Callable[..., Any],
) -> None:
    from auth.models import Tenant
    from core.store import db

    tenant = db.session.get(Tenant, world["operator"].tenant_id)
    local_admin = make_user(tenant, role="admin")
    headers = user_headers(local_admin)
    op = world["operator"].id
    assert client.get(f"/v1/admin/users/{op}", headers=headers).status_code == 200
    assert (
        client.patch(f"/v1/admin/users/{op}", json={"role": "member"}, headers=headers).status_code
        == 403
    )
    assert client.post(f"/v1/admin/users/{op}/revoke", json={}, headers=headers).status_code == 403
    assert client.get("/v1/auth/me", headers=world["operator_h"]).status_code == 200


# --- tenants ----------------------------------------------------------------------------------


def test_an_operator_creates_a_tenant_and_its_first_admin(
    client: Any, world: dict[str, Any]
) -> None:
    op = world["operator_h"]
    response = client.post("/v1/admin/tenants", json={"slug": "acme", "name": "Acme"}, headers=op)
    assert response.status_code == 201, response.get_json()
    tenant = response.get_json()
    assert (
        tenant["slug"] == "acme"
        and tenant["allowed_models"] == ["fake-model"]
        and not tenant["disabled"]
    )
    assert (
        client.post(
            "/v1/admin/tenants", json={"slug": "acme", "name": "Again"}, headers=op
        ).status_code
        == 409
    )
    assert (
        client.post(
            "/v1/admin/tenants", json={"slug": "Not A Slug!", "name": "X"}, headers=op
        ).status_code
        == 422
    )

    admin = client.post(
        "/v1/admin/users",
        json={
            "email": "boss@acme.test",
            "password": NEW_PASSWORD,
            "role": "admin",
            "tenant_id": tenant["id"],
        },
        headers=op,
    )
    assert admin.status_code == 201
    assert login(client, "acme", "boss@acme.test", NEW_PASSWORD).status_code == 200
    assert client.get(f"/v1/admin/tenants/{tenant['id']}", headers=op).get_json()["name"] == "Acme"
    listed = client.get("/v1/admin/tenants", query_string={"page_size": 100}, headers=op).get_json()
    assert tenant["id"] in {t["id"] for t in listed} and len(listed) == 4
    assert [e["action"] for e in audit(client, op, tenant=tenant["id"])] == [
        "user.create",
        "tenant.create",
    ]


def test_the_model_allow_list_decides_what_a_tenant_may_use(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]
    response = client.patch(
        f"/v1/admin/tenants/{a['tenant'].id}",
        json={"allowed_models": ["other-model"]},
        headers=world["operator_h"],
    )
    assert response.status_code == 200 and response.get_json()["allowed_models"] == ["other-model"]
    models = client.get("/v1/models", headers=a["member_h"]).get_json()
    assert [m["id"] for m in models["data"]] == ["other-model"]
    refused = client.post(
        "/v1/streams",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
        headers=a["member_h"],
    )
    assert refused.status_code == 404
    assert (
        client.patch(
            f"/v1/admin/tenants/{a['tenant'].id}",
            json={"allowed_models": []},
            headers=world["operator_h"],
        ).status_code
        == 422
    )
    [event] = audit(client, world["operator_h"], action="tenant.set_models")
    assert event["details"] == {"from": ["fake-model"], "to": ["other-model"]}


def test_disabling_a_tenant_locks_out_everyone_in_it_and_revokes_its_streams(
    client: Any, app_services: Any, world: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    a, b = world["a"], world["b"]
    stream_id = start_channel(client, a["member_h"], max_tokens=200)
    other = start_channel(client, b["member_h"], max_tokens=200)
    response = client.patch(
        f"/v1/admin/tenants/{a['tenant'].id}",
        json={"disabled": True, "reason": "unpaid"},
        headers=world["operator_h"],
    )
    assert response.status_code == 200 and response.get_json()["disabled"] is True
    for headers in (a["admin_h"], a["member_h"]):
        assert client.get("/v1/auth/me", headers=headers).status_code == 401
    assert login(client, a["tenant"].slug, a["member"].email).status_code == 401
    assert fake_upstream.wait_for(lambda s: s["disconnects"] >= 1, timeout=15)
    wait_until(lambda: stream_id not in set(redis.zrange("sg:live", 0, -1)))
    assert redis.hget(f"sg:st:{stream_id}", "status") == "revoked"
    assert redis.hget(f"sg:st:{other}", "status") == "running"
    assert client.get("/v1/auth/me", headers=b["member_h"]).status_code == 200
    [event] = audit(client, world["operator_h"], action="tenant.disable")
    assert event["reason"] == "unpaid" and event["details"] == {"streams": [stream_id]}

    response = client.patch(
        f"/v1/admin/tenants/{a['tenant'].id}", json={"disabled": False}, headers=world["operator_h"]
    )
    assert response.get_json()["disabled"] is False
    assert login(client, a["tenant"].slug, a["member"].email).status_code == 200
    client.delete(f"/v1/streams/{other}", headers=b["member_h"])


def test_an_operator_cannot_disable_their_own_tenant(client: Any, world: dict[str, Any]) -> None:
    response = client.patch(
        f"/v1/admin/tenants/{world['operator'].tenant_id}",
        json={"disabled": True},
        headers=world["operator_h"],
    )
    assert response.status_code == 409
    assert client.get("/v1/auth/me", headers=world["operator_h"]).status_code == 200


# --- usage ------------------------------------------------------------------------------------


def add_record(
    tenant_id: str, user_id: str, when: datetime, prompt: int, completion: int, **columns: Any
) -> None:
    """A stream record started at ``when`` with these token counts (``columns``: ``status=``)."""
    from core.store import db

    add_stream_record(
        tenant_id,
        user_id,
        created_at=when,
        started_at=when,
        prompt_tokens=prompt,
        completion_tokens=completion,
        **columns,
    )
    db.session.commit()


@pytest.fixture()
def history(world: dict[str, Any]) -> dict[str, Any]:
    """Stream records over three days in two tenants."""
    a, b = world["a"], world["b"]
    d1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    d2, d3 = d1 + timedelta(days=1), d1 + timedelta(days=2)
    add_record(a["tenant"].id, a["member"].id, d1, 10, 100)
    add_record(
        a["tenant"].id, a["member"].id, d1 + timedelta(hours=13, minutes=59), 5, 50
    )  # 23:59 UTC
    add_record(a["tenant"].id, a["admin"].id, d2, 1, 2, status="revoked")
    add_record(a["tenant"].id, a["member"].id, d3, 1000, 1000)  # outside the range asked below
    add_record(b["tenant"].id, b["member"].id, d1, 7, 7)
    return {"from": "2026-03-01", "to": "2026-03-03"}


def usage(client: Any, headers: Headers, **query: Any) -> Any:
    return client.get("/v1/admin/usage", query_string={"page_size": 100, **query}, headers=headers)


def test_usage_per_tenant_user_and_day(
    client: Any, world: dict[str, Any], history: dict[str, Any]
) -> None:
    a, b = world["a"], world["b"]
    rng = {"from": history["from"], "to": history["to"]}
    response = usage(client, a["admin_h"], **rng)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == [
        {
            "tenant_id": a["tenant"].id,
            "streams": 3,
            "prompt_tokens": 16,
            "completion_tokens": 152,
            "total_tokens": 168,
        }
    ]

    by_user = usage(client, a["admin_h"], group_by="user", **rng).get_json()
    assert sorted(
        (r["user_id"], r["user_email"], r["streams"], r["total_tokens"]) for r in by_user
    ) == sorted(
        [(a["member"].id, a["member"].email, 2, 165), (a["admin"].id, a["admin"].email, 1, 3)]
    )

    by_day = usage(client, a["admin_h"], group_by="day", **rng).get_json()
    assert [(r["day"], r["streams"], r["total_tokens"]) for r in by_day] == [
        ("2026-03-01", 2, 165),
        ("2026-03-02", 1, 3),
    ]
    one_user = usage(client, a["admin_h"], group_by="day", user=a["admin"].id, **rng).get_json()
    assert [(r["day"], r["streams"]) for r in one_user] == [("2026-03-02", 1)]

    everyone = usage(client, world["operator_h"], **rng).get_json()
    assert {r["tenant_id"]: r["streams"] for r in everyone} == {
        a["tenant"].id: 3,
        b["tenant"].id: 1,
    }
    only_b = usage(
        client, world["operator_h"], group_by="day", tenant=b["tenant"].id, **rng
    ).get_json()
    assert [(r["tenant_id"], r["day"], r["total_tokens"]) for r in only_b] == [
        (b["tenant"].id, "2026-03-01", 14)
    ]


def test_usage_ranges_are_half_open_and_validated(
    client: Any, world: dict[str, Any], history: dict[str, Any]
) -> None:
    h = world["a"]["admin_h"]
    one_day = usage(client, h, **{"from": "2026-03-01", "to": "2026-03-02"}).get_json()
    assert one_day[0]["streams"] == 2
    at_time = usage(
        client, h, **{"from": "2026-03-01T23:00:00Z", "to": "2026-03-02T00:00:00+00:00"}
    ).get_json()
    assert at_time[0]["streams"] == 1
    assert usage(client, h, **{"from": "2026-03-01", "to": "2026-03-01"}).status_code == 422
    assert usage(client, h, **{"from": "yesterday"}).status_code == 422
    assert usage(client, h, group_by="week").status_code == 422
    assert usage(client, h, **{"from": "2020-01-01", "to": "2026-01-01"}).status_code == 422
    assert usage(client, h).get_json() == []  # the default range (the last 30 days) has nothing


# --- audit ------------------------------------------------------------------------------------


def test_the_audit_log_is_newest_first_paginated_filtered_and_per_tenant(
    client: Any, world: dict[str, Any]
) -> None:
    a, b = world["a"], world["b"]
    for i in range(3):
        client.post(
            "/v1/admin/users",
            json={"email": f"u{i}@example.com", "password": NEW_PASSWORD},
            headers=a["admin_h"],
        )
    client.post(
        "/v1/admin/users",
        json={"email": "z@example.com", "password": NEW_PASSWORD},
        headers=b["admin_h"],
    )
    client.patch(
        f"/v1/admin/users/{a['member'].id}",
        json={"role": "admin", "reason": "why not"},
        headers=a["admin_h"],
    )

    response = client.get("/v1/admin/audit", query_string={"page_size": 2}, headers=a["admin_h"])
    assert response.status_code == 200
    page = response.get_json()
    assert [e["action"] for e in page] == ["user.set_role", "user.create"]
    assert '"total": 4' in response.headers["X-Pagination"]
    newest = page[0]
    assert newest["actor_id"] == a["admin"].id and newest["target_type"] == "user"
    assert newest["target_id"] == a["member"].id and newest["reason"] == "why not"
    assert newest["tenant_id"] == a["tenant"].id and newest["created_at"]
    assert {e["tenant_id"] for e in audit(client, a["admin_h"], page_size="100")} == {
        a["tenant"].id
    }
    assert len(audit(client, world["operator_h"], page_size="100")) == 5
    assert len(audit(client, world["operator_h"], tenant=b["tenant"].id)) == 1
    assert len(audit(client, a["admin_h"], actor=a["admin"].id, action="user.create")) == 3
    assert audit(client, a["admin_h"], **{"from": "2000-01-01", "to": "2000-01-02"}) == []


def test_an_audit_row_is_committed_with_its_action_or_not_at_all(
    client: Any, world: dict[str, Any]
) -> None:
    """A refused action (here a duplicate email, caught by the unique index) leaves no audit row."""
    from auth.models import AuditEvent
    from core.store import db

    a = world["a"]
    assert (
        client.post(
            "/v1/admin/users",
            json={"email": a["member"].email, "password": NEW_PASSWORD},
            headers=a["admin_h"],
        ).status_code
        == 409
    )
    db.session.expire_all()
    assert db.session.query(AuditEvent).count() == 0
