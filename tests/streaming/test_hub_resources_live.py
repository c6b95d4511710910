"""What idle subscribers cost a worker, read from the outside.

Fifty subscribers held open by another process: each worker's Redis connections (counted from
``/proc``, cross-checked with Redis ``CLIENT LIST``) stay what they were with a handful, because a
subscriber is a queue in the worker, fed by the worker's one pub/sub connection. Then that
process is killed: the workers notice the hang-ups and release every subscription (the
``streamgate_active_subscribers`` gauge, summed over the workers, and the per-user subscription
sets in Redis) well within two heartbeat intervals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.support.hub import active_subscribers
from tests.support.live import hub_readers
from tests.support.processes import connections_to, stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

HEARTBEAT_S = 20  # long on purpose: release must not wait for a heartbeat write

# A client process holding ``count`` hub connections open: it prints one line per connection
# once the server's first flush arrived, then waits to be killed.
HOLDER = textwrap.dedent("""
    import socket, sys, time
    port, count = int(sys.argv[1]), int(sys.argv[2])
    paths, tokens = sys.argv[3::2], sys.argv[4::2]
    held = []
    for i in range(count):
        k = i % len(paths)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((f"GET {paths[k]} HTTP/1.1\\r\\nHost: x\\r\\n"
                   f"Authorization: Bearer {tokens[k]}\\r\\n\\r\\n").encode())
        got = b""
        while b"connected" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("closed: " + got.decode(errors="replace"))
            got += chunk
        held.append(s)
        print(i, flush=True)
    time.sleep(3600)
""")


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {"SSE_HEARTBEAT_S": str(HEARTBEAT_S), "SSE_MAX_SUBSCRIPTIONS_PER_USER": "100"}


def _hold(live: Any, count: int, channels: list[tuple[str, str]]) -> subprocess.Popen[str]:
    port = live.url.rsplit(":", 1)[1]
    args = [arg for channel, token in channels for arg in (f"/v1/events?channel={channel}", token)]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, port, str(count), *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for expected in range(count):  # bounded: one line per connection
        line = proc.stdout.readline()
        assert line.strip() == str(expected), f"holder failed at {expected}: {line!r}"
    return proc


def _worker_connections(live: Any, redis_port: int) -> dict[int, int]:
    """Established TCP connections to Redis held by each gunicorn worker (from /proc)."""
    workers = live.workers()
    assert len(workers) == 2
    return connections_to(workers, redis_port)


def _hubs(redis: Any, workers: list[int]) -> list[str]:
    """The workers' pub/sub connections in Redis ``CLIENT LIST`` (``sg-hub:<pid>``), one entry
    per connection: a worker with two would show twice."""
    return hub_readers(redis, workers)


def test_idle_subscribers_share_the_workers_redis_connections_and_are_released_on_hang_up(
    live: Any,
    live_user: Any,
    redis: Any,
    redis_server: Any,
) -> None:
    users = [live_user() for _ in range(5)]
    channels = [(f"users/{u.id}", h["Authorization"].removeprefix("Bearer ")) for u, h in users]
    workers = live.workers()
    holders: list[subprocess.Popen[str]] = []
    try:
        with live.client() as client:
            # Warm both workers up (pub/sub reader, keeper, pool): which worker accepts a
            # connection is the kernel's choice, so hold a few more until both have some.
            for _ in range(20):
                holders.append(_hold(live, 5, channels))
                if _hubs(redis, workers) == sorted(f"sg-hub:{pid}" for pid in workers):
                    break
            assert _hubs(redis, workers) == sorted(f"sg-hub:{pid}" for pid in workers)
            warm = 5 * len(holders)
            wait_until(lambda: active_subscribers(client) == warm)
            before = _worker_connections(live, redis_server.port)

            holders.append(_hold(live, 50, channels))
            wait_until(lambda: active_subscribers(client) == warm + 50)
            during = _worker_connections(live, redis_server.port)
            print(
                f"redis connections per worker: {warm} subscribers {before}, "
                f"{warm + 50} subscribers {during}"
            )
            assert _hubs(redis, workers) == sorted(f"sg-hub:{pid}" for pid in workers)  # one each
            assert all(during[pid] <= before[pid] for pid in workers), (before, during)  # flat
            held = sum(len(redis.zrange(f"sg:subs:{u.id}", 0, -1)) for u, _ in users)
            assert held == warm + 50

            for holder in holders:
                stop_process(holder, signal.SIGKILL)
            # Released long before two heartbeats: the workers watch for the hang-up itself.
            wait_until(lambda: active_subscribers(client) == 0, timeout=2 * HEARTBEAT_S)
            wait_until(
                lambda: all(redis.zcard(f"sg:subs:{u.id}") == 0 for u, _ in users),
                timeout=2 * HEARTBEAT_S,
            )
            after = _worker_connections(live, redis_server.port)
            # All hang up at once: released in batches, so a worker's pool gains at most the
            # connection of its one batch writer and of an overlapping keeper round.
            assert all(after[pid] <= before[pid] + 2 for pid in workers), (before, after)
    finally:
        for holder in holders:
            stop_process(holder, signal.SIGKILL)
            if holder.stdout is not None:
                holder.stdout.close()
