"""The admin console API in-process: who may call what, live streams, and revocation.

What an admin notices: the live list shows their tenant's running streams with counters; a revoke
stops the generation (the upstream request closes), tells every subscriber ``stream.revoked``
and ends their stream, refuses reconnects with 410, ends a direct-mode response with an in-band
error; revoking a user or an app token stops what it was doing; nothing of another tenant is
visible (404) and a member gets 403 everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.admin_helpers import (
    Headers,
    build_world,
    open_direct,
    open_hub,
    start_channel,
)
from tests.support.config import PASSWORD
from tests.support.hub import channel_generation
from tests.support.waiting import wait_until

# The hub and the control bus need this process's dispatcher and keeper (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"SSE_HEARTBEAT_S": 1, "SSE_COALESCE_MS": 0}


@pytest.fixture(autouse=True)
def _stop_leftover_runs(app: Any) -> Iterator[None]:
    """No generation of one test may keep talking to the shared fake upstream in the next."""
    yield
    from streaming.generation import stopped_outcome
    from streaming.runner import registry

    for run in registry(app).snapshot():
        run.stop(stopped_outcome("cancelled", reason="test over"))
    wait_until(lambda: not registry(app).snapshot(), timeout=10)


@pytest.fixture()
def world(app: Any, make_tenant: Any, make_user: Any, auth_headers: Any) -> dict[str, Any]:
    """Two tenants, each with an admin and a member, and an operator in a third."""
    return build_world(make_tenant, make_user, auth_headers)


def live_ids(redis: Any) -> set[str]:
    return set(redis.zrange("sg:live", 0, -1))


def record(stream_id: str) -> Any:
    from core.store import db
    from streaming.models import StreamRecord

    db.session.expire_all()
    return db.session.get(StreamRecord, stream_id)


def audit(client: Any, headers: Headers, **query: str) -> list[dict[str, Any]]:
    response = client.get("/v1/admin/audit", query_string=query, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json())


# --- every route: 401 without a token, 403 for a member --------------------------------------

ROUTES = [
    ("GET", "/v1/admin/streams"),
    ("GET", "/v1/admin/streams/str_aaaaaaaaaaaaaaaaaaaa"),
    ("POST", "/v1/admin/streams/str_aaaaaaaaaaaaaaaaaaaa/revoke"),
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/users"),
    ("GET", "/v1/admin/users/usr_aaaaaaaaaaaaaaaaaaaa"),
    ("PATCH", "/v1/admin/users/usr_aaaaaaaaaaaaaaaaaaaa"),
    ("POST", "/v1/admin/users/usr_aaaaaaaaaaaaaaaaaaaa/revoke"),
    ("POST", "/v1/admin/users/usr_aaaaaaaaaaaaaaaaaaaa/sign-out"),
    ("DELETE", "/v1/admin/tokens/some-jti"),
    ("GET", "/v1/admin/tenants"),
    ("POST", "/v1/admin/tenants"),
    ("GET", "/v1/admin/tenants/ten_aaaaaaaaaaaaaaaaaaaa"),
    ("PATCH", "/v1/admin/tenants/ten_aaaaaaaaaaaaaaaaaaaa"),
    ("GET", "/v1/admin/usage"),
    ("GET", "/v1/admin/audit"),
    ("GET", "/v1/admin/upstreams"),
]


def test_every_admin_route_is_listed_here(app: Any) -> None:
    rules = {
        (m, r.rule)
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/v1/admin/") and r.endpoint.startswith("admin.")
        for m in (r.methods or ())
        if m not in {"HEAD", "OPTIONS"}
    }
    listed = {
        (
            m,
            p.replace("str_aaaaaaaaaaaaaaaaaaaa", "<stream_id>")
            .replace("usr_aaaaaaaaaaaaaaaaaaaa", "<user_id>")
            .replace("ten_aaaaaaaaaaaaaaaaaaaa", "<tenant_id>")
            .replace("some-jti", "<jti>"),
        )
        for m, p in ROUTES
    }
    assert rules == listed


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_answers_401_without_a_token(client: Any, method: str, path: str) -> None:
    response = client.open(path, method=method, json={})
    assert response.status_code == 401
    assert response.get_json()["code"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_answers_403_to_a_member(
    client: Any, world: dict[str, Any], method: str, path: str
) -> None:
    response = client.open(path, method=method, json={}, headers=world["a"]["member_h"])
    assert response.status_code == 403
    assert response.get_json()["error_code"] == "insufficient_scope"


OPERATOR_ROUTES = [r for r in ROUTES if "/tenants" in r[1] or "/upstreams" in r[1]]


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
def test_tenant_routes_are_for_operators_only(
    client: Any, world: dict[str, Any], method: str, path: str
) -> None:
    response = client.open(
        path, method=method, json={"slug": "x", "name": "X"}, headers=world["a"]["admin_h"]
    )
    assert response.status_code == 403
    assert response.get_json()["error_code"] == "insufficient_scope"


# --- another tenant's objects are 404 on every tenant-scoped route ----------------------------


def test_another_tenants_objects_are_404_on_every_tenant_scoped_route(
    client: Any, world: dict[str, Any], redis: Any
) -> None:
    a, b = world["a"], world["b"]
    theirs = start_channel(client, b["member_h"])
    issued = client.post(
        "/v1/tokens", json={"name": "bot", "scopes": ["read"]}, headers=b["admin_h"]
    )
    jti = issued.get_json()["jti"]
    user_b, tenant_b = b["member"].id, b["tenant"].id
    probes = [
        ("GET", f"/v1/admin/streams/{theirs}", None, None),
        ("POST", f"/v1/admin/streams/{theirs}/revoke", {"reason": "x"}, None),
        ("GET", "/v1/admin/streams", None, {"tenant": tenant_b}),
        ("GET", "/v1/admin/streams", None, {"user": user_b}),
        ("GET", f"/v1/admin/users/{user_b}", None, None),
        ("PATCH", f"/v1/admin/users/{user_b}", {"role": "admin"}, None),
        ("POST", f"/v1/admin/users/{user_b}/revoke", {"reason": "x"}, None),
        ("GET", "/v1/admin/users", None, {"tenant": tenant_b}),
        (
            "POST",
            "/v1/admin/users",
            {"email": "x@example.com", "password": PASSWORD, "tenant_id": tenant_b},
            None,
        ),
        ("DELETE", f"/v1/admin/tokens/{jti}", {}, None),
        ("GET", "/v1/admin/usage", None, {"tenant": tenant_b}),
        ("GET", "/v1/admin/usage", None, {"user": user_b}),
        ("GET", "/v1/admin/audit", None, {"tenant": tenant_b}),
    ]
    for method, path, body, query in probes:
        response = client.open(
            path, method=method, json=body, query_string=query, headers=a["admin_h"]
        )
        assert response.status_code == 404, (method, path, query, response.get_json())
        assert response.get_json()["code"] == 404
    # ...and nothing was touched: the stream runs, the user and the token still work.
    assert redis.hget(f"sg:st:{theirs}", "status") == "running"
    assert client.get("/v1/auth/me", headers=b["member_h"]).status_code == 200
    assert (
        client.get(
            "/v1/auth/me", headers={"Authorization": "Bearer " + issued.get_json()["token"]}
        ).status_code
        == 200
    )
    assert audit(client, b["admin_h"], action="stream.revoke") == []


def test_unknown_ids_are_404_too(client: Any, world: dict[str, Any]) -> None:
    h = world["operator_h"]
    for path in (
        "/v1/admin/streams/str_bbbbbbbbbbbbbbbbbbbb",
        "/v1/admin/users/usr_bbbbbbbbbbbbbbbbbbbb",
        "/v1/admin/tenants/ten_bbbbbbbbbbbbbbbbbbbb",
    ):
        assert client.get(path, headers=h).status_code == 404
    assert client.delete("/v1/admin/tokens/nope", headers=h).status_code == 404


# --- live streams -----------------------------------------------------------------------------


def test_the_live_list_shows_the_tenants_running_streams_with_counters(
    client: Any, world: dict[str, Any]
) -> None:
    a, b = world["a"], world["b"]
    mine = start_channel(client, a["member_h"])
    theirs = start_channel(client, b["member_h"])
    hub = open_hub(client, f"streams/{mine}", a["member_h"])
    try:

        def listed() -> dict[str, Any] | None:
            rows = client.get("/v1/admin/streams", headers=a["admin_h"]).get_json()
            row = next((r for r in rows if r["id"] == mine), None)
            return row if row and row["tokens"] > 0 else None

        row = wait_until(listed)
        rows = client.get("/v1/admin/streams", headers=a["admin_h"]).get_json()
        assert [r["id"] for r in rows] == [mine]  # not the other tenant's
        assert row["user_id"] == a["member"].id and row["user_email"] == a["member"].email
        assert (
            row["mode"] == "channel" and row["model"] == "fake-model" and row["status"] == "running"
        )
        assert row["subscribers"] == 1 and row["started_at"] and row["tenant_id"] == a["tenant"].id
        assert row["token_jti"]

        detail = client.get(f"/v1/admin/streams/{mine}", headers=a["admin_h"]).get_json()
        assert detail["id"] == mine and detail["subscribers"] == 1 and detail["status"] == "running"
    finally:
        hub.close()
    wait_until(
        lambda: (
            client.get(f"/v1/admin/streams/{mine}", headers=a["admin_h"]).get_json()["subscribers"]
            == 0
        )
    )

    everything = client.get("/v1/admin/streams", headers=world["operator_h"]).get_json()
    assert {r["id"] for r in everything} == {mine, theirs}
    only_b = client.get(
        "/v1/admin/streams", query_string={"tenant": b["tenant"].id}, headers=world["operator_h"]
    ).get_json()
    assert [r["id"] for r in only_b] == [theirs]
    by_user = client.get(
        "/v1/admin/streams", query_string={"user": a["member"].id}, headers=world["operator_h"]
    ).get_json()
    assert [r["id"] for r in by_user] == [mine]
    direct = client.get(
        "/v1/admin/streams", query_string={"mode": "direct"}, headers=world["operator_h"]
    ).get_json()
    assert direct == []


def finished_channel(client: Any, headers: dict[str, str], tokens: int) -> str:
    """A channel stream of ``tokens`` tokens, returned once its record says it completed."""
    done = start_channel(client, headers, infinite=0, tokens=tokens, delay_ms=0)
    wait_until(lambda: record(done).status == "completed")
    return done


def test_a_finished_stream_leaves_the_live_list_but_can_still_be_looked_up(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]
    done = finished_channel(client, a["member_h"], tokens=3)
    assert client.get("/v1/admin/streams", headers=a["admin_h"]).get_json() == []
    detail = client.get(f"/v1/admin/streams/{done}", headers=a["admin_h"]).get_json()
    assert detail["status"] == "completed" and detail["tokens"] == 3 and detail["subscribers"] == 0


# --- revoking a stream ------------------------------------------------------------------------


def test_revoking_a_channel_stream_stops_it_tells_subscribers_and_refuses_reconnects(
    client: Any, world: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    a = world["a"]
    stream_id = start_channel(client, a["member_h"])
    owner = open_hub(client, f"streams/{stream_id}", a["member_h"])
    watcher = open_hub(client, f"streams/{stream_id}", a["admin_h"])  # a second reader
    owner.read(until=lambda e: e.event == "token")

    response = client.post(
        f"/v1/admin/streams/{stream_id}/revoke", json={"reason": "runaway"}, headers=a["admin_h"]
    )

    assert response.status_code == 202
    body = response.get_json()
    assert body["id"] == stream_id and body["status"] == "revoked"
    assert body["revoked_by"] == a["admin"].id and body["revoke_reason"] == "runaway"
    # A reconnect is refused at once, even before the runner has reacted.
    again = open_hub(client, f"streams/{stream_id}", a["member_h"])
    assert again.status == 410 and again.response.get_json()["error_code"] == "stream_revoked"

    for reader in (owner, watcher):
        reader.read()
        assert reader.eof
        assert reader.names[-1] == "stream.revoked"
        last = reader.events[-1].json()
        assert last["by"] == a["admin"].id and last["reason"] == "runaway"
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1 and s["active"] == 0, timeout=15)
    wait_until(lambda: stream_id not in live_ids(redis))
    wait_until(lambda: record(stream_id).status == "revoked")
    assert record(stream_id).revoked_by == a["admin"].id
    assert record(stream_id).revoke_reason == "runaway"
    events = audit(client, a["admin_h"], action="stream.revoke")
    assert [(e["target_id"], e["actor_id"], e["reason"]) for e in events] == [
        (stream_id, a["admin"].id, "runaway")
    ]
    assert (
        client.get(f"/v1/streams/{stream_id}", headers=a["member_h"]).get_json()["status"]
        == "revoked"
    )


def test_revoking_a_direct_stream_ends_the_response_with_an_in_band_error(
    client: Any, world: dict[str, Any], fake_upstream: Any
) -> None:
    a = world["a"]
    reader = open_direct(client, a["member_h"])
    stream_id = reader.response.headers["X-Stream-Id"]
    reader.read(until=lambda e: "content" in e.data and '"content":""' not in e.data)
    listed = client.get(
        "/v1/admin/streams", query_string={"mode": "direct"}, headers=a["admin_h"]
    ).get_json()
    assert [r["id"] for r in listed] == [stream_id]

    response = client.post(
        f"/v1/admin/streams/{stream_id}/revoke", json={"reason": "abuse"}, headers=a["admin_h"]
    )
    assert response.status_code == 202

    reader.read()
    assert reader.eof
    error = json.loads(reader.events[-1].data)["error"]
    assert error["code"] == "stream_revoked"
    assert "[DONE]" not in [e.data for e in reader.events]
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1, timeout=15)
    wait_until(lambda: record(stream_id).status == "revoked")


def test_revoking_an_ended_stream_is_a_conflict_and_revoking_twice_is_accepted(
    client: Any, world: dict[str, Any]
) -> None:
    a = world["a"]
    done = finished_channel(client, a["member_h"], tokens=2)
    response = client.post(f"/v1/admin/streams/{done}/revoke", json={}, headers=a["admin_h"])
    assert response.status_code == 409 and response.get_json()["error_code"] == "stream_finished"
    assert (
        client.get(f"/v1/streams/{done}", headers=a["member_h"]).get_json()["status"] == "completed"
    )

    running = start_channel(client, a["member_h"])
    for _ in range(2):
        response = client.post(f"/v1/admin/streams/{running}/revoke", json={}, headers=a["admin_h"])
        assert response.status_code == 202 and response.get_json()["status"] == "revoked"
    wait_until(lambda: record(running).status == "revoked")
    assert len(audit(client, a["admin_h"], action="stream.revoke")) == 2


def test_an_operator_can_revoke_any_tenants_stream(client: Any, world: dict[str, Any]) -> None:
    stream_id = start_channel(client, world["b"]["member_h"])
    response = client.post(
        f"/v1/admin/streams/{stream_id}/revoke", json={"reason": "ops"}, headers=world["operator_h"]
    )
    assert response.status_code == 202
    wait_until(lambda: record(stream_id).status == "revoked")
    events = audit(client, world["b"]["admin_h"], action="stream.revoke")
    assert events[0]["actor_id"] == world["operator"].id  # the tenant sees who did it


def test_revoking_a_stream_whose_worker_died_settles_it_as_revoked(
    app: Any, client: Any, world: dict[str, Any], redis: Any
) -> None:
    """No worker runs it any more (its lease is expiring): the reaper settles it as revoked."""
    from streaming import state
    from streaming.channel import TerminalSink
    from streaming.keeper import reap

    a = world["a"]
    gen = channel_generation(
        a["tenant"].id, a["member"].id, token_jti="jti-of-a-dead-worker", prompt_estimate=5
    )
    state.create(gen)  # what a worker does at admission, before it died
    watcher = open_hub(client, f"streams/{gen.stream_id}", a["admin_h"])

    response = client.post(
        f"/v1/admin/streams/{gen.stream_id}/revoke", json={"reason": "gone"}, headers=a["admin_h"]
    )
    assert response.status_code == 202 and response.get_json()["status"] == "revoked"

    redis.zadd("sg:live", {gen.stream_id: 0})  # its lease expired
    reap(app, TerminalSink)
    watcher.read()
    assert watcher.names[-1] == "stream.revoked"
    assert watcher.events[-1].json()["reason"] == "gone"
    wait_until(lambda: record(gen.stream_id).status == "revoked")
    assert gen.stream_id not in live_ids(redis)


# --- revoking a user or a token ---------------------------------------------------------------


def test_revoking_a_user_disables_them_and_stops_their_streams_and_subscriptions(
    client: Any, world: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    a = world["a"]
    user, h = a["member"], a["member_h"]
    first, second = start_channel(client, h), start_channel(client, h)
    on_user = open_hub(client, f"users/{user.id}", h)
    on_stream = open_hub(client, f"streams/{first}", h)
    bystander = start_channel(client, a["admin_h"])  # another user's stream keeps running

    response = client.post(
        f"/v1/admin/users/{user.id}/revoke", json={"reason": "abuse"}, headers=a["admin_h"]
    )

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["user"]["disabled"] is True
    assert sorted(body["streams_revoked"]) == sorted([first, second])
    for reader in (on_user, on_stream):
        reader.read()
        assert reader.eof
    assert "stream.completed" not in on_stream.names  # cut off (with or without stream.revoked)
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 2, timeout=15)
    wait_until(lambda: {first, second}.isdisjoint(live_ids(redis)))
    assert bystander in live_ids(redis)
    assert client.get("/v1/auth/me", headers=h).status_code == 401
    login = client.post(
        "/v1/auth/login",
        json={"tenant": a["tenant"].slug, "email": user.email, "password": PASSWORD},
    )
    assert login.status_code == 401
    [event] = audit(client, a["admin_h"], action="user.revoke")
    assert event["target_id"] == user.id and event["reason"] == "abuse"
    assert sorted(event["details"]["streams"]) == sorted([first, second])


def test_revoking_an_app_token_stops_what_it_opened_and_nothing_else(
    client: Any, world: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    a = world["a"]
    issued = client.post(
        "/v1/tokens", json={"name": "bot", "scopes": ["chat", "read"]}, headers=a["admin_h"]
    ).get_json()
    bot = {"Authorization": "Bearer " + issued["token"]}
    by_bot = start_channel(client, bot)
    by_person = start_channel(client, a["admin_h"])  # same user, another token
    hub = open_hub(client, f"users/{a['admin'].id}", bot)

    response = client.delete(
        f"/v1/admin/tokens/{issued['jti']}", json={"reason": "leaked"}, headers=a["admin_h"]
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token"]["jti"] == issued["jti"] and body["token"]["revoked_at"]
    assert body["streams_revoked"] == [by_bot]
    hub.read()
    assert hub.eof
    wait_until(lambda: record(by_bot).status == "revoked")
    assert by_person in live_ids(redis)
    assert client.get("/v1/auth/me", headers=bot).status_code == 401
    assert client.get("/v1/auth/me", headers=a["admin_h"]).status_code == 200
    [event] = audit(client, a["admin_h"], action="app_token.revoke")
    assert event["reason"] == "leaked" and event["details"] == {"streams": [by_bot]}
    # Without a body it works as well (idempotent).
    assert (
        client.delete(f"/v1/admin/tokens/{issued['jti']}", headers=a["admin_h"]).status_code == 200
    )


def test_an_admin_cannot_revoke_themselves(client: Any, world: dict[str, Any]) -> None:
    a = world["a"]
    response = client.post(f"/v1/admin/users/{a['admin'].id}/revoke", json={}, headers=a["admin_h"])
    assert response.status_code == 409
    assert client.get("/v1/auth/me", headers=a["admin_h"]).status_code == 200
