"""Revocation across two nodes: two gunicorn masters (gevent workers), one Redis, one database.

A stream runs on node A, its subscriber is on node B and the revoke is sent to node B: the
upstream request closes, the subscriber receives ``stream.revoked`` and then the end of the
stream, a reconnect to either node is refused with 410, and nothing of the stream is left in
Redis (live set, concurrency leases). Revoking a user closes everything they had open on both
nodes: subscriptions and generations, channel and direct mode.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.live import LiveCluster, LiveServer
from tests.support.multinode import (
    READ_TIMEOUT_S,
    Nodes,
    admin_revoke,
    followed_across,
    holders_of,
    start_channel,
    start_direct,
    subscribe,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {"SSE_HEARTBEAT_S": "1"}


@pytest.fixture()
def nodes(live: LiveServer, live_cluster: LiveCluster) -> Nodes:
    """Two gunicorn masters (two gevent workers each) on one Redis and one SQLite file."""
    if len(live_cluster.nodes) < 2:
        live_cluster.add_node()  # kept with the live server for the next test
    return Nodes(live, live_cluster.server(live.app, 1))


@pytest.fixture()
def people(nodes: Nodes, make_tenant: Any, make_user: Any) -> dict[str, Any]:
    return nodes.people(make_tenant, make_user)


def test_a_revoke_sent_to_node_b_stops_a_stream_running_on_node_a(
    nodes: Nodes, people: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    stream_id, subscriber = followed_across(nodes, people["member_h"])
    assert holders_of(redis, stream_id)  # it is live (and holds its leases)

    response = admin_revoke(nodes.b, stream_id, people)
    assert response.json()["status"] == "revoked"

    subscriber.finish()
    event, data = subscriber.last
    assert event == "stream.revoked"
    assert data["by"] == people["admin_id"] and data["reason"] == "runaway"
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1 and s["active"] == 0, timeout=15)
    for node in (nodes.a, nodes.b):
        with node.client() as client:
            again = client.get(
                "/v1/events", params={"channel": f"streams/{stream_id}"}, headers=people["member_h"]
            )
        assert again.status_code == 410
    wait_until(lambda: not holders_of(redis, stream_id), timeout=15)
    with nodes.a.client() as client:
        detail = client.get(f"/v1/admin/streams/{stream_id}", headers=people["admin_h"]).json()
        listed = client.get("/v1/admin/streams", headers=people["admin_h"]).json()
    assert detail["status"] == "revoked" and detail["revoked_by"] == people["admin_id"]
    assert listed == []


def test_revoking_a_user_closes_their_subscriptions_and_generations_on_both_nodes(
    nodes: Nodes, people: dict[str, Any], fake_upstream: Any, redis: Any
) -> None:
    h, user_id = people["member_h"], people["member_id"]
    on_a = start_channel(nodes.a, h)
    direct_on_b = start_direct(nodes.b, h)
    subscriptions = [
        subscribe(nodes.b, f"streams/{on_a}", h),
        subscribe(nodes.a, f"users/{user_id}", h),
        subscribe(nodes.b, f"users/{user_id}", h),
    ]
    assert subscriptions[0].got_token.wait(READ_TIMEOUT_S)
    assert direct_on_b.got_token.wait(READ_TIMEOUT_S)
    direct_id = direct_on_b.response_headers["x-stream-id"]
    assert fake_upstream.snapshot()["active"] == 2

    with nodes.a.client() as client:
        response = client.post(
            f"/v1/admin/users/{user_id}/revoke", json={"reason": "abuse"}, headers=people["admin_h"]
        )
    assert response.status_code == 202, response.text
    assert sorted(response.json()["streams_revoked"]) == sorted([on_a, direct_id])

    for reader in [*subscriptions, direct_on_b]:  # all five end
        reader.finish()
    # The user's own connections are cut at once (they may or may not see stream.revoked first).
    assert subscriptions[0].last[0] in {"token", "stream.revoked"}
    assert direct_on_b.last[1]["error"]["code"] == "stream_revoked"
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 2 and s["active"] == 0, timeout=15)
    wait_until(lambda: not holders_of(redis, on_a) and not holders_of(redis, direct_id), timeout=15)
    with nodes.b.client() as client:
        assert client.get("/v1/auth/me", headers=h).status_code == 401
        login = client.post(
            "/v1/auth/login",
            json={
                "tenant": people["slug"],
                "email": people["member_email"],
                "password": "correct horse battery staple",
            },
        )
        assert login.status_code == 401
        again = client.get("/v1/events", params={"channel": f"users/{user_id}"}, headers=h)
        assert again.status_code == 401
