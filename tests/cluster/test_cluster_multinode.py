"""The multi-node scenarios on a real Redis Cluster (3 masters, 3 replicas; REDIS_CLUSTER=true).

Two gunicorn masters, A and B, share the cluster and one SQLite file. What a user would notice:
- a channel stream started through A is read through B, cut, and resumed through B (and A) with
  ``Last-Event-ID``: the whole text, no event twice;
- a revocation sent to B stops the generation running on A: the upstream request is closed, the
  subscriber gets ``stream.revoked``, nothing of the stream is left;
- a burst of stream starts split across A and B admits exactly the concurrency limit;
- the per-user subscription cap counts connections on both nodes.
Every one of these crosses slots: the tenant's limits (``{t:<tenant>}``), the stream's log
(``{streams/<id>}``), the revocation keys and the subscription sets live on different masters.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from bench.fake_upstream import expected_text
from tests.support.cluster import leftovers
from tests.support.hub import assert_continuous, read_hub, start_stream, stream_body, text_of
from tests.support.multinode import (
    Nodes,
    admin_revoke,
    followed_across,
    holders_of,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.cluster]


def test_a_stream_started_on_a_is_read_and_resumed_on_b(
    nodes: Nodes, people: dict[str, Any], cluster_redis: Any
) -> None:
    h = people["member_h"]
    with nodes.a.client() as a, nodes.b.client() as b:
        started = start_stream(a, h, tokens=60, delay_ms=15)
        channel = started["channel"]
        first = read_hub(b, channel, h, stop_after=10)  # then the network goes away
        assert len(first.events) == 10 and not first.eof
        second = read_hub(b, channel, h, last_event_id=first.last_id, stop_after=10)
        rest = read_hub(a, channel, h, last_event_id=second.last_id)
    events = first.events + second.events + rest.events
    assert rest.eof and rest.names[-1] == "stream.completed"
    assert text_of(events) == expected_text(60)
    assert_continuous(events)
    assert len({e.id for e in events}) == len(events)
    # The log lives on the master of its own slot (hash tag: the channel).
    assert cluster_redis.exists("sg:log:{" + channel + "}")


def test_a_revoke_sent_to_b_stops_a_generation_running_on_a(
    nodes: Nodes, people: dict[str, Any], fake_upstream: Any, cluster_redis: Any
) -> None:
    stream_id, subscriber = followed_across(nodes, people["member_h"])
    assert holders_of(cluster_redis, stream_id)  # live, holding its leases
    wait_until(lambda: fake_upstream.snapshot()["active"] == 1)

    sent = time.monotonic()
    admin_revoke(nodes.b, stream_id, people)
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1 and s["active"] == 0, timeout=15)
    closed_after = time.monotonic() - sent
    subscriber.finish()
    event, data = subscriber.last
    assert event == "stream.revoked" and data["by"] == people["admin_id"]
    wait_until(lambda: not holders_of(cluster_redis, stream_id), timeout=15)
    print(f"cluster: revoke on B -> upstream request closed on A after {closed_after:.3f} s")


def test_limits_are_exact_under_a_burst_split_across_both_nodes(
    nodes: Nodes, make_tenant: Any, make_user: Any, auth_headers: Any, cluster_redis: Any
) -> None:
    with nodes.a.app.app_context():
        tenant = make_tenant(limits={"concurrent": 4})
        users = [make_user(tenant, limits={"concurrent": 3}) for _ in range(2)]
        headers = [auth_headers(user) for user in users]
    body = stream_body(4000, infinite=1, delay_ms=50)
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    gate = threading.Barrier(16)

    def start(index: int) -> None:
        node, h = (nodes.a, nodes.b)[index % 2], headers[index // 8]
        with httpx.Client(base_url=node.url, timeout=30) as client:
            gate.wait()
            response = client.post("/v1/streams", json=body, headers=h)
        answers.append((response.status_code, response.json(), h))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    admitted = [(body, h) for status, body, h in answers if status == 202]
    refused = [body for status, body, _ in answers if status == 429]
    assert len(answers) == 16 and len(admitted) + len(refused) == 16, answers
    # The tenant's 4 concurrent streams, never more, and no user over their own 3.
    assert len(admitted) == 4, [status for status, *_ in answers]
    assert all(sum(1 for _, h in admitted if h is mine) <= 3 for mine in headers)
    assert {r["error_code"] for r in refused} == {"rate_limit_exceeded"}
    for started, h in admitted:
        with nodes.b.client() as client:
            assert client.delete(f"/v1/streams/{started['id']}", headers=h).status_code == 202
    wait_until(lambda: leftovers(cluster_redis)["leases"] == 0, timeout=15)


def test_the_subscription_cap_counts_connections_on_both_nodes(
    nodes: Nodes, people: dict[str, Any], cluster_redis: Any
) -> None:
    h, user_id = people["member_h"], people["member_id"]
    channel = f"users/{user_id}"
    with httpx.Client(timeout=30) as client:
        opened = []
        for node in (nodes.a, nodes.b, nodes.a):  # the cap: 3
            request = client.build_request("GET", node.url + "/v1/events", headers=h)
            request.url = request.url.copy_merge_params({"channel": channel})
            response = client.send(request, stream=True)
            assert response.status_code == 200
            chunks = response.iter_bytes()  # keep a reference: a collected iterator hangs up
            next(chunks)  # the first flush
            opened.append((response, chunks))
        for node in (nodes.b, nodes.a):
            refused = client.get(node.url + "/v1/events", params={"channel": channel}, headers=h)
            assert refused.status_code == 429
            assert refused.json()["error_code"] == "too_many_subscriptions"
        assert cluster_redis.zcard(f"sg:subs:{user_id}") == 3
        opened.pop()[0].close()  # one closes on A: B may open one now
        wait_until(lambda: cluster_redis.zcard(f"sg:subs:{user_id}") == 2, timeout=15)
        with client.stream(
            "GET", nodes.b.url + "/v1/events", params={"channel": channel}, headers=h
        ) as again:
            assert again.status_code == 200
        for response, _ in opened:
            response.close()
    wait_until(lambda: cluster_redis.zcard(f"sg:subs:{user_id}") == 0, timeout=15)
