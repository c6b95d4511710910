"""Idle hub connections taken away from gunicorn: no greenlet per idle subscriber.

Under gunicorn's gevent worker a response is iterated by the connection's own greenlet, so a hub
subscriber that waits for events is a parked greenlet (its saved C stack, its data-stack page),
plus gunicorn's request, environ and response objects and the generator chain between them:
about 15 of the 33 KB an idle subscriber cost. Once a subscriber is idle (its replay sent, nothing
queued), the hub takes the connection instead:

1. the response generator calls ``Owner.adopt``: the client socket is taken from gevent's socket
   object (``greenlets.take_socket``: the same descriptor, gevent's object left closed so that
   gunicorn's own ``close()`` is a no-op), a hang-up watcher is put on it, and the connection is
   registered here;
2. the generator raises ``OSError(EPIPE)``. gunicorn 27's ``AsyncWorker.handle_request`` treats an
   ``OSError`` from the response iterator as a client gone: it skips ``resp.close()`` (no last
   chunk is written), calls the iterator's ``close()`` (the hub's ``_Body`` knows the connection
   was handed over and releases nothing), and ``handle`` logs EPIPE at debug and closes its
   (detached) socket object. The greenlet ends; the TCP connection stays open, ours.

From then on the worker's dispatcher writes the subscriber's live events (``streaming.fanout``
frames and batches them; ``Owned.send`` writes them), and ONE loop per worker (``Owner.run``)
sends the heartbeats of every held connection and ends each one at its token's expiry. Whatever
ends a held connection ends it the way the greenlet did: a terminal event, a revocation, a
reconnecting hub or a reader too slow get the rest of their bytes, the last chunk (``0\\r\\n\\r\\n``
on HTTP/1.1) and the close; a hang-up only the close. Then the subscription's ``_Release`` runs,
once: the per-user cap entry, the gauges, the dispatcher's registration.

A reader too slow for a non-blocking ``send`` gets a writer greenlet only while it has a backlog,
with the greenlet path's rule: each batch must be taken within ``SSE_SEND_TIMEOUT_S`` and at most
``QUEUE_BOUND`` events may wait (past that it is ended as a slow consumer after what is queued).
Every writer (dispatcher, loop, writer greenlet) runs on the worker's one event loop and goes
through ``Owned.send``, which never yields: bytes leave in the order they were given.

Not taken over: no gevent or no gunicorn socket (in-process tests, other servers),
``HUB_DIRECT_WRITES=false`` (the whole old greenlet path, for ``--protocol uwsgi``), a stream
that already ended and only waits briefly for its terminal event.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flask import Flask

from streaming import greenlets, sse
from streaming.fanout import LiveSubscriber
from streaming.subscriptions import flush_releases

log = logging.getLogger("streamgate.hub")

_EXTENSION = "streamgate.hub_owner"
_NOTHING_QUEUED: deque[Any] = deque(maxlen=0)  # a held subscriber's queue: never holds anything
_YIELD_EVERY = 500  # heartbeats written between two turns of the event loop
_SHUTDOWN_WAIT_S = 1.0  # longest a worker that exits waits for slow readers' last bytes


class _Gone(Exception):
    """Stops a writer greenlet whose client went away."""


def handed_over() -> OSError:
    """What the response iterator raises once the hub holds its connection (see the module)."""
    return OSError(errno.EPIPE, "the connection was handed over to the hub")


class Owned:
    """One connection the worker's hub holds: its socket, hang-up watcher, backlog and release."""

    __slots__ = (
        "owner",
        "sub",
        "raw",
        "watcher",
        "release",
        "backlog",
        "queued",
        "writer",
        "ending",
        "gone",
        "ended",
        "last_write",
    )

    def __init__(self, owner: Owner, sub: LiveSubscriber, raw: Any, release: Callable[[], None]):
        self.owner = owner
        self.sub = sub
        self.raw = raw
        self.watcher: Any = None
        self.release = release
        self.backlog: list[bytes] | None = None  # not None while a writer greenlet drains it
        self.queued = 0  # events in the backlog
        self.writer: Any = None  # the writer greenlet's watcher, while there is one
        self.ending = False  # the last bytes are written or queued: close once they are out
        self.gone = False  # the client went away (or stalled): close without writing
        self.ended = False
        self.last_write = time.monotonic()

    def send(self, data: bytes, events: int = 1, *, final: bool = False) -> None:
        """Write ``data`` after everything given before: at once if the socket takes it, else
        behind the backlog, which a writer greenlet drains."""
        if self.gone or self.ended:
            return
        if self.backlog is not None:
            if not final and self.queued >= self.sub.maxsize:
                self.sub.close("slow_consumer")  # it can resume from the log
                return
            self.backlog.append(data)
            self.queued += events
            return
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or broken: the client is gone
            self.abort()
            return
        if sent:
            self.last_write = time.monotonic()
        if sent < len(data):
            self.backlog = [data[sent:]]
            self.queued = events
            self.writer = greenlets.write_watcher(self.raw.fileno())
            greenlets.background(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: the backlog in batches, each within the send timeout."""
        backlog, watcher = self.backlog, self.writer
        try:
            while backlog and not self.gone:
                view = memoryview(b"".join(backlog))
                backlog.clear()
                self.queued = 0
                deadline = time.monotonic() + self.owner.send_timeout
                while view:
                    try:
                        sent = self.raw.send(view)
                    except BlockingIOError:
                        greenlets.wait_writable(watcher, deadline - time.monotonic())
                        if self.gone:
                            raise _Gone() from None
                        continue
                    self.last_write = time.monotonic()
                    view = view[sent:]
        except (OSError, _Gone):  # reset, or not read for the send timeout (TimeoutError)
            self.gone = True
        finally:
            watcher.close()
            self.backlog = None
            self.writer = None
            if self.gone or self.ending:
                self._end()

    def heartbeat(self, frame: bytes) -> None:
        self.send(sse.http_chunk(frame) if self.sub.chunked else frame, 0)

    def finish(self, tail: bytes) -> None:
        """Write ``tail`` (a frame, or nothing) and the end of the response, then close."""
        if self.ending or self.gone or self.ended:
            return
        self.ending = True
        if self.sub.chunked:
            data = (sse.http_chunk(tail) if tail else b"") + sse.END_OF_CHUNKS
        else:
            data = tail  # HTTP/1.0: the close ends the body
        if data:
            self.send(data, 0, final=True)
        if self.backlog is None:
            self._end()

    def end(self, reason: str) -> None:
        """The subscriber was closed: a client that left gets nothing more, anyone else the end."""
        if reason == "client_gone":
            self.abort()
        else:
            self.finish(b"")

    def expire(self) -> None:
        """The token expired: end the response (the greenlet said so in a comment)."""
        sub = self.sub
        if sub.closed is None:
            sub.flush()
            if sub.closed is None:
                sub.closed = "expired"
                self.finish(sse.comment("token expired"))

    def abort(self) -> None:
        """Close without writing anything more (the client left, or a write failed)."""
        if self.gone or self.ended:
            return
        self.gone = True
        if self.writer is None:
            self._end()
        else:  # the writer greenlet's ``finally`` ends the connection
            greenlets.stop_waiting(self.writer, _Gone())

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        sub = self.sub
        if sub.closed is None:
            sub.closed = "ended"
        if self.watcher is not None:  # before the descriptor closes: the loop must forget it
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None
        try:
            self.raw.close()
        except OSError:
            pass
        self.owner.dropped(self)
        greenlets.off_loop(self.release)


class Owner:
    """The connections this worker's hub holds, and the one loop for their heartbeats and expiry.

    Started with the worker's services (``start_owner``), under gevent only.
    """

    def __init__(self, app: Flask, stopping: threading.Event) -> None:
        cfg = app.config
        self.pid = os.getpid()
        self.heartbeat_s = float(cfg["SSE_HEARTBEAT_S"])
        self.send_timeout = float(cfg["SSE_SEND_TIMEOUT_S"])
        # A held connection is pinged between one and 1.25 heartbeats after its last write.
        self.tick = max(0.05, self.heartbeat_s / 4)
        self.gauge = app.extensions["streamgate.metrics"].hub_owned_subscribers
        self.conns: set[Owned] = set()
        self.expiries: list[tuple[float, int, Owned]] = []  # a heap: the next to expire first
        self.order = itertools.count()
        self.wake = threading.Event()
        self.stopping = stopping
        self.no_wakeup = threading.Event()  # every held subscriber's: nobody waits on it

    def adopt(self, sub: LiveSubscriber, sock: Any, release: Any, expires_at: float) -> bool:
        """Take ``sub``'s connection from gunicorn (see the module); False when it cannot be.

        ``release`` is the subscription's ``_Release`` (its hang-up watcher is replaced here and
        it is told not to run when gunicorn closes the response).
        """
        raw = greenlets.take_socket(sock)
        if raw is None:
            return False
        if release.watcher is not None:  # it watched gevent's socket object, now closed
            release.watcher.stop()
            release.watcher.close()
            release.watcher = None
        release.handed_over = True
        owned = Owned(self, sub, raw, release)
        sub.owned, sub.sock, sub.raw, sub.direct = owned, None, raw, True
        sub.items, sub.wakeup = _NOTHING_QUEUED, self.no_wakeup  # the greenlet's, no longer used
        owned.watcher = greenlets.watch_hangup(raw, lambda: sub.close("client_gone"))
        self.conns.add(owned)
        if not self.expiries or expires_at < self.expiries[0][0]:
            self.wake.set()  # sooner than the loop planned to wake
        heapq.heappush(self.expiries, (expires_at, next(self.order), owned))
        self.gauge.inc()
        return True

    def dropped(self, owned: Owned) -> None:
        if owned in self.conns:
            self.conns.discard(owned)
            self.gauge.dec()
        if len(self.expiries) > 64 + 2 * len(self.conns):  # mostly ended: keep it small
            self.expiries = [e for e in self.expiries if not e[2].ended]
            heapq.heapify(self.expiries)

    def run(self) -> None:
        """Heartbeats and token expiry of every held connection, until the services stop."""
        next_beat = time.monotonic() + self.tick
        while not self.stopping.is_set():
            try:
                now = time.time()
                while self.expiries and self.expiries[0][0] <= now:
                    heapq.heappop(self.expiries)[2].expire()
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.tick
            except Exception:  # noqa: BLE001 - the loop must outlive one bad connection
                log.exception("hub: heartbeat loop")
            wait = next_beat - time.monotonic()
            if self.expiries:
                wait = min(wait, self.expiries[0][0] - time.time())
            self.wake.clear()
            self.wake.wait(max(0.0, wait))

    def _beat(self) -> None:
        """A ``ping`` to every held connection that wrote nothing for a heartbeat interval."""
        quiet_since = time.monotonic() - self.heartbeat_s
        ping = sse.json_frames_by_id({"type": "ping", "time": round(time.time(), 3)}, event="ping")
        for n, owned in enumerate(list(self.conns), 1):
            sub = owned.sub
            # Not while events wait to go out: a ping names the last id sent, and these ids are
            # already the subscriber's last (a client reconnecting after it would skip them).
            busy = owned.backlog is not None or sub.pending is not None
            if owned.last_write <= quiet_since and not busy and sub.closed is None:
                owned.heartbeat(ping(sub.last_str))
            if n % _YIELD_EVERY == 0:
                greenlets.yield_now()  # live events go out between two slices

    def end_all(self, app: Flask) -> None:
        """The worker exits: end every held response (the last chunk, as a restart's greenlets
        did not manage) and release its subscription now, not when the entries expire."""
        self.stopping.set()
        self.wake.set()
        for owned in list(self.conns):
            owned.sub.close("shutdown")
        deadline = time.monotonic() + _SHUTDOWN_WAIT_S
        while any(o.writer is not None for o in self.conns) and time.monotonic() < deadline:
            time.sleep(0.02)  # the writers of slow readers run meanwhile
        for owned in list(self.conns):
            owned.abort()
        greenlets.yield_now()  # interrupted writers end their connections
        flush_releases(app)


def start_owner(app: Flask, stopping: threading.Event) -> Owner | None:
    """Start this worker's owner of idle hub connections (under gevent only; else None)."""
    if not greenlets.under_gevent():
        return None
    owner = Owner(app, stopping)
    app.extensions[_EXTENSION] = owner
    greenlets.spawn(owner.run, name="streamgate-hub-owner")
    return owner


def owner_of(app: Flask) -> Owner | None:
    """This process's owner of held hub connections, if one runs here."""
    owner: Owner | None = app.extensions.get(_EXTENSION)
    if owner is None or owner.pid != os.getpid() or owner.stopping.is_set():
        return None
    return owner


def end_held_connections(app: Flask) -> None:
    """End and release every connection this worker's hub holds (gunicorn's ``worker_exit``)."""
    owner = owner_of(app)
    if owner is not None:
        owner.end_all(app)
