"""Two gunicorn masters on one Redis (or one Redis Cluster): SSE readers on threads, stream
starters, and what is left of a stream in Redis. Shared by tests/e2e/test_multinode.py and
tests/cluster/."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.support.live import LiveServer
from tests.support.tokens import user_headers

SLOW = "go [[fake infinite=1 delay_ms=20]]"
READ_TIMEOUT_S = 30  # every read below ends by then at the latest


@dataclass
class Nodes:
    """Two gunicorn masters on one Redis and one database; rows are made through node a's app."""

    a: LiveServer
    b: LiveServer

    def people(self, make_tenant: Any, make_user: Any) -> dict[str, Any]:
        """A tenant with an admin and a member; their ids and auth headers."""
        with self.a.app.app_context():
            tenant = make_tenant()
            admin, member = make_user(tenant, role="admin"), make_user(tenant)
            return {
                "admin_id": admin.id,
                "member_id": member.id,
                "slug": tenant.slug,
                "member_email": member.email,
                "admin_h": user_headers(admin),
                "member_h": user_headers(member),
            }


@dataclass
class Reader:
    """An SSE response read to its end on a thread (hub subscription or direct-mode stream)."""

    base_url: str
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    eof: bool = False
    error: BaseException | None = None
    opened: threading.Event = field(default_factory=threading.Event)
    got_token: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Reader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(READ_TIMEOUT_S), "no response"
        assert self.status == 200, (self.status, self.error)
        return self

    def _run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=READ_TIMEOUT_S) as client,
                connect_sse(
                    client,
                    self.method,
                    self.path,
                    params=self.params,
                    headers=self.headers,
                    json=self.body,
                ) as source,
            ):
                self.status = source.response.status_code
                self.response_headers = dict(source.response.headers)
                self.opened.set()
                if self.status != 200:
                    return
                for sse in source.iter_sse():
                    if sse.data == "" or sse.event == "ping":
                        continue
                    self.events.append((sse.event, sse.data))
                    if (
                        sse.event == "token"
                        or '"content":"' in sse.data
                        and '"content":""' not in sse.data
                    ):
                        self.got_token.set()
                self.eof = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.opened.set()

    def finish(self) -> Reader:
        """Wait for the server to end the response."""
        assert self.thread is not None
        self.thread.join(READ_TIMEOUT_S)
        assert not self.thread.is_alive(), "the response is still open"
        assert self.error is None, self.error
        assert self.eof
        return self

    @property
    def last(self) -> tuple[str, dict[str, Any]]:
        event, data = self.events[-1]
        return event, json.loads(data)


def subscribe(node: LiveServer, channel: str, headers: dict[str, str]) -> Reader:
    return Reader(node.url, "GET", "/v1/events", headers, params={"channel": channel}).start()


def start_channel(node: LiveServer, headers: dict[str, str]) -> str:
    body = {
        "model": "fake-model",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": SLOW}],
    }
    with node.client() as client:
        response = client.post("/v1/streams", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def followed_across(nodes: Nodes, headers: dict[str, str]) -> tuple[str, Reader]:
    """A channel stream started on node A, and a subscriber on node B once it has had a token."""
    stream_id = start_channel(nodes.a, headers)
    subscriber = subscribe(nodes.b, f"streams/{stream_id}", headers)
    assert subscriber.got_token.wait(READ_TIMEOUT_S)
    return stream_id, subscriber


def start_direct(node: LiveServer, headers: dict[str, str]) -> Reader:
    body = {
        "model": "fake-model",
        "max_tokens": 4000,
        "stream": True,
        "messages": [{"role": "user", "content": SLOW}],
    }
    return Reader(node.url, "POST", "/v1/chat/completions", headers, body=body).start()


def admin_revoke(node: LiveServer, stream_id: str, people: dict[str, Any]) -> Any:
    """``people``'s admin revokes ``stream_id`` through ``node`` (reason "runaway"); a 202."""
    with node.client() as client:
        response = client.post(
            f"/v1/admin/streams/{stream_id}/revoke",
            json={"reason": "runaway"},
            headers=people["admin_h"],
        )
    assert response.status_code == 202, response.text
    return response


def holders_of(redis: Any, stream_id: str) -> list[str]:
    """Every sorted set that still has the stream as a member (live set, concurrency leases)."""
    found = []
    for key in redis.scan_iter(count=1000):
        if redis.type(key) == "zset" and redis.zscore(key, stream_id) is not None:
            found.append(key)
    return found
