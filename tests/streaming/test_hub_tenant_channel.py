"""``tenants/<tenant id>``: the admins' feed of every stream's lifecycle in a tenant.

Readable by the tenant's admins and operators only (a member, or another tenant's admin, gets the
same 403 whether or not the tenant exists; a malformed name is a 400 decided before Redis: see
``MALFORMED`` in test_hub_access, also run without Redis). Each stream, in either mode, announces
its start and its end there, with whose stream it is and, when revoked, by whom and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from streaming.generation import tenant_channel, user_channel
from streaming.log import event_log
from tests.support.hub import open_hub, start_stream, tenant_of
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("app_services")

TERMINAL = {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}


def _refused(client: Any, channel: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get("/v1/events", query_string={"channel": channel}, headers=headers)
    assert response.status_code == 403, response.get_data(as_text=True)
    return dict(response.get_json())


def test_only_the_tenants_admins_and_operators_read_it(
    client: Any,
    make_user: Callable[..., Any],
) -> None:
    admin = make_user(role="admin")
    tenant = tenant_of(admin)
    member = make_user(tenant)
    outsider_admin = make_user(role="admin")  # another tenant's
    operator = make_user(role="operator")  # in a tenant of their own
    channel, missing = tenant_channel(tenant.id), tenant_channel("ten_" + "z" * 20)
    member_h, outsider_h = user_headers(member), user_headers(outsider_admin)
    readers = [user_headers(admin), user_headers(operator)]
    admin_h = readers[0]

    bodies = [
        _refused(client, name, headers)
        for headers in (member_h, outsider_h)
        for name in (channel, missing)
    ]
    assert all(body == bodies[0] for body in bodies)  # nothing tells whether the tenant exists
    assert bodies[0]["error_code"] == "channel_forbidden"

    for headers in readers:
        hub = open_hub(client, channel, headers)
        try:
            assert hub.status == 200
            assert hub.response.mimetype == "text/event-stream"
        finally:
            hub.close()

    # A one-time ticket follows the same rule.
    refused = client.post("/v1/events/tickets", json={"channel": channel}, headers=member_h)
    assert refused.status_code == 403
    issued = client.post("/v1/events/tickets", json={"channel": channel}, headers=admin_h)
    assert issued.status_code == 201


@dataclass
class Team:
    """A tenant with an admin and a member, read before the test's requests detach the rows."""

    tenant: Any
    channel: str
    admin_id: str
    admin_h: dict[str, str]
    member_id: str
    member_h: dict[str, str]


@pytest.fixture()
def team(make_user: Callable[..., Any]) -> Team:
    admin = make_user(role="admin")
    tenant = tenant_of(admin)
    member = make_user(tenant)
    return Team(
        tenant,
        tenant_channel(tenant.id),
        admin.id,
        user_headers(admin),
        member.id,
        user_headers(member),
    )


def test_it_carries_every_streams_start_and_end_with_a_revokes_reason(
    client: Any, team: Team, fake_upstream: Any
) -> None:
    admin_h, member_h = team.admin_h, team.member_h
    member_id, admin_id, channel = team.member_id, team.admin_id, team.channel

    done = start_stream(client, member_h, tokens=3)
    running = start_stream(client, member_h, infinite=1, delay_ms=20)
    hub = open_hub(client, channel, admin_h)
    try:
        # One read: an event that satisfies ``until`` ends it, the rest of its chunk unread.
        hub.read(
            until=lambda _e: (
                {(done["id"], "stream.completed"), (running["id"], "stream.started")}
                <= {(e.data.get("stream_id"), e.event) for e in hub.events}
            )
        )
        revoked = client.post(
            f"/v1/admin/streams/{running['id']}/revoke",
            json={"reason": "runaway prompt"},
            headers=admin_h,
        )
        assert revoked.status_code == 202, revoked.get_data(as_text=True)
        hub.read(until=lambda e: e.event == "stream.revoked")
    finally:
        hub.close()

    seen = {(e.data["stream_id"], e.event): e.data for e in hub.events if e.event != "ping"}
    assert (done["id"], "stream.started") in seen and (done["id"], "stream.completed") in seen
    started = seen[(running["id"], "stream.started")]
    assert started["user_id"] == member_id and started["model"] == "fake-model"
    assert started["status"] == "running" and started["channel"] == running["channel"]
    end = seen[(running["id"], "stream.revoked")]
    assert end["status"] == "revoked" and end["by"] == admin_id
    assert end["reason"] == "runaway prompt"


def test_an_operators_streams_stay_off_their_tenants_feed(
    app: Any,
    client: Any,
    team: Team,
    make_user: Callable[..., Any],
    fake_upstream: Any,
) -> None:
    operator = make_user(team.tenant, role="operator")
    channel, admin_h, operator_id = team.channel, team.admin_h, operator.id
    operator_h, member_h = user_headers(operator), team.member_h
    hidden = start_stream(client, operator_h, tokens=2)
    # The operator's stream has ended on their own channel, so had it gone to the tenant's too,
    # it would be there before anything of the member's stream (one writer, in order).
    log = event_log(app)
    wait_until(
        lambda: any(e in TERMINAL for _i, e, _d in log.replay(user_channel(operator_id), None))
    )
    shown = start_stream(client, member_h, tokens=2)
    hub = open_hub(client, channel, admin_h)
    try:
        hub.read(until=lambda e: e.event in TERMINAL and e.data["stream_id"] == shown["id"])
    finally:
        hub.close()
    ids = {e.data["stream_id"] for e in hub.events if e.event != "ping"}
    assert shown["id"] in ids and hidden["id"] not in ids


def test_a_direct_mode_stream_is_announced_to_the_admins_only(
    app: Any,
    client: Any,
    make_user: Callable[..., Any],
    fake_upstream: Any,
) -> None:
    member = make_user()
    headers, member_id, tenant_id = user_headers(member), member.id, member.tenant_id
    answer = client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers=headers,
    )
    assert answer.status_code == 200
    stream_id = answer.headers["X-Stream-Id"]
    assert answer.get_data(as_text=True).rstrip().endswith("data: [DONE]")

    log = event_log(app)
    tenant_events = wait_until(
        lambda: (
            (rows := log.replay(tenant_channel(tenant_id), None))
            and rows[-1][1] == "stream.completed"
            and rows
        )
    )
    started, completed = (json.loads(data) for _id, _event, data in tenant_events)
    assert started["stream_id"] == completed["stream_id"] == stream_id
    assert started["mode"] == "direct" and started["user_id"] == member_id
    assert completed["status"] == "completed"
    # Nothing on the user's channel: a direct stream cannot be attached to from another device.
    assert log.replay(user_channel(member_id), None) == []
