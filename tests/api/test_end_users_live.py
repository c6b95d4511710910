"""Per-end-user limits through HTTP on real gunicorn gevent workers.

An app token with ``end_user_limits``: a concurrent burst for end user "alice" admits exactly
her limit (rpm, concurrent streams, tokens per minute) while "bob" of the same app goes on; the
refusals name the end-user limit; nothing a refusal or a cancel touched stays reserved; the app's
own limits still bind its end users together; usage is reported per end user.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.limits_helpers import SLOW, body, estimate
from tests.api.test_limits_live import admitted_and_refused, burst, cancel_all, settled, usage
from tests.support.waiting import fresh_minute

pytestmark = pytest.mark.live

Headers = dict[str, str]
SHORT = body(max_tokens=4, tokens=2)
ROOMY = {"rpm": 1000, "concurrent": 1000}  # the app's own limits, out of the way


@pytest.fixture()
def as_admin(
    live: Any, make_tenant: Callable[..., Any], make_user: Callable[..., Any], auth_headers: Any
) -> Headers:
    return dict(auth_headers(make_user(make_tenant(), role="admin")))


@pytest.fixture()
def issue(live: Any, as_admin: Headers) -> Callable[..., tuple[str, Headers]]:
    """Issue an app token over HTTP (``fields`` as in POST /v1/tokens): its jti and headers."""

    def make(**fields: Any) -> tuple[str, Headers]:
        with live.client() as client:
            made = client.post(
                "/v1/tokens",
                json={"name": "app", "scopes": ["chat", "read"], **fields},
                headers=as_admin,
            )
        assert made.status_code == 201, made.text
        return made.json()["jti"], {"Authorization": "Bearer " + made.json()["token"]}

    return make


def for_user(headers: Headers, users: list[str], request: dict[str, Any]) -> list[Any]:
    """One POST /v1/streams per entry of ``users``, each naming that end user."""
    return [("/v1/streams", headers, {**request, "user": user}) for user in users]


def admitted_per_user(
    requests: list[Any], responses: list[httpx.Response]
) -> Counter[tuple[str, int]]:
    """(end user, status) counts; a direct-mode 200 counts as the 202 of a channel-mode start."""
    return Counter(
        (payload["user"], 202 if response.status_code == 200 else response.status_code)
        for (_, _, payload), response in zip(requests, responses, strict=True)
    )


def burst_per_user(
    live: Any, requests: list[Any], limit: str
) -> tuple[list[httpx.Response], Counter[tuple[str, int]]]:
    """Send ``requests`` at once, each refusal naming ``limit``: the admitted responses and the
    (end user, status) counts."""
    responses = burst([live.url], requests)
    return admitted_and_refused(responses, limit), admitted_per_user(requests, responses)


def test_a_burst_for_alice_admits_exactly_her_rpm_while_bob_goes_on(
    live: Any, issue: Callable[..., tuple[str, Headers]]
) -> None:
    _, headers = issue(limits=ROOMY, end_user_limits={"rpm": 4})
    requests = for_user(headers, ["alice"] * 20 + ["bob"] * 4, SHORT)
    # Half of them through direct mode, where the 429 is in OpenAI's shape.
    requests = [
        ("/v1/chat/completions", h, {**p, "stream": False}) if i % 2 else (path, h, p)
        for i, (path, h, p) in enumerate(requests)
    ]
    responses = burst([live.url], requests)
    admitted_and_refused(responses, "end_user.rpm")
    assert admitted_per_user(requests, responses) == {
        ("alice", 202): 4,
        ("alice", 429): 16,
        ("bob", 202): 4,
    }
    for response in responses:
        if response.status_code == 429:
            message = response.json().get("message") or response.json()["error"]["message"]
            assert "end user 'alice'" in message
            assert 'name="end_user.rpm"' in response.headers["RateLimit-Policy"]


def test_concurrent_streams_per_end_user_are_exact_and_come_back(
    live: Any, issue: Callable[..., tuple[str, Headers]]
) -> None:
    _, headers = issue(limits=ROOMY, end_user_limits={"concurrent": 3})
    requests = for_user(headers, ["alice"] * 15 + ["bob"] * 3, SLOW)
    admitted, per_user = burst_per_user(live, requests, "end_user.concurrent")
    assert per_user == {("alice", 202): 3, ("alice", 429): 12, ("bob", 202): 3}
    assert len(usage(live.url, headers)["open_streams"]) == 6
    cancel_all(live.url, headers, admitted)
    settled(live.url, headers)
    # No lease of alice's leaked: her three places are there again, and only three.
    again = for_user(headers, ["alice"] * 5, SLOW)
    responses = burst([live.url], again)
    assert admitted_per_user(again, responses) == {("alice", 202): 3, ("alice", 429): 2}
    cancel_all(live.url, headers, [r for r in responses if r.status_code == 202])
    settled(live.url, headers)


def test_an_end_users_token_reservations_are_exact_and_released_on_refusal_and_cancel(
    live: Any, issue: Callable[..., tuple[str, Headers]]
) -> None:
    cost = estimate(SLOW)
    _, headers = issue(limits=ROOMY, end_user_limits={"tpm": 3 * cost})
    requests = for_user(headers, ["alice"] * 12 + ["bob"], SLOW)
    fresh_minute(20)  # the whole burst in one tpm window
    admitted, per_user = burst_per_user(live, requests, "end_user.tpm")
    assert per_user == {("alice", 202): 3, ("alice", 429): 9, ("bob", 202): 1}
    # The nine refusals reserved nothing: the app holds exactly the four admitted streams'.
    assert usage(live.url, headers)["today"]["reserved_tokens"] == 4 * cost
    cancel_all(live.url, headers, admitted)
    done = settled(live.url, headers)
    assert done["this_minute"]["reserved_tokens"] == 0
    # Alice's reservations came back (only the few tokens the cancelled runs used are spent).
    with live.client() as client:
        retry = client.post("/v1/streams", json={**SLOW, "user": "alice"}, headers=headers)
        assert retry.status_code == 202, retry.text
        assert client.delete(f"/v1/streams/{retry.json()['id']}", headers=headers).is_success
    settled(live.url, headers)


def test_the_apps_own_limit_binds_its_end_users_together_and_usage_is_per_end_user(
    live: Any, issue: Callable[..., tuple[str, Headers]], as_admin: Headers
) -> None:
    issuer_before = usage(live.url, as_admin)["today"]
    jti, headers = issue(limits={"rpm": 5, "concurrent": 1000}, end_user_limits={"rpm": 3})
    requests = for_user(headers, ["alice", "bob"] * 8, SHORT)
    responses = burst([live.url], requests)
    counts = admitted_per_user(requests, responses)
    # Five in all (the app's rpm), at most three each (their own rpm).
    assert counts[("alice", 202)] + counts[("bob", 202)] == 5
    assert max(counts[("alice", 202)], counts[("bob", 202)]) == 3
    named = {r.json()["errors"]["limit"] for r in responses if r.status_code == 429}
    assert named <= {"user.rpm", "end_user.rpm"} and "user.rpm" in named

    with live.client() as client:
        expected = [
            ("alice", counts[("alice", 202)]),
            ("bob", counts[("bob", 202)]),
        ]
        report = client.get(
            "/v1/admin/usage",
            params={"group_by": "end_user", "token": jti},
            headers=as_admin,
        ).json()
        assert [(r["end_user"], r["streams"]) for r in report] == expected
        own = client.get("/v1/usage", params={"group_by": "end_user"}, headers=headers).json()
        assert sorted((r["end_user"], r["streams"]) for r in own["end_users"]) == expected
    settled(live.url, headers)
    assert usage(live.url, as_admin)["today"] == issuer_before  # the issuer spent nothing
