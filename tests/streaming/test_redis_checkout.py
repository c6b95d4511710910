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
