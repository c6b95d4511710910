"""Who may open ``GET /v1/events``: the gate refuses before it streams, and before Redis if it can.

- a malformed channel (or ``Last-Event-ID``) is a 400 decided on the name alone, even without
  Redis (``test_hub_gate_without_redis``, which uses the names listed here);
- a channel you may not read is a 403 with the same body whether or not it exists;
- tokens are never taken from the query string; one-time tickets are, once, for their channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.accounts import member_channel
from tests.support.hub import get_with_ticket, issue_ticket, open_hub, say_hi, tenant_of
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

# The hub and the control bus need this process's dispatcher and keeper (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")

Member = tuple[str, dict[str, str]]  # a member's own channel and bearer headers
member = pytest.fixture(member_channel, name="member")

GOOD_STREAM = "streams/str_" + "a" * 20
GOOD_USER = "users/usr_" + "b" * 20

MALFORMED = [
    "",
    "streams/",
    "users/",
    "streams",
    "/streams/str_" + "a" * 20,
    GOOD_STREAM + "/",
    GOOD_STREAM + "/..",
    "streams/../users/usr_" + "b" * 20,
    "streams/str_" + "a" * 17 + "/..",
    "../" + GOOD_STREAM,
    "streams\\str_" + "a" * 20,
    "streams/*",
    "streams/str_*",
    "users/*",
    "*",
    "streams/str_" + "a" * 19 + "?",
    "streams%2Fstr_" + "a" * 20,  # arrives percent-encoded after the query's own decoding
    "streams/str_%61" + "a" * 19,
    "streams/str_" + "a" * 18 + "%00",
    "streams/str_" + "\u0430" * 20,  # Cyrillic а
    "\u0455treams/str_" + "a" * 20,  # Cyrillic ѕ
    "\uff53treams/str_" + "a" * 20,  # fullwidth ｓ
    "streams\uff0fstr_" + "a" * 20,  # fullwidth solidus
    "streams/str_" + "\u0661" * 20,  # Arabic-Indic digits
    "streams/str\uff3f" + "a" * 20,  # fullwidth low line
    "streams/STR_" + "A" * 20,
    "Streams/str_" + "a" * 20,
    " " + GOOD_STREAM,
    GOOD_STREAM + " ",
    GOOD_STREAM + "\n",
    GOOD_STREAM + "\x00",
    "streams/str_" + "a" * 19,
    "streams/str_" + "a" * 21,
    "streams/str_" + "a" * 5000,
    "users/str_" + "a" * 20,  # a users/ channel with a stream id
    "streams/usr_" + "b" * 20,
    "users/tok_" + "b" * 20,
    "users/" + "b" * 24,
    "users/usr-" + "b" * 20,
    "tenants/ten_" + "c" * 19,
    "tenants/ten_" + "c" * 21,
    "tenants/usr_" + "c" * 20,  # a tenants/ channel with a user id
    "tenants/ten_*",
    "tenants/",
    "tenants/TEN_" + "C" * 20,
    "Tenants/ten_" + "c" * 20,
    "tenant/ten_" + "c" * 20,
    "tenants/ten_" + "c" * 20 + "/",
    "users/ten_" + "c" * 20,
    "streams/ten_" + "c" * 20,
    GOOD_STREAM + "," + GOOD_USER,
]


def _forbidden(response: Any) -> dict[str, Any]:
    assert response.status_code == 403, response.get_data(as_text=True)
    return dict(response.get_json())


def test_refusals_look_the_same_whether_or_not_the_channel_exists(
    client: Any, make_user: Callable[..., Any], fake_upstream: Any
) -> None:
    owner = make_user()
    colleague = make_user(tenant_of(owner))
    outsider = make_user()  # another tenant
    outsider_admin = make_user(tenant_of(outsider), role="admin")
    owner_h, owner_id = user_headers(owner), owner.id
    refused = [user_headers(who) for who in (colleague, outsider, outsider_admin)]
    created = say_hi(client, owner_h, fake_upstream)
    real, missing = created["channel"], "streams/str_" + "z" * 20

    bodies = []
    for headers in refused:
        for channel in (real, missing, f"users/{owner_id}", "users/usr_" + "q" * 20):
            bodies.append(
                _forbidden(
                    client.get("/v1/events", query_string={"channel": channel}, headers=headers)
                )
            )
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["error_code"] == "channel_forbidden"


def test_no_token_is_401_and_tokens_are_never_read_from_the_query_string(
    client: Any, member: Member
) -> None:
    channel, headers = member
    token = headers["Authorization"].removeprefix("Bearer ")
    assert client.get("/v1/events", query_string={"channel": channel}).status_code == 401
    for name in ("jwt", "token", "access_token", "sg_access", "authorization"):
        response = client.get("/v1/events", query_string={"channel": channel, name: token})
        assert response.status_code == 401, name
    response = client.get("/v1/events", query_string={"channel": channel, "ticket": token})
    assert response.status_code == 401  # a JWT is not a ticket either


def test_a_ticket_opens_its_channel_once(client: Any, redis: Any, member: Member) -> None:
    channel, headers = member
    issued = client.post("/v1/events/tickets", json={"channel": channel}, headers=headers)
    assert issued.status_code == 201
    body = issued.get_json()
    assert body["channel"] == channel and body["expires_in"] == 60
    assert body["events_url"] == f"/v1/events?channel={channel}&ticket={body['ticket']}"
    assert 0 < redis.pttl(f"sg:ticket:{body['ticket']}") <= 60_000

    first = open_hub(client, channel, ticket=body["ticket"])  # no Authorization header
    try:
        assert first.status == 200
        assert first.response.headers["Content-Type"].startswith("text/event-stream")
        # Other origins are allowed by CORS_ORIGINS (flask-cors), not by holding a ticket.
        assert "Access-Control-Allow-Origin" not in first.response.headers
    finally:
        first.close()
    again = get_with_ticket(client, channel, body["ticket"])
    assert again.status_code == 401


def test_a_ticket_is_only_for_its_channel_and_only_for_readable_ones(
    client: Any,
    make_user: Callable[..., Any],
) -> None:
    user = make_user()
    other = make_user(tenant_of(user))
    headers = user_headers(user)
    user, other = user.id, other.id
    ticket = issue_ticket(client, f"users/{user}", headers)
    elsewhere = get_with_ticket(client, f"users/{other}", ticket)
    assert elsewhere.status_code == 403

    refused = client.post("/v1/events/tickets", json={"channel": f"users/{other}"}, headers=headers)
    assert refused.status_code == 403 and refused.get_json()["error_code"] == "channel_forbidden"
    malformed = client.post("/v1/events/tickets", json={"channel": "users/*"}, headers=headers)
    assert malformed.status_code == 400
    assert client.post("/v1/events/tickets", json={"channel": f"users/{user}"}).status_code == 401


class TestTicketExpiry:
    @pytest.fixture()
    def app_overrides(self) -> dict[str, Any]:
        return {"EVENT_TICKET_TTL_S": 1}

    def test_an_unused_ticket_expires(self, client: Any, redis: Any, member: Member) -> None:
        channel, headers = member
        ticket = issue_ticket(client, channel, headers)
        wait_until(lambda: not redis.exists(f"sg:ticket:{ticket}"))
        response = get_with_ticket(client, channel, ticket)
        assert response.status_code == 401


def test_a_ticket_dies_with_the_token_it_came_from(client: Any, member: Member) -> None:
    from auth.tokens import revoke_user_tokens

    channel, headers = member
    ticket = issue_ticket(client, channel, headers)
    revoke_user_tokens(channel.removeprefix("users/"))
    response = get_with_ticket(client, channel, ticket)
    assert response.status_code == 401
