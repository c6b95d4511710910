"""Live hub events written straight to a waiting subscriber's socket by the worker's dispatcher.

A profile of one stream fanned out to 1,000 subscribers (``bench --scenario channel.fanout
--spy``) put ~30 us of gateway CPU on every delivery, and most of it was not the write: waking the
subscriber's greenlet (an event, a hub callback, a switch), a timer per wait, the generator chain
through Flask's and gunicorn's response iterators, and gunicorn framing the same bytes as an HTTP
chunk once per subscriber. Here the dispatcher, which already holds the event framed once for
every subscriber, also holds it framed once as an HTTP/1.1 chunk and, for a subscriber whose
greenlet is parked with nothing pending, makes one non-blocking ``send`` of those shared bytes:
no greenlet wakes.

Events that arrive while the dispatcher is busy are batched: a live event is only added to the
subscriber's pending bytes, and all pending bytes go out in one ``send`` per subscriber once the
dispatcher waits for its next message (the event loop's next turn). An idle hub sends each event
at once; a hub that falls behind (its pub/sub socket already holds several events) makes one
write per subscriber for all of them, as the greenlets' own batching did.

Only what cannot block or end the response goes this way. When the socket cannot take the whole
chunk now (a slow reader), the rest of it is queued, the greenlet wakes, finishes that chunk with
an ordinary (timed) write and from then on writes as before until it is idle again. Terminal
events, pings and the close go through the greenlet, which owns the response. One writer at a time
holds because both run on the worker's one event loop and the direct path never yields.

Once the hub holds an idle connection itself (``streaming.takeover``: there is no greenlet any
more), ``owned`` is set: the pending bytes go to its ``send`` (which keeps a slow reader's
backlog for a writer greenlet), and a terminal event or a close ends the response there.

The chunk framing is HTTP/1.1's: a response without ``Content-Length`` to an HTTP/1.1 request is
chunked (gunicorn's rule; ``sse.http_chunk`` frames it), an HTTP/1.0 response is the bare
bytes. Any other protocol, no gevent or no raw socket (in-process tests, another server): this
path is off and the subscriber behaves as before. gunicorn's ``--protocol uwsgi`` (bodies never
chunked) cannot be seen from the app: such a deployment sets ``HUB_DIRECT_WRITES=false``.
"""

from __future__ import annotations

from typing import Any

from streaming.control import Subscriber
from streaming.greenlets import soon, under_gevent
from streaming.log import EventId

# Framings the direct path knows: SERVER_PROTOCOL -> whether the body is HTTP/1.1 chunked.
_CHUNKED_BY_PROTOCOL = {"HTTP/1.1": True, "HTTP/1.0": False}


class LiveSubscriber(Subscriber):
    """A hub subscriber that remembers the last id it sent and may be written to directly.

    ``last_seen``/``last_str`` are the newest entry this connection has sent (by either writer):
    the greenlet reads them back after each wait, to skip replayed ids and to name pings.
    """

    __slots__ = (
        "sock",
        "raw",
        "chunked",
        "direct",
        "terminal",
        "last_seen",
        "last_str",
        "pending",
        "owned",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sock: Any = None
        self.raw: Any = None
        self.chunked = True
        self.direct = False
        self.terminal: frozenset[str] = frozenset()
        self.last_seen: EventId | None = None
        self.last_str: str | None = None
        self.pending: list[bytes] | None = None  # live events not yet sent (``flush``)
        self.owned: Any = None  # ``streaming.takeover.Owned`` once the hub holds the connection

    def attach(self, sock: Any, protocol: str, terminal: frozenset[str]) -> bool:
        """Let the dispatcher write to ``sock`` while the greenlet waits; False when it may not."""
        raw = getattr(sock, "_sock", None)
        chunked = _CHUNKED_BY_PROTOCOL.get(protocol)
        if raw is None or chunked is None or not under_gevent():
            return False
        self.sock, self.raw, self.chunked, self.terminal = sock, raw, chunked, terminal
        return True

    def wait(self, timeout: float) -> list[Any]:
        """The greenlet's wait: hand the socket to the dispatcher while nothing is pending, take
        it back on waking, finish what the dispatcher could not send; what is pending."""
        if self.raw is not None and not self.items and self.closed is None:
            self.direct = True
        try:
            batch = self.take(timeout)
        finally:
            self.direct = False
        if self.pending is not None:  # sent before anything queued after them
            data, self.pending = b"".join(self.pending), None
            if self.closed is None:
                self.sock.sendall(data)
        if batch and isinstance(batch[0], bytes):
            self.sock.sendall(batch[0])  # the socket's send timeout drops a reader that stalls
            del batch[0]
        return batch

    def offer(self, item: Any) -> None:
        if self.direct and self.closed is None:
            parsed, entry_id, event, frame, in_chunk = item
            if self.last_seen is not None and parsed <= self.last_seen:
                return  # already sent (or replayed)
            if event not in self.terminal:
                self.last_seen, self.last_str = parsed, entry_id
                if self.pending is None:
                    self.pending = []
                    _schedule(self)
                self.pending.append(in_chunk if self.chunked else frame)
                return
            self.flush()  # what came before it goes first
            if self.owned is not None:  # no greenlet to hand it to: the hub ends the response
                self.closed = "ended"
                self.owned.finish(frame)
                return
        super().offer(item)

    def close(self, reason: str) -> None:
        owned = self.owned
        if owned is None:
            super().close(reason)
        elif self.closed is None:
            if reason != "client_gone":
                self.flush()  # events already taken from the bus go out before the end
                if self.closed is not None:
                    return  # the flush found a reader too slow: already ending
            self.closed = reason
            owned.end(reason)

    def flush(self) -> None:
        """Send the pending events without blocking; what the socket cannot take now goes to the
        greenlet, which is woken and writes it (then everything after it) itself."""
        if self.pending is None:
            return
        count = len(self.pending)
        data, self.pending = b"".join(self.pending), None
        if self.closed is not None:
            return
        if self.owned is not None:
            self.owned.send(data, count)
            return
        try:
            sent = self.raw.send(data) if self.direct else 0
        except OSError:  # would block (BlockingIOError), or gone: the greenlet's write tells
            sent = 0
        if sent < len(data):
            self.direct = False
            super().offer(data[sent:])


_due: list[LiveSubscriber] = []


def _schedule(sub: LiveSubscriber) -> None:
    if not _due:
        soon(flush_due)
    _due.append(sub)


def flush_due() -> None:
    """Send every subscriber's pending events (the loop's next turn after the dispatcher's)."""
    due = _due[:]
    del _due[:]
    for sub in due:
        sub.flush()
