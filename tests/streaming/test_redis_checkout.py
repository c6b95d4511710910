"""A Redis command under gevent is sent without first waiting a turn of the event loop.

redis-py checks each connection it hands out for leftover data with ``select.poll``; under
gevent's monkey-patching that poll yields to the loop even with a zero timeout, so every command
and pipeline waited one whole iteration of a busy worker's loop before it was sent. The pools of
``core.store`` answer that check with the operating system's poll. Run in a gevent-patched
process, as a gunicorn worker is, counting the cooperative polls made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.processes import RedisServer

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()
    import json, select, sys

    import redis

    from core.store import RedisTarget, redis_client, writer_client

    cooperative = select.poll
    polls = [0]

    def counting_poll():
        polls[0] += 1
        return cooperative()

    select.poll = counting_poll
    url = sys.argv[1]
    ours = redis_client(RedisTarget(url), 4, 1.0)
    clients = {
        "pool": ours,
        "writer": writer_client(ours),
        "library": redis.Redis.from_url(url),
    }
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
)


@pytest.fixture()
def probe(redis_server: RedisServer) -> dict[str, dict[str, int]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, redis_server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, dict[str, int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_commands_and_pipelines_of_our_pools_never_poll_cooperatively(
    probe: dict[str, dict[str, int]],
) -> None:
    assert probe["pool"] == {"polls": 0, "ok": True}
    assert probe["writer"] == {"polls": 0, "ok": True}  # the log writer's own connection


def test_the_library_pool_does_so_once_per_command(probe: dict[str, dict[str, int]]) -> None:
    # The control: what the pools above no longer do (51 = 50 commands and one pipeline).
    assert probe["library"] == {"polls": 51, "ok": True}
