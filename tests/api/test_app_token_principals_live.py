"""App tokens are principals of their own, through HTTP on real gunicorn gevent workers.

Two app tokens of one tenant with different ``rpm`` and models are limited independently and
exactly under a concurrent burst; their issuer's own usage does not move; the admin usage report
groups by app token, and by end user (OpenAI's ``user`` field).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.tokens import user_headers

pytestmark = pytest.mark.live

BURST = 12


def _issue(client: httpx.Client, as_admin: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/tokens", json={"scopes": ["chat", "read"], **body}, headers=as_admin
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _chat(model: str, user: str) -> dict[str, Any]:
    return {
        "model": model,
        "stream": False,
        "user": user,
        "messages": [{"role": "user", "content": "hi [[fake tokens=3]]"}],
    }


def test_two_app_tokens_are_limited_independently_and_exactly_and_reported_apart(
    live: Any,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
) -> None:
    tenant = make_tenant(models=["fake-model", "fake-model-b"])
    admin = make_user(tenant, role="admin")
    as_admin = user_headers(admin)
    with live.client() as client:
        before = client.get("/v1/usage", headers=as_admin).json()
        a = _issue(client, as_admin, name="app-a", models=["fake-model"], limits={"rpm": 3})
        b = _issue(client, as_admin, name="app-b", models=["fake-model-b"], limits={"rpm": 5})
        assert (a["models"], a["limits"]) == (["fake-model"], {"rpm": 3})
        as_a = {"Authorization": "Bearer " + a["token"]}
        as_b = {"Authorization": "Bearer " + b["token"]}
        listed = client.get("/v1/models", headers=as_a).json()["data"]
        assert [m["id"] for m in listed] == ["fake-model"]  # its own allow-list
        # Each is held to its own models (a refused request still counts: one of a's three).
        other = client.post("/v1/chat/completions", json=_chat("fake-model-b", "x"), headers=as_a)
        assert other.status_code == 404

        jobs = [(as_a, "fake-model", f"alice-{i % 2}") for i in range(BURST)]
        jobs += [(as_b, "fake-model-b", "carol") for _ in range(BURST)]
        barrier = threading.Barrier(len(jobs))

        def call(job: tuple[dict[str, str], str, str]) -> tuple[str, int]:
            headers, model, user = job
            with live.client() as own:
                barrier.wait()
                response = own.post(
                    "/v1/chat/completions", json=_chat(model, user), headers=headers
                )
            return model, response.status_code

        with ThreadPoolExecutor(len(jobs)) as pool:
            results = Counter(pool.map(call, jobs))

        assert results == {
            ("fake-model", 200): 2,
            ("fake-model", 429): BURST - 2,
            ("fake-model-b", 200): 5,
            ("fake-model-b", 429): BURST - 5,
        }
        after = client.get("/v1/usage", headers=as_admin).json()
        assert after["this_minute"] == before["this_minute"]  # the issuer spent nothing
        assert after["today"] == before["today"]
        own = client.get("/v1/usage", headers=as_a).json()
        assert own["limits"]["user"]["rpm"]["limit"] == 3

        def admin_usage(**query: str) -> list[dict[str, Any]]:
            return list(client.get("/v1/admin/usage", params=query, headers=as_admin).json())

        by_token = admin_usage(group_by="token")
        assert {(r["token_name"], r["streams"]) for r in by_token} == {("app-a", 2), ("app-b", 5)}
        by_end_user = admin_usage(group_by="end_user", token=a["jti"])
        assert sum(r["streams"] for r in by_end_user) == 2
        assert {r["end_user"] for r in by_end_user} <= {"alice-0", "alice-1"}
        carol = admin_usage(group_by="end_user", token=b["jti"])
        assert [(r["end_user"], r["streams"]) for r in carol] == [("carol", 5)]
