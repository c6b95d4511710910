"""Rate limits and token quotas, in-process against a real Redis and the fake upstream.

What a caller notices: 429s that name the limit with ``Retry-After`` and ``RateLimit-*`` headers,
``RateLimit-*`` on successes, no half-taken limits, leases and reservations that come back after
every way a stream can end, usage that adds up to what the upstream reported, 503 without Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import expected_text, prompt_tokens
from tests.api.limits_helpers import SLOW, body, estimate
from tests.support.config import app_config
from tests.support.processes import free_port
from tests.support.tokens import user_headers
from tests.support.waiting import fresh_minute, wait_until

# The hub and the control bus need this process's dispatcher and keeper (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")

Headers = dict[str, str]


# --- helpers ---------------------------------------------------------------------------------


def upstream_prompt(request: dict[str, Any]) -> int:
    """The prompt tokens the fake upstream reports for ``request``."""
    return prompt_tokens(request["messages"])


def ratelimit_headers(headers: Any) -> dict[str, str]:
    return {k: headers[k] for k in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")}


def settled(get_usage: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Wait until no stream holds a lease or a reservation; return the usage then."""

    def idle() -> dict[str, Any] | None:
        usage = get_usage()
        quiet = not usage["open_streams"] and usage["today"]["reserved_tokens"] == 0
        return usage if quiet and usage["limits"]["tenant"]["concurrent"]["used"] == 0 else None

    return wait_until(idle, timeout=15)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture()
def member(app: Any, make_user: Callable[..., Any]) -> Callable[..., tuple[Any, Headers]]:
    """A user with the given limit overrides and their auth headers."""

    def make(tenant: Any = None, role: str = "member", **limits: int) -> tuple[Any, Headers]:
        user = make_user(tenant, role=role, limits=limits or None)
        return user, user_headers(user)

    return make


def usage_of(client: Any, headers: Headers) -> Callable[[], dict[str, Any]]:
    def get() -> dict[str, Any]:
        response = client.get("/v1/usage", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    return get


def stream_status(client: Any, headers: Headers, stream_id: str) -> dict[str, Any]:
    return client.get(f"/v1/streams/{stream_id}", headers=headers).get_json()


def wait_status(client: Any, headers: Headers, stream_id: str, *statuses: str) -> dict[str, Any]:
    """The stream once it ended with one of ``statuses`` and its record holds the final usage."""

    def ended() -> dict[str, Any] | None:
        now = stream_status(client, headers, stream_id)
        return now if now["status"] in statuses and now["finished_at"] else None

    return wait_until(ended, timeout=15)


# --- 429s --------------------------------------------------------------------------------------


def test_usage_requires_a_token(client: Any) -> None:
    response = client.get("/v1/usage")
    assert response.status_code == 401
    assert response.get_json()["code"] == 401


def test_successful_starts_carry_ratelimit_headers(client: Any, member: Any) -> None:
    _, headers = member(rpm=5)
    first = client.post("/v1/streams", json=body(), headers=headers)
    assert first.status_code == 202
    assert ratelimit_headers(first.headers) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "4",
        "RateLimit-Reset": "12",
    }
    assert 'name="user.rpm"' in first.headers["RateLimit-Policy"]
    chat = client.post("/v1/chat/completions", json={**body(), "stream": False}, headers=headers)
    assert chat.status_code == 200
    assert chat.headers["RateLimit-Remaining"] == "3"


@pytest.mark.parametrize("path", ["/v1/streams", "/v1/chat/completions"])
def test_refused_bodies_count_against_requests_per_minute(
    client: Any, member: Any, path: str
) -> None:
    # A flood of invalid bodies costs the caller a request each, like a flood of valid ones.
    _, headers = member(rpm=3)
    invalid = {**body(), "messages": [{"role": "nobody", "content": "x"}]}
    for _ in range(3):
        refused = client.post(path, json=invalid, headers=headers)
        assert refused.status_code in (400, 422), refused.get_data(as_text=True)
    limited = client.post(path, json=invalid, headers=headers)
    assert limited.status_code == 429, limited.get_data(as_text=True)
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.post(path, json=body(), headers=headers).status_code == 429  # spent


def test_requests_per_minute_refused_with_429_naming_the_limit(client: Any, member: Any) -> None:
    _, headers = member(rpm=2)
    for _ in range(2):
        assert client.post("/v1/streams", json=body(), headers=headers).status_code == 202
    refused = client.post("/v1/streams", json=body(), headers=headers)
    assert refused.status_code == 429
    payload = refused.get_json()
    assert payload["code"] == 429 and payload["status"] == "Too Many Requests"
    assert payload["error_code"] == "rate_limit_exceeded"
    assert payload["errors"]["limit"] == "user.rpm"
    assert payload["errors"]["limit_value"] == 2
    assert payload["message"].startswith(
        "Rate limit reached for requests per minute (RPM) for this user: limit 2. Try again in "
    )
    retry = int(refused.headers["Retry-After"])
    assert 1 <= retry <= 30  # one request back every 30 s at 2 per minute
    assert refused.headers["RateLimit-Limit"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_a_burst_at_the_limit_is_admitted_whatever_the_gateways_clock_says(
    client: Any, member: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests per minute is GCRA: 4 per minute admits a burst of 4. The last one here read the
    # gateway's clock 2 s before its turn came (a wait for a pool connection or the database, on
    # a loaded worker; or another node whose clock is behind): it is still within the limit.
    from streaming.limits import keys

    _, headers = member(rpm=4)
    for _ in range(3):
        assert client.post("/v1/streams", json=body(), headers=headers).status_code == 202
    real = keys.Clock.now
    monkeypatch.setattr(keys.Clock, "now", classmethod(lambda cls: cls(real().now_ms - 2000)))
    assert client.post("/v1/streams", json=body(), headers=headers).status_code == 202
    monkeypatch.setattr(keys.Clock, "now", real)
    refused = client.post("/v1/streams", json=body(), headers=headers)
    assert refused.status_code == 429 and refused.get_json()["errors"]["limit"] == "user.rpm"


def test_chat_completions_refusal_uses_openai_shape(client: Any, member: Any) -> None:
    _, headers = member(concurrent=0)
    refused = client.post("/v1/chat/completions", json={**body(), "stream": True}, headers=headers)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert error["message"] == (
        "Too many concurrent streams for this user: limit 0. Try again when one of them ends."
    )
    assert refused.headers["Retry-After"] == "1"


def test_tenant_limit_binds_across_its_users(
    app: Any, client: Any, member: Any, make_tenant: Callable[..., Any]
) -> None:
    tenant = make_tenant(limits={"concurrent": 1})
    _, alice = member(tenant)
    _, bob = member(tenant)
    running = client.post(
        "/v1/streams", json=body(max_tokens=2000, infinite=1, delay_ms=20), headers=alice
    )
    assert running.status_code == 202
    refused = client.post("/v1/streams", json=body(), headers=bob)
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "tenant.concurrent"
    assert "concurrent streams for this tenant: limit 1" in refused.get_json()["message"]
    stream_id = running.get_json()["id"]
    assert client.delete(f"/v1/streams/{stream_id}", headers=alice).status_code == 202
    settled(usage_of(client, alice))
    assert client.post("/v1/streams", json=body(), headers=bob).status_code == 202


def test_a_refusal_takes_nothing(client: Any, member: Any) -> None:
    running_request = body(max_tokens=2000, infinite=1, delay_ms=20)
    request = body(max_tokens=100)
    _, headers = member(rpm=2, tpm=estimate(running_request) + estimate(request) - 1)
    get_usage = usage_of(client, headers)
    fresh_minute(10)  # the reservation and the refusal in one tpm window
    running = client.post("/v1/streams", json=running_request, headers=headers)
    assert running.status_code == 202
    before = get_usage()
    refused = client.post("/v1/streams", json=request, headers=headers)
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "user.tpm"
    after = get_usage()
    # no lease and no tokens taken...
    for scope in ("user", "tenant"):
        for key in ("concurrent", "tpm", "tpd"):
            assert after["limits"][scope][key]["used"] == before["limits"][scope][key]["used"]
    assert after["open_streams"] == [running.get_json()["id"]]
    assert after["today"]["requests"] == 1
    # ...and no request slot: with 2 per minute, one more start fits once tokens allow it
    stream_id = running.get_json()["id"]
    assert client.delete(f"/v1/streams/{stream_id}", headers=headers).status_code == 202
    settled(get_usage)
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 202
    third = client.post("/v1/streams", json=body(max_tokens=1), headers=headers)
    assert third.status_code == 429 and third.get_json()["errors"]["limit"] == "user.rpm"


def test_a_request_that_can_never_fit_says_so(client: Any, member: Any) -> None:
    request = body(max_tokens=500)
    _, headers = member(tpd=estimate(request) - 1)
    refused = client.post("/v1/streams", json=request, headers=headers)
    assert refused.status_code == 429
    payload = refused.get_json()
    assert payload["errors"]["limit"] == "user.tpd"
    assert payload["message"] == (
        f"Request too large for tokens per day (TPD) for this user: limit {estimate(request) - 1}; "
        f"this request reserves {estimate(request)} tokens (prompt estimate plus max_tokens). "
        "Lower max_tokens."
    )


def test_other_rate_limited_routes_count_requests(client: Any, member: Any) -> None:
    user, headers = member(rpm=2)
    channel = {"channel": f"users/{user.id}"}
    assert client.post("/v1/events/tickets", json=channel, headers=headers).status_code == 201
    assert client.post("/v1/streams", json=body(), headers=headers).status_code == 202
    refused = client.post("/v1/events/tickets", json=channel, headers=headers)
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "user.rpm"
    assert client.post("/v1/streams", json=body(), headers=headers).status_code == 429


# --- leases and reservations come back -----------------------------------------------------------


@pytest.fixture()
def tight(member: Any) -> tuple[Any, Headers, dict[str, Any]]:
    """A user allowed one stream at a time; a leaked lease refuses the next start."""
    request = body(max_tokens=40)
    user, headers = member(concurrent=1)
    return user, headers, request


def assert_reconciled(
    client: Any, headers: Headers, charged: list[dict[str, int]]
) -> dict[str, Any]:
    """No lease, no reservation left; today's usage is exactly what the streams were charged."""
    usage = settled(usage_of(client, headers))
    prompt = sum(c["prompt_tokens"] for c in charged)
    completion = sum(c["completion_tokens"] for c in charged)
    assert usage["today"]["prompt_tokens"] == prompt
    assert usage["today"]["completion_tokens"] == completion
    assert usage["limits"]["user"]["tpd"]["used"] == prompt + completion
    assert usage["limits"]["tenant"]["tpd"]["used"] == prompt + completion
    assert usage["limits"]["user"]["concurrent"]["used"] == 0
    return usage


def start_and_see_tokens(client: Any, headers: Headers, request: dict[str, Any]) -> str:
    started = client.post("/v1/streams", json=request, headers=headers)
    assert started.status_code == 202, started.get_json()
    stream_id = started.get_json()["id"]
    two_tokens = expected_text(2)
    wait_until(
        lambda: (stream_status(client, headers, stream_id)["text"] or "").startswith(two_tokens)
    )
    return stream_id


def test_cancel_releases_lease_and_reconciles(client: Any, tight: Any) -> None:
    _, headers, request = tight
    stream_id = start_and_see_tokens(client, headers, SLOW)
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 429
    assert client.delete(f"/v1/streams/{stream_id}", headers=headers).status_code == 202
    final = wait_status(client, headers, stream_id, "cancelled")
    assert_reconciled(client, headers, [final["usage"]])
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 202


def test_revoke_releases_lease_and_reconciles(app: Any, client: Any, tight: Any) -> None:
    from core.store import get_redis
    from streaming import control

    user, headers, request = tight
    stream_id = start_and_see_tokens(client, headers, SLOW)
    message = control.ControlMessage(
        control.REVOKE_STREAM, stream_id=stream_id, by="usr_admin", reason="test"
    )
    control.send(get_redis(), message, 600)
    final = wait_status(client, headers, stream_id, "revoked")
    assert_reconciled(client, headers, [final["usage"]])
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 202


@pytest.mark.parametrize(
    ("knobs", "emitted"),
    [
        ({"error_after": 3}, 3),
        ({"drop_after": 2}, 2),
        ({"status": 500}, 0),
    ],
    ids=["in-band-error", "dropped", "http-500"],
)
def test_upstream_failure_releases_lease_and_reconciles(
    client: Any, tight: Any, knobs: dict[str, int], emitted: int
) -> None:
    _, headers, request = tight
    started = client.post(
        "/v1/streams", json=body(max_tokens=40, delay_ms=5, **knobs), headers=headers
    )
    assert started.status_code == 202
    final = wait_status(client, headers, started.get_json()["id"], "failed")
    assert final["usage"]["completion_tokens"] == emitted
    assert_reconciled(client, headers, [final["usage"]])
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 202


def test_direct_failure_before_first_token_releases(client: Any, tight: Any) -> None:
    _, headers, request = tight
    failed = client.post(
        "/v1/chat/completions", json={**body(status=503), "stream": True}, headers=headers
    )
    assert failed.status_code == 503
    assert "RateLimit-Limit" in failed.headers
    usage = settled(usage_of(client, headers))
    assert usage["today"]["completion_tokens"] == 0
    assert client.post("/v1/streams", json=request, headers=headers).status_code == 202


def test_a_second_release_gives_nothing_back(app: Any, client: Any, tight: Any) -> None:
    from streaming import state
    from streaming.limits import RedisAdmissionControl

    _, headers, request = tight
    stream_id = start_and_see_tokens(client, headers, SLOW)
    info = json.loads(state.live_status(stream_id)["admission"])
    control = RedisAdmissionControl()
    control.release(info, 7, 3)
    control.release(info, 7, 3)  # e.g. the reaper and the runner both settling it
    usage = usage_of(client, headers)()
    assert usage["today"]["prompt_tokens"] == 7 and usage["today"]["completion_tokens"] == 3
    assert usage["today"]["reserved_tokens"] == 0
    # the runner's own release at the end is a no-op too: the first settlement stands
    assert client.delete(f"/v1/streams/{stream_id}", headers=headers).status_code == 202
    wait_status(client, headers, stream_id, "cancelled")
    assert_reconciled(client, headers, [{"prompt_tokens": 7, "completion_tokens": 3}])


# --- usage adds up to the token ------------------------------------------------------------------


def direct_usage(client: Any, headers: Headers, request: dict[str, Any]) -> dict[str, int]:
    """Run a direct streaming completion with include_usage; the usage chunk it reported."""
    response = client.post(
        "/v1/chat/completions",
        headers=headers,
        json={**request, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    frames = [
        line[6:]
        for line in response.get_data(as_text=True).split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    usage = [json.loads(f)["usage"] for f in frames if json.loads(f).get("usage")]
    assert len(usage) == 1
    return usage[0]


def test_usage_equals_what_the_upstream_reported(client: Any, member: Any) -> None:
    _, headers = member()
    charged: list[dict[str, int]] = []
    # completed, direct and channel: the upstream's own usage, to the token
    for tokens, text in ((5, "one two three"), (9, "a somewhat longer prompt with more words")):
        request = body(text=text, max_tokens=100, tokens=tokens)
        reported = direct_usage(client, headers, request)
        assert reported == {
            "prompt_tokens": upstream_prompt(request),
            "completion_tokens": tokens,
            "total_tokens": upstream_prompt(request) + tokens,
        }
        charged.append(reported)
    request = body(text="channel mode", max_tokens=100, tokens=7)
    started = client.post("/v1/streams", json=request, headers=headers).get_json()
    completed = wait_status(client, headers, started["id"], "completed")
    assert completed["usage"]["prompt_tokens"] == upstream_prompt(request)
    assert completed["usage"]["completion_tokens"] == 7
    charged.append(completed["usage"])
    # failed after 4 tokens: the 4 tokens it emitted
    started = client.post("/v1/streams", json=body(max_tokens=100, error_after=4), headers=headers)
    failed = wait_status(client, headers, started.get_json()["id"], "failed")
    assert failed["usage"]["completion_tokens"] == 4
    charged.append(failed["usage"])
    # cancelled mid-stream: the tokens emitted before the cancel
    stream_id = start_and_see_tokens(client, headers, SLOW)
    client.delete(f"/v1/streams/{stream_id}", headers=headers)
    cancelled = wait_status(client, headers, stream_id, "cancelled")
    text = stream_status(client, headers, stream_id)["text"]
    emitted = next(n for n in range(200) if expected_text(n) == text)
    assert cancelled["usage"]["completion_tokens"] == emitted >= 2
    charged.append(cancelled["usage"])
    usage = assert_reconciled(client, headers, charged)
    assert usage["today"]["requests"] == 5
    assert usage["today"]["total_tokens"] == sum(
        c["prompt_tokens"] + c["completion_tokens"] for c in charged
    )


# --- limits change at once -----------------------------------------------------------------------


def test_new_limits_apply_to_the_next_request(
    client: Any, member: Any, make_tenant: Callable[..., Any]
) -> None:
    tenant = make_tenant()
    _, admin = member(tenant, role="admin")
    user, headers = member(tenant)
    user_id = user.id
    running = client.post("/v1/streams", json=SLOW, headers=headers)
    assert running.status_code == 202  # this user's limits (the defaults) are now cached
    changed = client.put(f"/v1/admin/users/{user_id}/limits", json={"concurrent": 1}, headers=admin)
    assert changed.status_code == 200
    refused = client.post("/v1/streams", json=body(), headers=headers)
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "user.concurrent"
    reset = client.put(f"/v1/admin/users/{user_id}/limits", json={}, headers=admin)
    assert reset.status_code == 200
    assert client.post("/v1/streams", json=body(), headers=headers).status_code == 202
    stream_id = running.get_json()["id"]
    assert client.delete(f"/v1/streams/{stream_id}", headers=headers).status_code == 202
    settled(usage_of(client, headers))


# --- Redis unavailable -------------------------------------------------------------------------


@pytest.fixture()
def redis_refusing_writes(redis: Any) -> Any:
    """Redis answers reads (token checks pass) but refuses writes: a master demoted to a replica
    by a failover, as clients still pointed at it see it."""
    redis.replicaof("127.0.0.1", str(free_port()))
    try:
        yield redis
    finally:
        redis.replicaof("NO", "ONE")


def test_admission_fails_closed_with_503(
    app: Any, client: Any, member: Any, redis_refusing_writes: Any
) -> None:
    _, headers = member()
    refused = client.post("/v1/streams", json=body(), headers=headers)
    assert refused.status_code == 503
    assert refused.get_json()["error_code"] == "limits_unavailable"
    assert refused.headers["Retry-After"] == "1"
    chat = client.post("/v1/chat/completions", json={**body(), "stream": True}, headers=headers)
    assert chat.status_code == 503
    assert "Redis is unavailable" in chat.get_json()["error"]["message"]
    listing = client.get("/v1/streams", headers=headers)  # limited by request rate alone
    assert listing.status_code == 503
    assert listing.get_json()["error_code"] == "limits_unavailable"


def test_fail_open_lets_only_the_request_rate_pass(
    app: Any, client: Any, member: Any, redis_refusing_writes: Any
) -> None:
    app.config["REDIS_FAIL_OPEN_RATE_LIMITS"] = True
    _, headers = member()
    # a route limited by request rate alone passes, uncounted
    listing = client.get("/v1/streams", headers=headers)
    assert listing.status_code == 200
    assert "RateLimit-Limit" not in listing.headers
    # a generation needs its lease and token reservation: still refused
    refused = client.post("/v1/streams", json=body(), headers=headers)
    assert refused.status_code == 503
    assert refused.get_json()["error_code"] == "limits_unavailable"


def test_redis_down_fails_closed_even_with_fail_open(
    db_url: str,
    fake_upstream: Any,
    app: Any,
    make_user: Callable[..., Any],
) -> None:
    from api import create_app

    user = make_user()
    headers = user_headers(user)
    dead = create_app(
        app_config(
            f"redis://127.0.0.1:{free_port()}/0",
            db_url,
            fake_upstream.base_url,
            REDIS_FAIL_OPEN_RATE_LIMITS=True,
        )
    )
    response = dead.test_client().post("/v1/streams", json=body(), headers=headers)
    assert response.status_code == 503
    assert "Redis" in response.get_json()["message"]
    dead.extensions["streamgate.redis"].close()


# --- a run stopped before the model server said what its prompt cost --------------------------

LONG_PROMPT = "a " * 4000  # 4,003 prompt tokens at the fake upstream; Streamgate estimates 2,006
LONG_SLOW = body(LONG_PROMPT, max_tokens=2000, infinite=1, delay_ms=20)


def _ended(client: Any, headers: Headers, stream_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        record = client.get(f"/v1/streams/{stream_id}", headers=headers).get_json()
        return record if record["status"] != "running" else None

    return dict(wait_until(done, timeout=30))


def _cancelled_long_prompt(client: Any, headers: Headers, fake_upstream: Any) -> dict[str, Any]:
    started = client.post("/v1/streams", json=LONG_SLOW, headers=headers).get_json()
    # Stopped while the model server generates, long before the usage it sends at the end.
    wait_until(lambda: fake_upstream.snapshot()["active"] >= 1)
    cancel = client.delete(f"/v1/streams/{started['id']}", headers=headers)
    assert cancel.status_code == 202, cancel.get_data(as_text=True)
    return _ended(client, headers, started["id"])


def test_a_stopped_run_is_charged_what_its_prompt_cost_a_completed_one(
    client: Any, member: Any, fake_upstream: Any
) -> None:
    _, headers = member()
    done = client.post("/v1/streams", json=body(LONG_PROMPT, max_tokens=3), headers=headers)
    completed = _ended(client, headers, done.get_json()["id"])
    assert completed["status"] == "completed"
    assert completed["usage"]["prompt_tokens"] == 4003  # what the model server reported

    cancelled = _cancelled_long_prompt(client, headers, fake_upstream)
    assert cancelled["status"] == "cancelled"
    # Before: 2,006 (Streamgate's own chars/4 estimate), half of what the prompt cost.
    assert cancelled["usage"]["prompt_tokens"] >= completed["usage"]["prompt_tokens"]


@pytest.mark.parametrize("app_overrides", [{"LLM_CONTINUOUS_USAGE_STATS": True}])
def test_with_continuous_usage_a_stopped_run_is_charged_the_reported_prompt(
    client: Any, member: Any, fake_upstream: Any
) -> None:
    _, headers = member()
    cancelled = _cancelled_long_prompt(client, headers, fake_upstream)  # no ratio learned yet
    assert cancelled["usage"]["prompt_tokens"] == upstream_prompt(LONG_SLOW)
    # And a direct-mode client that did not ask for usage still sees none on its chunks.
    chat = client.post(
        "/v1/chat/completions", json={**body(max_tokens=3), "stream": True}, headers=headers
    )
    frames = [
        line for line in chat.get_data(as_text=True).splitlines() if line.startswith("data: {")
    ]
    assert frames and not any('"usage"' in line for line in frames)
