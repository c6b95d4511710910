"""Idle hub connections held by the worker's hub, not by a greenlet each (``streaming.takeover``),
on real gunicorn gevent workers with real clients.

Once a subscriber is idle its connection is handed over (the ``streamgate_hub_owned_subscribers``
gauge counts it), and from the client's side nothing changes:

- it still gets pings while idle, then every later event once and in order, the terminal event
  and a properly ended chunked response;
- hanging up releases its subscription slot (the per-user cap lets a new one in) and the gauges;
- its token expiring, an admin revoking its user, and its worker exiting end it properly;
- a reader that stops reading, with a small receive buffer, still gets every event exactly once;
- and it no longer holds one of gunicorn's ``worker_connections``: with 4 per worker, a dozen
  idle subscribers are open and the server still answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
import httpx
import pytest

from bench.fake_upstream import expected_text
from tests.support import hub
from tests.support.config import PASSWORD
from tests.support.live import metric_sum
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

OWNED = "streamgate_hub_owned_subscribers"
ACTIVE = "streamgate_active_subscribers"


@pytest.fixture()
def live_overrides(request: pytest.FixtureRequest) -> dict[str, str]:
    """This module's server, unless a test is parametrized with its own."""
    given: dict[str, str] | None = getattr(request, "param", None)
    return given or {
        "SSE_HEARTBEAT_S": "0.5",
        "SSE_MAX_SUBSCRIPTIONS_PER_USER": "2",
        "JWT_ACCESS_TTL_S": "4",  # tokens from a login on the live server (the expiry test)
    }


def _owned(live: Any) -> float:
    return metric_sum(live.url, OWNED)


def _idle(live: Any) -> bool:
    return _owned(live) == 0 and metric_sum(live.url, ACTIVE) == 0


def _in_thread(fn: Callable[[], hub.Reading], out: list[hub.Reading]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread


def test_a_handed_over_subscriber_gets_pings_then_every_event_and_a_proper_end(
    live: Any, live_user: Any
) -> None:
    _, headers = live_user()
    owned_at_first_ping: list[float] = []

    def note(event: Any) -> bool:
        if event.event == "ping" and not owned_at_first_ping:
            owned_at_first_ping.append(_owned(live))
        return False  # read on until the server ends the response

    with live.client() as client:
        # The first token is held back: the subscriber waits, idle, and is handed over.
        started = hub.start_stream(client, headers, tokens=60, delay_ms=5, first_delay_ms=2000)
        reading = hub.read_hub(
            client, started["channel"], headers, skip_pings=False, stop_when=note
        )
    assert owned_at_first_ping == [1]  # its pings came from the hub, not from a greenlet
    names = [e.event for e in reading.events]
    assert "ping" in names[: names.index("token")]
    # httpx reads a chunked body to its last chunk, or raises: eof is a properly ended response.
    assert reading.eof and reading.names[-1] == "stream.completed"
    tokens = [e for e in reading.events if e.event != "ping"]
    assert hub.text_of(tokens) == expected_text(60)
    hub.assert_continuous(tokens)
    assert len(set(reading.ids)) == len(reading.ids)
    assert reading.headers["connection"] == "close"  # no request follows on this connection
    wait_until(lambda: _idle(live))


def test_a_hang_up_of_a_handed_over_subscriber_frees_its_slot(
    live: Any, live_user: Any, redis: Any
) -> None:
    user, headers = live_user()
    url = f"{live.url}/v1/events?channel=users/{user.id}"
    with httpx.Client(timeout=30) as client:
        opened = hub.open_subscriptions(client, url, headers, 2)
        wait_until(lambda: _owned(live) == 2)
        assert client.get(url, headers=headers).status_code == 429  # the cap: 2
        opened.pop()[0].close()  # one client hangs up
        wait_until(lambda: _owned(live) == 1 and metric_sum(live.url, ACTIVE) == 1)
        wait_until(lambda: redis.zcard(f"sg:subs:{user.id}") == 1)
        with client.stream("GET", url, headers=headers) as again:
            assert again.status_code == 200
        opened.pop()[0].close()
    wait_until(lambda: _idle(live))
    wait_until(lambda: redis.zcard(f"sg:subs:{user.id}") == 0)


def test_a_handed_over_subscriber_ends_when_its_token_expires(live: Any, live_user: Any) -> None:
    import jwt as pyjwt

    user, _ = live_user()
    with live.client() as client:
        with live.app.app_context():
            slug = hub.tenant_of(user).slug
        login = client.post(
            "/v1/auth/login", json={"tenant": slug, "email": user.email, "password": PASSWORD}
        )
        token = login.json()["access_token"]
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    headers = {"Authorization": "Bearer " + token}
    reader: list[hub.Reading] = []
    thread = _in_thread(
        lambda: hub.read_live(live, f"users/{user.id}", headers, skip_pings=False), reader
    )
    wait_until(lambda: _owned(live) == 1)
    thread.join(30)
    assert not thread.is_alive()
    (reading,) = reader
    assert reading.status == 200 and reading.eof  # ended by the server, properly
    pings = [e.data["time"] for e in reading.events if e.event == "ping"]
    assert len(pings) >= 2 and max(pings) <= exp  # pinged while held; nothing after exp
    wait_until(lambda: _idle(live))


def test_an_admin_revoking_the_user_ends_a_handed_over_subscriber(
    live: Any, live_user: Any, make_user: Callable[..., Any], auth_headers: Callable[..., Any]
) -> None:
    user, headers = live_user()
    with live.app.app_context():
        admin = auth_headers(make_user(hub.tenant_of(user), role="admin"))
    reader: list[hub.Reading] = []
    thread = _in_thread(lambda: hub.read_live(live, f"users/{user.id}", headers), reader)
    wait_until(lambda: _owned(live) == 1)
    with live.client() as client:
        revoked = client.post(
            f"/v1/admin/users/{user.id}/revoke", json={"reason": "policy"}, headers=admin
        )
        assert revoked.status_code == 202, revoked.text
    thread.join(30)
    assert not thread.is_alive() and reader[0].eof
    wait_until(lambda: _idle(live))


def test_a_worker_that_exits_ends_its_held_connections_properly(
    live: Any, live_user: Any, redis: Any
) -> None:
    """A restart (SIGTERM to the workers; the master starts new ones) ends each held response
    with its last chunk, so the client sees a finished stream and reconnects, and releases it."""
    user, headers = live_user()
    reader: list[hub.Reading] = []
    thread = _in_thread(lambda: hub.read_live(live, f"users/{user.id}", headers), reader)
    wait_until(lambda: _owned(live) == 1)
    for pid in live.workers():
        os.kill(pid, signal.SIGTERM)
    thread.join(30)
    assert not thread.is_alive() and reader[0].eof  # a clean end, not a cut connection
    wait_until(lambda: redis.zcard(f"sg:subs:{user.id}") == 0)


@pytest.mark.parametrize("live_overrides", [{"SSE_HEARTBEAT_S": "5"}], indirect=True)
def test_a_slow_reader_handed_over_gets_every_event_exactly_once(live: Any, live_user: Any) -> None:
    from streaming.hub import hub as event_hub

    user, headers = live_user()
    port = int(live.url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=f"/v1/events?channel=users/{user.id}",
        headers=[("Host", "127.0.0.1"), ("Authorization", headers["Authorization"])],
    )
    sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
    body = _Body(conn, sock)
    assert body.response.status_code == 200
    body.read_until(lambda: any(f.startswith(b": connected") for f in body.frames))
    wait_until(lambda: _owned(live) == 1)

    # ~6 MB of events, far more than the kernel buffers between the two, while nobody reads
    # (for less than a heartbeat: the kernel's TCP_USER_TIMEOUT is one).
    payloads = [{"n": n, "fill": f"{n:03d}" * 33_000} for n in range(60)]
    with live.app.app_context():
        published = [
            event_hub.publish(p, type="note", channel=f"users/{user.id}") for p in payloads
        ]
    time.sleep(2)

    def notes() -> list[bytes]:
        return [f for f in body.frames if f.startswith(b"event: note")]

    body.read_until(lambda: len(notes()) >= len(payloads))
    events = [_parse(f) for f in notes()]
    assert [entry_id for entry_id, _ in events] == published  # each once, in order
    assert [data for _, data in events] == payloads
    sock.close()
    wait_until(lambda: _idle(live))


class _Body:
    """An HTTP/1.1 event stream read with h11 from a raw socket (h11 checks the chunk framing),
    split into SSE frames as they complete."""

    def __init__(self, conn: h11.Connection, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock
        self.frames: list[bytes] = []
        self.rest = b""
        event = self._next()
        assert isinstance(event, h11.Response), event
        self.response = event

    def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def read_until(self, done: Callable[[], bool]) -> None:
        while not done():
            event = self._next()
            assert isinstance(event, h11.Data), event
            *complete, self.rest = (self.rest + bytes(event.data)).split(b"\n\n")
            self.frames += complete


def _parse(frame: bytes) -> tuple[str, dict[str, Any]]:
    fields = dict(line.split(": ", 1) for line in frame.decode().split("\n") if ": " in line)
    return fields["id"], json.loads(fields["data"])


@pytest.mark.parametrize(
    "live_overrides",
    [{"WORKER_CONNECTIONS": "4", "SSE_MAX_SUBSCRIPTIONS_PER_USER": "50"}],
    indirect=True,
)
def test_idle_subscribers_do_not_hold_the_workers_connection_slots(
    live: Any, live_user: Any
) -> None:
    """Each worker serves at most 4 connections at once (a greenlet each); idle subscribers,
    held by the hub, are not among them."""
    user, headers = live_user()
    port = int(live.url.rsplit(":", 1)[1])
    held = []
    for _ in range(12):  # more than the 2 x 4 slots
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            f"GET /v1/events?channel=users/{user.id} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
        )
        got = b""
        while b"connected" not in got:  # a socket timeout here: the server stopped accepting
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        held.append(sock)
    wait_until(lambda: _owned(live) == 12)
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
    for sock in held:
        sock.close()
    wait_until(lambda: _idle(live))
