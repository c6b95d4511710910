"""A stream log's tail lost to asynchronous replication is appended again, with the same ids.

A channel stream runs (the fake upstream never ends it); once its log exists, the replica of the
master serving the log is paused (SIGSTOP) and its replication link cut, so the stream's next
entries, its cancel and its terminal event are acknowledged by the master alone, published to
live subscribers, and never reach the replica. The master is killed and the paused replica
resumed and promoted without them. The worker's log writer, which kept what it appended, sees the
topology epoch move, finds the log's newest entry older than its own last one and re-appends the
rest: a reader replaying from scratch, or resuming from before the cut, gets the whole stream with
the ids live subscribers saw. Its own cluster (a node is lost for good).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from scripts.redis_cluster import LocalCluster
from tests.support.hub import TERMINAL, open_hub, stream_body
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster

Entry = tuple[str, str, dict[str, Any]]  # id, event name, data


@pytest.fixture()
def served_app(cluster_app: Any) -> Any:
    """The cluster's app with the hub's dispatcher and the control bus (the cancel) running."""
    from streaming.services import start_services

    start_services(cluster_app)  # stopped with the app
    return cluster_app


def _confirmed(pubsub: Any) -> bool:
    message = pubsub.get_message(timeout=0.2)
    return message is not None and message["type"] == "psubscribe"


def _published(pubsub: Any, channel: str) -> list[Entry]:
    """What a live subscriber of ``channel`` heard, up to its terminal event."""
    heard: list[Entry] = []

    def terminal_heard() -> bool:
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == "pmessage":
            if message["channel"] == "sg:ev:" + channel:
                entry_id, event, data = message["data"].split("\n", 2)
                heard.append((entry_id, event, json.loads(data)))
        return bool(heard) and heard[-1][1] in TERMINAL

    wait_until(terminal_heard, timeout=30, interval=0)
    return heard


def test_a_stream_log_tail_lost_in_a_failover_is_appended_again_with_its_ids(
    cluster: LocalCluster, served_app: Any, make_user: Any, auth_headers: Any
) -> None:
    from streaming.log import log_key

    client = served_app.test_client()
    headers = auth_headers(make_user())
    # Live subscribers on every node: whichever two are paused and killed, one hears it all.
    listeners = {port: cluster.node(port).pubsub() for port in cluster.ports}
    for pubsub in listeners.values():
        pubsub.psubscribe("sg:ev:streams/*")
    try:
        for pubsub in listeners.values():
            wait_until(lambda p=pubsub: _confirmed(p), timeout=10, interval=0)
        created = client.post(
            "/v1/streams", headers=headers, json=stream_body(infinite=1, delay_ms=20)
        ).get_json()
        channel, stream_id = created["channel"], created["id"]
        key = log_key(channel)
        master = cluster.master_of_key(key)
        replica = cluster.replica_of(master)
        bystander = next(p for p in cluster.ports if p not in (master, replica))
        primary = cluster.node(master)
        try:
            wait_until(lambda: primary.xlen(key) >= 2)  # stream.started and a first token
            cluster.pause(replica)
            try:
                # Its link cut too: a paused process's socket would still buffer the writes.
                primary.client_kill_filter(_type="replica")
                cut = primary.xlen(key)
                wait_until(lambda: primary.xlen(key) >= cut + 3)  # tokens the master alone has
                cancelled = client.delete(f"/v1/streams/{stream_id}", headers=headers)
                assert cancelled.status_code == 202, cancelled.get_json()
                live = _published(listeners[bystander], channel)
                acknowledged = [
                    (entry_id, fields["e"], json.loads(fields["d"]))
                    for entry_id, fields in primary.xrange(key)
                ]
                assert live == acknowledged  # what live subscribers saw: the master's log
                assert acknowledged[-1][1] == "stream.cancelled"
                assert len(acknowledged) - cut >= 4  # written after the cut: lost with the master
                cluster.kill(master)
            finally:
                cluster.pause(replica, paused=False)
        finally:
            primary.close()
    finally:
        for pubsub in listeners.values():
            pubsub.close()
    wait_until(lambda: cluster.roles().get(replica) == "master", timeout=30)

    def replayed(last_event_id: str | None = None) -> list[Entry] | None:
        """A fresh hub reader's events, once it got to the terminal one (None before)."""
        query = {} if last_event_id is None else {"last_event_id": last_event_id}
        try:
            reader = open_hub(client, channel, headers, **query)
            try:
                if reader.status != 200:
                    return None
                events = reader.read(until=lambda e: e.event in TERMINAL or e.event == "ping")
            finally:
                reader.close()
        except Exception:  # noqa: BLE001 - the cluster is still settling on its new master
            return None
        if not events or events[-1].event not in TERMINAL:
            return None  # the tail is not back (yet): the hub followed, then pinged
        return [(e.id, e.event, e.data) for e in events]

    started = time.monotonic()
    whole = wait_until(replayed, timeout=60, interval=0.2)
    assert whole == acknowledged, f"after {time.monotonic() - started:.1f} s"
    assert replayed(acknowledged[cut - 1][0]) == acknowledged[cut:]  # a resume from before the cut
    text = "".join(data["text"] for _, event, data in whole if event == "token")
    record = client.get(f"/v1/streams/{stream_id}", headers=headers).get_json()
    assert record["status"] == "cancelled" and record["text"] == text
    # What an operator sees: the entries appended again (at least the lost ones; a repair cut
    # short by the settling cluster is tried again and counts again).
    metrics = client.get("/metrics").get_data(as_text=True).splitlines()
    [repairs] = [
        line.split()[1] for line in metrics if line.startswith("streamgate_log_repairs_total ")
    ]
    assert float(repairs) >= len(acknowledged) - cut
