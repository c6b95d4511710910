"""Faults survived with nothing lost: Redis restarted mid-stream, a worker killed, a slow client.

Each test runs real gunicorn gevent workers and asserts what clients see, then that nothing leaked
(live entries, leases, subscriptions).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from bench.fake_upstream import FakeUpstream, expected_text
from tests.support.accounts import add_account
from tests.support.config import app_config, live_env
from tests.support.live import start_gunicorn
from tests.support.processes import start_redis, stop_process, worker_pids
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live
TERMINAL = {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}


class Node:
    """One gunicorn master with its own Redis (AOF on), a SQLite file and an in-process app."""

    def __init__(
        self, tmp_path: Path, upstream: FakeUpstream, db_url: str | None = None, **env: str
    ) -> None:
        from api import create_app
        from core.store import db

        self.tmp = tmp_path
        os.makedirs(tmp_path / "redis", exist_ok=True)
        self.redis = start_redis(
            ["--appendonly", "yes", "--appendfsync", "always"], workdir=str(tmp_path / "redis")
        )
        self.db_url = db_url or f"sqlite:///{tmp_path / 'node.db'}"
        self.app = create_app(app_config(self.redis.url, self.db_url, upstream.base_url))
        self.ctx = self.app.app_context()
        self.ctx.push()
        db.create_all()
        self.env = live_env(self.redis.url, self.db_url, upstream.base_url, **env)
        self.url, self.proc = start_gunicorn(self.env, tmp_path / "gunicorn.log")

    def restart_redis(self, down_s: float = 1.0) -> None:
        stop_process(self.redis.proc)
        time.sleep(down_s)
        self.redis = start_redis(
            ["--appendonly", "yes", "--appendfsync", "always"],
            port=self.redis.port,
            workdir=self.redis.workdir,
        )

    def close(self) -> None:
        from core.store import db
        from streaming.control import stop_services

        stop_process(self.proc)
        stop_services(self.app)
        with contextlib.suppress(Exception):  # its connection may have died with the database
            db.session.remove()
        db.engine.dispose()
        self.ctx.pop()
        stop_process(self.redis.proc)


@pytest.fixture()
def node(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Node]:
    server = Node(
        tmp_path, fake_upstream, SSE_HEARTBEAT_S="1", LEASE_TTL_S="3", SSE_SEND_TIMEOUT_S="3"
    )
    yield server
    server.close()


def headers_for(node: Node, role: str = "member") -> tuple[Any, dict[str, str]]:
    from argon2 import PasswordHasher

    from auth.tokens import issue_user_tokens

    hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("x")
    tenant, user = add_account(
        f"t-{time.monotonic_ns()}", "T", email="u@example.com", role=role, password_hash=hashed
    )
    token = issue_user_tokens(user_id=user.id, tenant_id=tenant.id, role=role)["access_token"]
    return user, {"Authorization": "Bearer " + token}


def read_resuming(
    url: str, channel: str, headers: dict[str, str], deadline_s: float = 60
) -> dict[str, Any]:
    """Follow a channel to its terminal event, resuming with Last-Event-ID whenever cut off."""
    seen: list[tuple[str, str, dict[str, Any]]] = []
    last: str | None = None
    reconnects = 0
    statuses: list[int] = []
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=15)) as client:
        while time.monotonic() < deadline:
            hdrs = dict(headers)
            if last:
                hdrs["Last-Event-ID"] = last
            try:
                with connect_sse(
                    client, "GET", f"/v1/events?channel={channel}", headers=hdrs
                ) as source:
                    statuses.append(source.response.status_code)
                    if source.response.status_code != 200:
                        time.sleep(0.3)
                        continue
                    for event in source.iter_sse():
                        if event.event == "ping" or not event.data:
                            continue  # heartbeats, and the retry-only frame sent on open
                        last = event.id
                        seen.append((event.id, event.event, json.loads(event.data)))
                        if event.event in TERMINAL:
                            return {"events": seen, "reconnects": reconnects, "statuses": statuses}
            except httpx.HTTPError:
                pass
            reconnects += 1
            time.sleep(0.2)
    return {"events": seen, "reconnects": reconnects, "statuses": statuses}


def start_followed(
    node: Node, headers: dict[str, str], directive: str
) -> tuple[dict[str, Any], threading.Thread, dict[str, Any]]:
    """Start a channel-mode stream and a reader that follows it (resuming) on a thread."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": directive}]}
    response = httpx.post(node.url + "/v1/streams", json=body, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    stream = response.json()
    result: dict[str, Any] = {}
    reader = threading.Thread(
        target=lambda: result.update(read_resuming(node.url, stream["channel"], headers))
    )
    reader.start()
    return stream, reader, result


def test_redis_restart_mid_stream_continues_or_fails_cleanly(node: Node) -> None:
    user, headers = headers_for(node)
    stream, reader, result = start_followed(node, headers, "[[fake tokens=80 delay_ms=50]]")
    wait_until(lambda: streamed_tokens(node, stream["id"]) > 0, timeout=20)  # mid-stream
    node.restart_redis(down_s=1.0)
    reader.join(90)
    events = result["events"]
    ids = [entry for entry, _, _ in events]
    assert len(ids) == len(set(ids)), "a resumed subscriber saw an event twice"
    terminal = events[-1][1]
    assert terminal in {"stream.completed", "stream.failed"}, events[-3:]
    text = "".join(payload["text"] for _, name, payload in events if name == "token")
    if terminal == "stream.completed":
        assert text == expected_text(80)
    else:
        assert events[-1][2]["error"]["code"], events[-1]
        assert expected_text(80).startswith(text)
    # Admission recovers once Redis is back: a new stream runs to completion.
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "[[fake tokens=5]]"}]}
    again = wait_until(lambda: _post_ok(node, headers, body), timeout=20)
    final = read_resuming(node.url, again["channel"], headers)
    assert final["events"][-1][1] == "stream.completed"
    # Nothing left running or leased.
    wait_until(lambda: node.redis.client().zcard("sg:live") == 0, timeout=15)


def streamed_tokens(node: Node, stream_id: str) -> int:
    """Tokens the run has generated so far, as its worker last recorded in Redis."""
    return int(node.redis.client().hget(f"sg:st:{stream_id}", "tokens") or 0)


def _post_ok(node: Node, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any] | None:
    response = httpx.post(node.url + "/v1/streams", json=body, headers=headers, timeout=10)
    return response.json() if response.status_code == 202 else None


def test_worker_killed_mid_generation_is_reaped_and_subscribers_told(node: Node) -> None:
    _, headers = headers_for(node)
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "[[fake tokens=400 delay_ms=50]]"}],
    }
    response = httpx.post(node.url + "/v1/streams", json=body, headers=headers, timeout=10)
    assert response.status_code == 202
    stream = response.json()
    result: dict[str, Any] = {}
    reader = threading.Thread(
        target=lambda: result.update(read_resuming(node.url, stream["channel"], headers))
    )
    reader.start()
    wait_until(lambda: streamed_tokens(node, stream["id"]) > 0, timeout=20)
    # Kill every worker: whichever ran the generation dies without a chance to clean up.
    for pid in worker_pids(node.proc.pid):
        os.kill(pid, signal.SIGKILL)
    reader.join(60)
    events = result["events"]
    assert events[-1][1] == "stream.failed", events[-2:]
    assert events[-1][2]["error"]["code"] == "worker_lost"
    from core.store import db
    from streaming.models import StreamRecord

    def record_failed() -> bool:
        db.session.expire_all()
        record = db.session.get(StreamRecord, stream["id"])
        return record is not None and record.status == "failed"

    wait_until(record_failed, timeout=15)
    assert node.redis.client().zcard("sg:live") == 0


def test_a_client_that_never_reads_is_dropped_and_released(node: Node) -> None:
    """A subscriber that stops reading is disconnected; its subscription slot is freed."""
    user, headers = headers_for(node)
    # ~8 MB of events: more than the kernel's socket buffers can absorb for a reader that stops.
    body = {
        "model": "fake-model",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "[[fake tokens=4096 pad=2000]]"}],
    }
    response = httpx.post(node.url + "/v1/streams", json=body, headers=headers, timeout=10)
    stream = response.json()
    import socket

    sock = socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1])))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = (
        f"GET /v1/events?channel={stream['channel']} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {headers['Authorization']}\r\n\r\n"
    )
    sock.sendall(request.encode())
    key = f"sg:subs:{user.id}"
    client = node.redis.client()
    wait_until(lambda: client.zcard(key) == 1, timeout=10)
    # Never read. The stream finishes; the server cannot deliver; the slot must still be freed.
    wait_until(lambda: client.zcard(key) == 0, timeout=60)
    sock.close()


def test_database_outage_during_a_stream_keeps_tokens_flowing(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """PostgreSQL stops mid-stream: tokens keep flowing, the record is written when it returns."""
    from scripts import pg_test_cluster as pg

    try:
        pg.server_bindir()
    except SystemExit:
        pytest.skip("PostgreSQL server binaries are not installed")
    cluster = Path(tempfile.mkdtemp(prefix="sg-pg-"))  # postgres (not root) must traverse it
    url = pg.start(cluster)
    node = Node(tmp_path, fake_upstream, db_url=url, SSE_HEARTBEAT_S="1", LEASE_TTL_S="3")
    try:
        _, headers = headers_for(node)
        stream, reader, result = start_followed(node, headers, "[[fake tokens=60 delay_ms=50]]")
        wait_until(lambda: streamed_tokens(node, stream["id"]) > 0, timeout=20)  # mid-stream
        pg.pause(cluster)
        # While the database is down, requests that need it say so (never a 500).
        during = httpx.get(node.url + f"/v1/streams/{stream['id']}", headers=headers, timeout=10)
        assert during.status_code == 503, during.text
        assert during.json()["error_code"] == "database_unavailable"
        reader.join(60)
        events = result["events"]
        assert events[-1][1] == "stream.completed"
        assert "".join(p["text"] for _, n, p in events if n == "token") == expected_text(60)
        client = node.redis.client()
        wait_until(lambda: client.llen("sg:pending-records") == 1, timeout=10)
        pg.resume(cluster)
        wait_until(lambda: client.llen("sg:pending-records") == 0, timeout=20)
        after = httpx.get(node.url + f"/v1/streams/{stream['id']}", headers=headers, timeout=10)
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "completed"
        assert after.json()["usage"]["completion_tokens"] == 60
    finally:
        node.close()
        pg.stop(cluster)


def test_a_run_starting_while_redis_is_down_waits_for_it_instead_of_failing(node: Node) -> None:
    # A stream admitted just before Redis went away (a restart, a Cluster failover) takes its
    # model-server lease when its run starts: that must ride the outage out (REDIS_RETRY_S,
    # 5 s by default), as the run's log appends do, not fail the stream at once.
    from streaming import failover
    from tests.support.hub import channel_generation

    gen = channel_generation("ten_x", "usr_x", "jti_x", prompt_estimate=1)
    gen.request = {
        "model": "fake-model",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "[[fake tokens=3]]"}],
    }
    stop_process(node.redis.proc)
    back = threading.Timer(1.0, node.restart_redis, kwargs={"down_s": 0.0})
    back.start()
    try:
        chunks = failover.open_stream(node.app, gen, lambda p, req: p.stream(req))
        text = "".join(chunk.text for chunk in chunks)
    finally:
        back.join(30)
    assert text == expected_text(3)
    assert gen.upstream_attempts == 1
