"""``Idempotency-Key`` on POST /v1/streams, POST /v1/tokens and non-streaming chat: a retry gets
the first response and starts nothing; another body with the same key is a 422.

In-process app, real Redis and SQL, the fake upstream (which counts the requests it serves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.accounts import member_headers
from tests.support.hub import prompt, tenant_of
from tests.support.tokens import claims_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("app_services")

member = pytest.fixture(member_headers, name="member")  # a new member's bearer headers

DAY_MS = 86_400_000


def _body(tokens: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": prompt(tokens=tokens)}],
        **extra,
    }


def _stream_count(tenant_id: str) -> int:
    from sqlalchemy import func, select

    from core.store import db
    from streaming.models import StreamRecord

    db.session.remove()
    query = select(func.count()).select_from(StreamRecord)
    return int(db.session.scalar(query.where(StreamRecord.tenant_id == tenant_id)) or 0)


def _idle(client: Any, headers: dict[str, str], stream_id: str) -> None:
    wait_until(
        lambda: (
            client.get(f"/v1/streams/{stream_id}", headers=headers).get_json()["status"]
            != "running"
        )
    )


@pytest.mark.db
def test_a_retried_stream_returns_the_first_response_and_starts_nothing(
    client: Any,
    redis: Any,
    fake_upstream: FakeUpstream,
    member: dict[str, str],
) -> None:
    tenant_id = claims_of(member["Authorization"].removeprefix("Bearer "))["tenant"]
    headers = {**member, "Idempotency-Key": "retry-1"}
    first = client.post("/v1/streams", json=_body(), headers=headers)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    _idle(client, headers, first.get_json()["id"])

    again = client.post("/v1/streams", json=_body(), headers=headers)
    assert again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["X-Stream-Id"] == first.headers["X-Stream-Id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _stream_count(tenant_id) == 1
    assert fake_upstream.snapshot()["requests"] == 1
    [key] = redis.keys("sg:idem:*")
    assert DAY_MS - 60_000 < redis.pttl(key) <= DAY_MS  # kept 24 h


def test_the_same_key_with_another_body_is_a_422(
    client: Any,
    member: dict[str, str],
) -> None:
    headers = {**member, "Idempotency-Key": "k-422"}
    assert client.post("/v1/streams", json=_body(5), headers=headers).status_code == 202
    other = client.post("/v1/streams", json=_body(6), headers=headers)
    assert other.status_code == 422
    body = other.get_json()
    assert body["code"] == 422 and body["error_code"] == "idempotency_key_mismatch"
    assert "Idempotency-Key" in body["errors"]


def test_keys_belong_to_their_principal_and_failures_are_not_kept(
    client: Any, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> None:
    alice = make_user()
    bob = make_user(tenant_of(alice))
    key = {"Idempotency-Key": "shared-key"}
    as_alice, as_bob = {**auth_headers(alice), **key}, {**auth_headers(bob), **key}
    a = client.post("/v1/streams", json=_body(), headers=as_alice)
    b = client.post("/v1/streams", json=_body(), headers=as_bob)
    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]
    assert client.post("/v1/streams", json=_body(), headers=as_bob).get_json() == b.get_json()

    carol = {**auth_headers(make_user()), "Idempotency-Key": "fix-and-retry"}
    wrong = client.post("/v1/streams", json={**_body(), "model": "nope"}, headers=carol)
    assert wrong.status_code == 404  # nothing created, nothing kept
    fixed = client.post("/v1/streams", json=_body(), headers=carol)
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\tkey", "é"])
def test_a_malformed_key_is_a_400(
    client: Any,
    member: dict[str, str],
    key: str,
) -> None:
    headers = {**member, "Idempotency-Key": key}
    response = client.post("/v1/streams", json=_body(), headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error_code"] == "invalid_idempotency_key"


def test_a_retried_app_token_issue_returns_the_same_token(
    client: Any, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = {**auth_headers(make_user(role="admin")), "Idempotency-Key": "issue-ci-token"}
    body = {"name": "ci", "scopes": ["chat", "read"]}
    first = client.post("/v1/tokens", json=body, headers=headers)
    again = client.post("/v1/tokens", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    listed = client.get("/v1/tokens", headers=headers).get_json()
    assert [t["jti"] for t in listed] == [first.get_json()["jti"]]


def test_non_streaming_chat_is_replayed_and_streaming_chat_refuses_a_key(
    client: Any,
    fake_upstream: FakeUpstream,
    member: dict[str, str],
) -> None:
    headers = {**member, "Idempotency-Key": "chat-1"}
    first = client.post("/v1/chat/completions", json=_body(stream=False), headers=headers)
    again = client.post("/v1/chat/completions", json=_body(stream=False), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert fake_upstream.snapshot()["requests"] == 1

    streaming = client.post(
        "/v1/chat/completions",
        json=_body(stream=True),
        headers={**headers, "Idempotency-Key": "chat-2"},
    )
    assert streaming.status_code == 400
    assert streaming.get_json()["error"]["code"] == "idempotency_key_unsupported"  # OpenAI shape
