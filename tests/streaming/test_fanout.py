"""The dispatcher's direct writes to an idle subscriber's socket (``streaming.fanout``), on a real
socket pair: a live event arrives as one HTTP/1.1 chunk, an id already sent is not sent twice,
what ends the response is left to the subscriber's own greenlet, and a chunk the socket could
only half take is finished, byte for byte and in order, before anything after it.

The hub's behaviour end to end (exact text, resume, slow readers) is covered by the live hub
tests under gunicorn, where this path is on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from streaming import sse
from streaming.fanout import LiveSubscriber, flush_due
from streaming.generation import TERMINAL_EVENTS
from streaming.log import parse_id


def _item(entry_id: str, data: str, event: str = "token") -> tuple[Any, ...]:
    frame = sse.frame(data, event=event, id=entry_id)
    return (parse_id(entry_id), entry_id, event, frame, sse.http_chunk(frame))


Pair = tuple[LiveSubscriber, socket.socket]  # the subscriber, and the socket end that reads


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A subscriber whose socket is one end of a pair with small buffers; the other end reads."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours.setblocking(False)
    timed = ours.dup()  # the greenlet's view of the same socket: writes that wait, bounded
    timed.settimeout(5)
    sub = LiveSubscriber("streams/str_x", "usr_1", "jti", "ten_1", 64)
    sub.sock, sub.raw, sub.chunked, sub.terminal = timed, ours, True, TERMINAL_EVENTS
    sub.direct = True  # writes go straight to the socket, as on a live hub connection
    theirs.settimeout(5)
    yield sub, theirs
    for s in (timed, ours, theirs):
        s.close()


def _read(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += sock.recv(size - len(got))
    return got


def test_outside_gevent_the_direct_path_stays_off() -> None:
    sub = LiveSubscriber("streams/str_x", "usr_1", "jti", "ten_1", 64)
    with socket.socket() as sock:
        assert sub.attach(sock, "HTTP/1.1", TERMINAL_EVENTS) is False
    sub.offer(_item("1-0", "hi"))
    assert len(sub.items) == 1 and sub.wakeup.is_set()


def test_a_live_event_is_one_chunk_on_the_socket_and_wakes_nobody(pair: Pair) -> None:
    sub, client = pair
    event = _item("5-0", '{"text":" line\\n","index":0}')
    sub.offer(event)
    flush_due()  # the event loop's next turn, under gevent
    assert _read(client, len(event[4])) == event[4]
    assert not sub.items and not sub.wakeup.is_set()
    assert (sub.last_seen, sub.last_str) == ((5, 0), "5-0")
    sub.offer(_item("4-0", "older"))  # already sent (or replayed): dropped
    sub.offer(_item("5-0", "same"))
    assert not sub.items
    sub.chunked = False  # an HTTP/1.0 response: the frame alone
    plain = _item("6-0", "plain")
    sub.offer(plain)
    flush_due()
    assert _read(client, len(plain[3])) == plain[3]


def test_events_that_arrive_together_go_out_in_one_write(pair: Pair) -> None:
    sub, client = pair
    first, second = _item("10-0", "a"), _item("11-0", "b")
    sub.offer(first)
    sub.offer(second)
    assert sub.pending == [first[4], second[4]]
    flush_due()
    assert sub.pending is None
    assert _read(client, len(first[4]) + len(second[4])) == first[4] + second[4]


def test_what_ends_the_response_goes_to_the_subscribers_own_greenlet(pair: Pair) -> None:
    sub, client = pair
    before = _item("6-0", "last words")
    done = _item("7-0", "{}", event="stream.completed")
    sub.offer(before)
    sub.offer(done)  # what was pending goes out first, then the greenlet gets the end
    assert _read(client, len(before[4])) == before[4]
    assert list(sub.items) == [done] and sub.wakeup.is_set()


def test_a_half_sent_chunk_is_finished_before_anything_after_it(pair: Pair) -> None:
    sub, client = pair
    big = _item("8-0", "x" * 300_000)  # far more than the socket buffers take at once
    after = _item("9-0", "after")
    sub.offer(big)
    flush_due()
    assert sub.direct is False and isinstance(sub.items[0], bytes)
    assert sub.last_str == "8-0"  # its head is on the wire: never sent again
    sub.offer(after)  # queued behind the rest, for the greenlet
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read(client, len(big[4]))))
    reader.start()
    assert sub.wait(1) == [after]  # the rest of the chunk was written first
    reader.join(10)
    assert received == [big[4]]
