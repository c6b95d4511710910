"""Per-end-user limits in-process: the OpenAI ``user`` field is validated and recorded, an app
token's ``end_user_limits`` are set at issue and by PATCH (and audited), each end user is held to
them apart from the others, a refusal and a cancel leave nothing reserved, and a request without
an end user (or from an app without end-user limits) touches no end-user key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from marshmallow import ValidationError

from api.schemas.chat import END_USER_MAX, ChatRequestSchema
from tests.api.chat_helpers import finished_record
from tests.api.limits_helpers import SLOW, body, estimate
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("app_services")

Headers = dict[str, str]


# --- the `user` field: unit tests of the schema ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["alice", "end-user-42", "auth0|5f1c", "a.b+tag@example.com", "sha256:ab/CD=", "x" * 128, ""],
)
def test_plain_end_user_ids_are_accepted(app: Any, value: str) -> None:
    request = {**body(), "user": value}
    assert ChatRequestSchema().load(request)["user"] == value


@pytest.mark.parametrize(
    "value",
    ["x" * (END_USER_MAX + 1), "alice smith", "a\nb", "a\x00b", "{t:x}", "zoë", "a;b", 42],
)
def test_other_end_user_values_are_refused(app: Any, value: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        ChatRequestSchema().load({**body(), "user": value})
    assert "user" in refused.value.messages


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture()
def admin(make_tenant: Callable[..., Any], make_user: Callable[..., Any]) -> Any:
    return make_user(make_tenant(), role="admin")


@pytest.fixture()
def as_admin(admin: Any, auth_headers: Callable[..., Headers]) -> Headers:
    return auth_headers(admin)


@pytest.fixture()
def issue(client: Any, as_admin: Headers) -> Callable[..., tuple[dict[str, Any], Headers]]:
    """Issue an app token (``fields`` as in POST /v1/tokens); its row and its bearer headers."""

    def make(**fields: Any) -> tuple[dict[str, Any], Headers]:
        made = client.post(
            "/v1/tokens",
            json={"name": "app", "scopes": ["chat", "read"], **fields},
            headers=as_admin,
        )
        assert made.status_code == 201, made.get_json()
        return made.get_json(), {"Authorization": "Bearer " + made.get_json()["token"]}

    return make


def start(client: Any, headers: Headers, user: str, request: dict[str, Any] | None = None) -> Any:
    return client.post("/v1/streams", json={**(request or body()), "user": user}, headers=headers)


def end_user_keys(redis: Any) -> list[str]:
    return sorted(redis.scan_iter(match="sg:lim:*:eu:*"))


# --- validation through HTTP -------------------------------------------------------------------


def test_a_bad_user_is_a_4xx_in_each_routes_envelope_and_starts_nothing(
    client: Any, issue: Any, fake_upstream: Any
) -> None:
    _, headers = issue(end_user_limits={"rpm": 5})
    before = fake_upstream.snapshot()["requests"]
    chat = client.post(
        "/v1/chat/completions", json={**body(), "user": "alice smith"}, headers=headers
    )
    assert chat.status_code in (400, 422)
    assert chat.get_json()["error"]["param"] == "user"  # OpenAI's shape
    streams = start(client, headers, "a" * (END_USER_MAX + 1))
    assert streams.status_code in (400, 422)
    assert "user" in streams.get_json()["errors"]
    assert fake_upstream.snapshot()["requests"] == before


def test_the_end_user_is_recorded_and_forwarded(
    client: Any, issue: Any, fake_upstream: Any
) -> None:
    from core.store import db
    from streaming.models import StreamRecord

    _, headers = issue()
    made = client.post(
        "/v1/chat/completions", json={**body(), "user": "auth0|5f1c"}, headers=headers
    )
    assert made.status_code == 200, made.get_json()
    record = db.session.get(StreamRecord, made.headers["X-Stream-Id"])
    assert record is not None and record.end_user == "auth0|5f1c"
    assert fake_upstream.stats.last_body["user"] == "auth0|5f1c"  # still forwarded


# --- end_user_limits on the token --------------------------------------------------------------


def test_end_user_limits_are_set_at_issue_and_by_patch_and_audited(
    client: Any, as_admin: Headers, issue: Any
) -> None:
    made, _ = issue(end_user_limits={"rpm": 10, "tpd": None})
    assert made["end_user_limits"] == {"rpm": 10}
    patched = client.patch(
        f"/v1/tokens/{made['jti']}",
        json={"end_user_limits": {"concurrent": 2, "tpm": 5000}},
        headers=as_admin,
    )
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["end_user_limits"] == {"concurrent": 2, "tpm": 5000}
    assert patched.get_json()["limits"] is None  # left out: unchanged
    listed = client.get("/v1/tokens", headers=as_admin).get_json()
    assert listed[0]["end_user_limits"] == {"concurrent": 2, "tpm": 5000}

    audit = client.get(
        "/v1/admin/audit", query_string={"target_id": made["jti"]}, headers=as_admin
    ).get_json()
    by_action = {event["action"]: event["details"] for event in audit}
    assert by_action["app_token.create"]["end_user_limits"] == {"rpm": 10}
    assert by_action["app_token.update"]["before"]["end_user_limits"] == {"rpm": 10}
    assert by_action["app_token.update"]["after"]["end_user_limits"] == {
        "concurrent": 2,
        "tpm": 5000,
    }
    reset = client.patch(
        f"/v1/tokens/{made['jti']}", json={"end_user_limits": None}, headers=as_admin
    )
    assert reset.get_json()["end_user_limits"] is None


@pytest.mark.parametrize(
    "bad", [{"rpm": -1}, {"rpm": "10"}, {"rpm": 1.5}, {"seats": 3}, ["rpm"], "10"]
)
def test_bad_end_user_limits_are_a_422_and_change_nothing(
    client: Any, as_admin: Headers, issue: Any, bad: Any
) -> None:
    made, _ = issue(end_user_limits={"rpm": 3})
    patched = client.patch(
        f"/v1/tokens/{made['jti']}", json={"end_user_limits": bad}, headers=as_admin
    )
    assert patched.status_code == 422, patched.get_json()
    assert "end_user_limits" in str(patched.get_json()["errors"])
    issued = client.post(
        "/v1/tokens",
        json={"name": "other", "scopes": ["chat"], "end_user_limits": bad},
        headers=as_admin,
    )
    assert issued.status_code == 422
    assert client.get("/v1/tokens", headers=as_admin).get_json()[0]["end_user_limits"] == {"rpm": 3}


# --- each end user apart -----------------------------------------------------------------------


def test_each_end_user_has_their_own_rpm_and_the_429_names_it(
    client: Any, issue: Any, redis: Any
) -> None:
    _, headers = issue(end_user_limits={"rpm": 2})
    short = body(max_tokens=4, tokens=2)
    assert [start(client, headers, "alice", short).status_code for _ in range(2)] == [202, 202]
    refused = start(client, headers, "alice", short)
    assert refused.status_code == 429
    payload = refused.get_json()
    assert payload["errors"]["limit"] == "end_user.rpm"
    assert payload["errors"]["end_user"] == "alice"
    assert "end user 'alice'" in payload["message"] and "limit 2" in payload["message"]
    assert 'name="end_user.rpm"' in refused.headers["RateLimit-Policy"]
    assert refused.headers["RateLimit-Limit"] == "2" and int(refused.headers["Retry-After"]) >= 1
    assert start(client, headers, "bob", short).status_code == 202  # bob goes on
    # Direct mode says the same in OpenAI's shape.
    chat = client.post(
        "/v1/chat/completions", json={**short, "user": "alice"}, headers=headers
    ).get_json()
    assert chat["error"]["type"] == "rate_limit_error"
    assert "end user 'alice'" in chat["error"]["message"]


def test_without_end_user_limits_or_without_user_no_end_user_key_is_touched(
    client: Any, issue: Any, redis: Any
) -> None:
    short = body(max_tokens=4, tokens=2)
    _, plain = issue()
    assert start(client, plain, "alice", short).status_code == 202
    _, limited = issue(end_user_limits={"rpm": 1})
    assert client.post("/v1/streams", json=short, headers=limited).status_code == 202
    assert client.post("/v1/streams", json=short, headers=limited).status_code == 202
    assert end_user_keys(redis) == []
    assert start(client, limited, "alice", short).status_code == 202
    assert end_user_keys(redis) != []


def test_an_end_users_lease_and_reservation_come_back_after_refusal_and_cancel(
    client: Any, issue: Any, redis: Any
) -> None:
    cost = estimate(SLOW)
    _, headers = issue(end_user_limits={"concurrent": 1, "tpm": 2 * cost})
    first = start(client, headers, "alice", SLOW)
    assert first.status_code == 202
    refused = start(client, headers, "alice", SLOW)
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "end_user.concurrent"
    # The refusal took nothing, at any scope: the app holds one stream's reservation.
    own = client.get("/v1/usage", headers=headers).get_json()
    assert own["today"]["reserved_tokens"] == cost
    assert own["limits"]["user"]["concurrent"]["used"] == 1
    assert start(client, headers, "bob", SLOW).status_code == 202

    for stream in client.get("/v1/streams", headers=headers).get_json():
        client.delete(f"/v1/streams/{stream['id']}", headers=headers)

    def idle() -> bool:
        usage = client.get("/v1/usage", headers=headers).get_json()
        return not usage["open_streams"] and usage["today"]["reserved_tokens"] == 0

    wait_until(idle, timeout=15)
    for key in end_user_keys(redis):
        if key.endswith(":leases"):
            assert redis.zcard(key) == 0, key
        elif ":m:" in key or ":d:" in key:
            assert int(redis.hget(key, "reserved") or 0) == 0, key
    again = start(client, headers, "alice", SLOW)  # the lease and the tokens came back
    assert again.status_code == 202, again.get_json()
    client.delete(f"/v1/streams/{again.get_json()['id']}", headers=headers)
    wait_until(idle, timeout=15)


def test_the_apps_own_limits_still_bind_its_end_users(client: Any, issue: Any) -> None:
    _, headers = issue(limits={"rpm": 3}, end_user_limits={"rpm": 2})
    short = body(max_tokens=4, tokens=2)
    assert [start(client, headers, "alice", short).status_code for _ in range(2)] == [202, 202]
    assert start(client, headers, "bob", short).status_code == 202
    refused = start(client, headers, "carol", short)  # within carol's 2, over the app's 3
    assert refused.status_code == 429
    assert refused.get_json()["errors"]["limit"] == "user.rpm"


# --- usage by end user -------------------------------------------------------------------------


def test_usage_by_end_user_for_the_app_and_the_admin(
    client: Any, as_admin: Headers, issue: Any
) -> None:
    app_a, as_a = issue(end_user_limits={"rpm": 10})
    app_b, as_b = issue()
    short = {**body(max_tokens=4, tokens=2), "stream": False}
    made = []
    for user, headers in [("alice", as_a), ("alice", as_a), ("bob", as_a), ("alice", as_b)]:
        made.append(
            client.post("/v1/chat/completions", json={**short, "user": user}, headers=headers)
        )
    made.append(client.post("/v1/chat/completions", json=short, headers=as_a))  # not listed
    assert [response.status_code for response in made] == [200] * 5
    for response in made:  # a record's tokens are written a moment after the response ends
        finished_record(response.headers["X-Stream-Id"])

    own = client.get("/v1/usage", query_string={"group_by": "end_user"}, headers=as_a)
    assert own.status_code == 200, own.get_json()
    rows = {r["end_user"]: r for r in own.get_json()["end_users"]}
    assert {name: r["streams"] for name, r in rows.items()} == {"alice": 2, "bob": 1}
    assert rows["alice"]["total_tokens"] == 2 * rows["bob"]["total_tokens"] > 0
    assert "end_users" not in client.get("/v1/usage", headers=as_a).get_json()
    # The admin's report, with and without the token filter.
    report = client.get(
        "/v1/admin/usage",
        query_string={"group_by": "end_user", "token": app_b["jti"]},
        headers=as_admin,
    ).get_json()
    assert [(r["end_user"], r["streams"]) for r in report] == [("alice", 1)]
    everyone = client.get(
        "/v1/admin/usage", query_string={"group_by": "end_user"}, headers=as_admin
    ).get_json()
    assert {(r["end_user"], r["streams"]) for r in everyone} == {("alice", 3), ("bob", 1)}
    # The issuing admin's own report lists their own end users, not their apps'.
    made = client.post("/v1/chat/completions", json={**short, "user": "dave"}, headers=as_admin)
    assert made.status_code == 200
    mine = client.get("/v1/usage", query_string={"group_by": "end_user"}, headers=as_admin)
    assert [(r["end_user"], r["streams"]) for r in mine.get_json()["end_users"]] == [("dave", 1)]
    bad = client.get("/v1/usage", query_string={"group_by": "model"}, headers=as_a)
    assert bad.status_code == 422
    assert app_a["jti"] != app_b["jti"]


def test_renew_and_release_cover_the_end_users_lease_and_windows(
    app: Any, issue: Any, redis: Any
) -> None:
    """What the keeper (renew) and the runner or reaper (release) do with an admission that
    carries an end user, as stored with the run."""
    from streaming.limits import admission_control
    from streaming.limits.keys import Clock, Keys

    made, _ = issue(end_user_limits={"concurrent": 1})
    tenant_id = _tenant_of_token(made)
    control = admission_control(app)
    admission = control.admit(tenant_id, "app:" + made["jti"], 100, "str_renewtest", "alice")
    assert admission.info["end_user"] == "alice"
    keys = Keys(tenant_id, "app:" + made["jti"], "alice")
    minute = keys.minute("end_user", Clock.now().minute)
    leased = redis.zscore(keys.leases("end_user"), "str_renewtest")
    redis.zadd(keys.leases("end_user"), {"str_renewtest": 1})  # as if about to expire
    control.renew(admission.info)
    assert redis.zscore(keys.leases("end_user"), "str_renewtest") >= leased
    assert redis.hget(minute, "reserved") == "100"

    control.release(admission.info, 7, 5)
    control.release(admission.info, 7, 5)  # the reaper too: nothing given back twice
    assert redis.zcard(keys.leases("end_user")) == 0
    assert redis.hget(minute, "reserved") == "0" and redis.hget(minute, "tokens") == "12"


def _tenant_of_token(made: dict[str, Any]) -> str:
    from auth.models import AppToken
    from core.store import db

    row = db.session.get(AppToken, made["jti"])
    assert row is not None
    return str(row.tenant_id)
