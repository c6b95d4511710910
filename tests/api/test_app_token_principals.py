"""App tokens as principals in-process: models and limits at issue and by PATCH, the rules for
bad input, and what happens to an app token when its issuer is revoked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.hub import tenant_of
from tests.support.tokens import user_headers


@pytest.fixture()
def admin(make_tenant: Callable[..., Any], make_user: Callable[..., Any]) -> Any:
    return make_user(make_tenant(models=["fake-model", "fake-model-b"]), role="admin")


def _chat(client: Any, token: str, model: str = "fake-model") -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer " + token},
    )


def test_patch_changes_an_app_tokens_models_and_limits_on_its_next_request(
    client: Any, admin: Any
) -> None:
    as_admin = user_headers(admin)
    made = client.post(
        "/v1/tokens", json={"name": "app", "scopes": ["chat", "read"]}, headers=as_admin
    ).get_json()
    assert (made["models"], made["limits"]) == (None, None)
    assert _chat(client, made["token"], "fake-model-b").status_code == 200

    patched = client.patch(
        f"/v1/tokens/{made['jti']}",
        json={"models": ["fake-model"], "limits": {"rpm": 2}},
        headers=as_admin,
    )
    assert patched.status_code == 200
    assert (patched.get_json()["models"], patched.get_json()["limits"]) == (
        ["fake-model"],
        {"rpm": 2},
    )
    # Refused for its model, and counted: with the request made at the old rate, that is the
    # two a minute the new limit allows (GCRA), so the next one is over it.
    assert _chat(client, made["token"], "fake-model-b").status_code == 404
    refused = _chat(client, made["token"])
    assert refused.status_code == 429 and "limit 2" in refused.get_json()["error"]["message"]

    reset = client.patch(f"/v1/tokens/{made['jti']}", json={"limits": None}, headers=as_admin)
    assert reset.get_json()["limits"] is None and reset.get_json()["models"] == ["fake-model"]


def test_bad_models_or_limits_are_a_clear_4xx(
    client: Any,
    admin: Any,
    make_user: Callable[..., Any],
) -> None:
    as_admin = user_headers(admin)
    outsider = user_headers(make_user(role="admin"))
    body = {"name": "app", "scopes": ["chat"]}
    unknown = client.post("/v1/tokens", json={**body, "models": ["gpt-9"]}, headers=as_admin)
    assert unknown.status_code == 400 and unknown.get_json()["error_code"] == "model_not_allowed"
    negative = client.post("/v1/tokens", json={**body, "limits": {"rpm": -1}}, headers=as_admin)
    assert negative.status_code == 422 and "limits" in negative.get_json()["errors"]
    made = client.post("/v1/tokens", json=body, headers=as_admin).get_json()
    extra = client.patch(f"/v1/tokens/{made['jti']}", json={"name": "x"}, headers=as_admin)
    assert extra.status_code == 422
    assert client.patch(f"/v1/tokens/{made['jti']}", json={}).status_code == 401
    assert client.patch(f"/v1/tokens/{made['jti']}", json={}, headers=outsider).status_code == 404


def test_an_app_token_dies_with_its_issuer_and_stays_visible_to_the_other_admins(
    client: Any,
    admin: Any,
    make_user: Callable[..., Any],
) -> None:
    colleague = make_user(tenant_of(admin), role="admin")
    as_admin, as_colleague = user_headers(admin), user_headers(colleague)
    admin_id = admin.id
    made = client.post(
        "/v1/tokens", json={"name": "app", "scopes": ["chat", "read"]}, headers=as_admin
    ).get_json()
    assert _chat(client, made["token"]).status_code == 200

    revoked = client.post(
        f"/v1/admin/users/{admin_id}/revoke", json={"reason": "left"}, headers=as_colleague
    )
    assert revoked.status_code == 202
    assert _chat(client, made["token"]).status_code == 401  # dead with its issuer, not kept
    [row] = client.get("/v1/tokens", headers=as_colleague).get_json()
    assert row["jti"] == made["jti"] and row["owner_id"] == admin_id
    assert row["revoked_at"] is not None  # not silently: the row says so
    audit = client.get(
        "/v1/admin/audit", query_string={"action": "user.revoke"}, headers=as_colleague
    ).get_json()
    assert audit[0]["details"]["app_tokens_revoked"] == [made["jti"]]
