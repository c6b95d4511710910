"""A Redis command under gevent is sent without first waiting a turn of the event loop.

redis-py checks each connection it hands out for leftover data with ``select.poll``; under
gevent's monkey-patching that poll yields to the loop even with a zero timeout, so every command
and pipeline waited one whole iteration of a busy worker's loop before it was sent. The pools of
``core.store`` answer that check with the operating system's poll (``core.io``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.gevent_probe import run_patched
from tests.support.processes import RedisServer

PROBE = """
import redis

from core.store import RedisTarget, redis_client, writer_client

url = sys.argv[1]
ours = redis_client(RedisTarget(url), 4, 1.0)
clients = {"pool": ours, "writer": writer_client(ours), "library": redis.Redis.from_url(url)}
found = {}
for name, client in clients.items():
    client.set("probe", "1")
    polls[0] = 0
    values = [client.get("probe") for _ in range(50)]
    pipe = client.pipeline(transaction=False)
    pipe.get("probe")
    values += pipe.execute()
    found[name] = {"polls": polls[0], "ok": sorted(set(values)) == [b"1"]}
print(json.dumps(found))
"""


@pytest.fixture()
def probe(redis_server: RedisServer) -> Any:
    return run_patched(PROBE, redis_server.url)


def test_commands_and_pipelines_of_our_pools_never_poll_cooperatively(probe: Any) -> None:
    assert probe["pool"] == {"polls": 0, "ok": True}
    assert probe["writer"] == {"polls": 0, "ok": True}  # the log writer's own connection


def test_the_library_pool_does_so_once_per_command(probe: Any) -> None:
    # The control: what the pools above no longer do (51 = 50 commands and one pipeline).
    assert probe["library"] == {"polls": 51, "ok": True}


READER_PROBE = """
import redis

from core.store import RedisTarget, reader_client

url = sys.argv[1]
publisher = redis.Redis.from_url(url)
found = {}
for name, client in {
    "ours": reader_client(RedisTarget(url), "probe-reader"),
    "library": redis.Redis.from_url(url, socket_timeout=None),
}.items():
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("probe-topic")
    while pubsub.get_message(timeout=5) is not None or not pubsub.subscribed:
        pass  # the subscription confirmed
    polls[0] = 0
    got = []
    for i in range(20):
        publisher.publish("probe-topic", str(i))
        message = None
        while message is None:
            message = pubsub.get_message(timeout=5)
        got.append(int(message["data"]))
    found[name] = {"polls": polls[0], "got": got}
    pubsub.close()
print(json.dumps(found))
"""


def test_the_hub_readers_pub_sub_waits_once_per_read(redis_server: RedisServer) -> None:
    """Before each read of a message it has not buffered, redis-py waits for the socket (a
    cooperative poll: the wait itself) and then polls it once more, cooperatively, to tell data
    from a hang-up: a second turn of the loop per notification. The hub reader's connection
    tells them apart by reading."""
    found = run_patched(READER_PROBE, redis_server.url)
    assert found["ours"]["got"] == found["library"]["got"] == list(range(20))
    assert found["ours"]["polls"] <= 20  # at most the wait, once a message
    # The control: the wait and at least one more (redis-py 8.1 makes three a message).
    assert found["library"]["polls"] >= 40
