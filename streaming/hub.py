"""The delivery hub: our ``flask_sse.ServerSentEventsBlueprint`` subclass, mounted at /v1/events.

``GET /v1/events?channel=streams/<id>|users/<id>`` streams a channel's events. A ``before_request``
gate refuses malformed channel names (400) before any Redis call, then authenticates (bearer
header, cookie, or a one-time ``ticket``) and applies ``may_read`` (403, the same body whether or
not the channel exists).

Events enter a channel only through ``hub.publish`` (flask-sse's ``publish``): appended to the
channel's log, a Redis Stream, and announced to every worker in one script. Unlike stock
flask-sse (a pub/sub connection per subscriber, leaked until the next message), a subscriber here
costs a queue in this process: the worker's single dispatcher fans events out. flask-sse's
``Message`` is not used for framing: it writes ``data:`` without the space and splits data with
``str.splitlines`` (U+2028, NEL...), which is not the WHATWG rule; ``streaming.sse`` frames.
A subscriber first registers for live events, then replays the log after ``Last-Event-ID``
(header, or ``last_event_id`` query for clients that cannot set headers), and skips live events
it already replayed: no gap, no duplicate.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_sse import ServerSentEventsBlueprint

from auth.access import Identity, may_read, parse_channel
from auth.models import User
from auth.revocations import recheck_claims
from auth.tickets import redeem_ticket
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import db
from streaming import greenlets, sse, state, subscriptions, takeover
from streaming.control import CLOSE, Dispatcher, Subscriber, services_of
from streaming.fanout import LiveSubscriber
from streaming.generation import TERMINAL_EVENTS
from streaming.log import REPLAY_PAGE, event_log, parse_id
from streaming.models import StreamRecord

log = logging.getLogger("streamgate.hub")

QUEUE_BOUND = 1024  # events buffered for one slow subscriber before it is dropped
REPLAY_CHUNK_BYTES = 65536  # a replayed backlog goes out in writes of about this size
SUBSCRIBE_TIMEOUT_S = 5.0  # longest wait for Redis to confirm a new channel subscription


class EventHub(ServerSentEventsBlueprint):
    """flask-sse's blueprint, with a Redis Streams log, one reader per worker and an access gate."""

    def publish(
        self,
        data: Any,
        type: str | None = None,  # noqa: A002 - flask-sse's signature
        id: str | None = None,  # noqa: A002
        retry: int | None = None,
        channel: str = "sse",
        *,
        ttl_s: int | None = None,
    ) -> str:
        """Append an event to ``channel``'s log and announce it to every worker; its entry id.

        flask-sse's ``publish``, and the one way an event enters a channel. ``data`` that is not
        a string is encoded with ``sse.dumps`` (pass a string to encode once, as the runner's
        sink does). The id is the log's entry id, so ``id`` and ``retry`` (sent once per
        connection by the hub) may not be given. ``ttl_s``: how long the log is kept from now
        (default ``STREAM_LOG_TTL_S``). Called within an app context.
        """
        if id is not None or retry is not None:
            raise ValueError("the event log assigns ids; retry is sent once per connection")
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        encoded = data if isinstance(data, str) else sse.dumps(data)
        ttl = int(app.config["STREAM_LOG_TTL_S"]) if ttl_s is None else ttl_s
        return event_log(app).append(channel, type or "message", encoded, ttl)

    def publish_later(
        self,
        data: Any,
        type: str,  # noqa: A002 - as publish
        channel: str,
        *,
        ttl_s: int,
        on_error: Callable[[BaseException], None] | None = None,
        app: Flask | None = None,
    ) -> None:
        """``publish`` without waiting: queued to the worker's log writer, in order with every
        other append of this process; ``on_error`` hears of a write that failed for good.

        A run's events go this way, so a run never waits on Redis (nor on a pool connection)
        for a token. Called within an app context, or given the ``app``. Never blocks: the event
        loop's own callbacks may call it.
        """
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        encoded = data if isinstance(data, str) else sse.dumps(data)
        event_log(app).append_later(channel, type, encoded, ttl_s, on_error)

    def stream(self) -> Response:
        """Stream a channel's events as Server-Sent Events (replay, then follow)."""
        ident: Identity = g.hub_identity
        claims: dict[str, Any] = g.hub_claims
        channel: str = g.hub_channel
        kind, object_id = parse_channel(channel)
        last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or None
        if last is not None and parse_id(last) is None:
            raise ApiError(
                400, "Malformed Last-Event-ID: expected '<ms>-<seq>'.", code="invalid_last_event_id"
            )
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        cfg = app.config
        dispatcher = _dispatcher(app)
        events = event_log(app)
        live: dict[str, str] = {}
        if kind == "streams":  # the gate may have read it already (``_owner``): one round trip
            live = g.pop("hub_live", None)
            if live is None:
                live = state.live_status(object_id)
        if live.get("status") == "revoked":
            raise ApiError(410, "This stream was revoked.", code="stream_revoked")
        conn_id = subscriptions.claim(app, ident.user_id, channel)
        sub = LiveSubscriber(
            channel,
            ident.user_id,
            ident.jti,
            ident.tenant_id,
            QUEUE_BOUND,
            recheck_claims(claims),
            conn_id,
        )
        release = _Release(app, dispatcher, sub)
        try:
            # Live events first (confirmed by Redis), then the log: an event appended in between
            # is in both, and the subscriber skips what it already replayed. No gap, no duplicate.
            if not dispatcher.add(sub).wait(SUBSCRIBE_TIMEOUT_S) or sub.closed is not None:
                raise _unavailable()
            # The first page only: the rest is read as the client takes it (bounded memory).
            backlog, lost = events.first_page(channel, last, REPLAY_PAGE)
            grace: float | None = None  # follow without end, or only this long
            if kind == "streams":
                status = live.get("status")
                if status is None:  # the live state expired: ask the record
                    record = db.session.get(StreamRecord, object_id)
                    status = record.status if record is not None else None
                    if not backlog and not events.exists(channel):
                        if status == "revoked":
                            raise ApiError(410, "This stream was revoked.", code="stream_revoked")
                        raise ApiError(
                            410,
                            "This stream's events have expired; GET /v1/streams/<id> has its text.",
                            code="stream_expired",
                        )
                if status is not None and status != "running":
                    # The newest entry, read after the replay: the run is marked ended before its
                    # terminal event is written, so that event may land between the two reads. It
                    # then reaches this subscriber live; only a client whose last id is the
                    # terminal entry itself has everything.
                    whole = bool(backlog) and len(backlog) < REPLAY_PAGE
                    newest = backlog[-1][:2] if whole else events.last_entry(channel)
                    tail = newest[1] if newest else None
                    if (
                        not backlog
                        and last is not None
                        and newest is not None
                        and tail in TERMINAL_EVENTS
                        and _not_after(newest[0], last)
                    ):
                        release()
                        # The client has everything; 204 is how a server tells EventSource to stop.
                        return Response(status=204, headers={"Cache-Control": "no-cache"})
                    if tail not in TERMINAL_EVENTS:
                        # Ended, but its terminal event is still being written: wait, briefly.
                        grace = float(cfg["SSE_HEARTBEAT_S"])
        except BaseException:
            release()
            raise
        finally:
            db.session.remove()  # nothing below touches the database (CTFd's habit)
        headers = dict(sse.HEADERS)
        if lost:
            headers["X-Streamgate-History"] = "lost"
        sock = request.environ.get("gunicorn.socket")
        handover: Callable[[], bool] | None = None
        if sock is not None:
            sock.settimeout(cfg["SSE_SEND_TIMEOUT_S"])  # a client that stops reading is dropped
            _abort_when_unacknowledged(sock, float(cfg["SSE_HEARTBEAT_S"]))
            release.watcher = greenlets.watch_hangup(sock, lambda: sub.close("client_gone"))
            if cfg["HUB_DIRECT_WRITES"]:
                terminal = TERMINAL_EVENTS if kind == "streams" else frozenset()
                attached = sub.attach(sock, str(request.environ.get("SERVER_PROTOCOL")), terminal)
                owner = takeover.owner_of(app)
                if attached and owner is not None and grace is None:
                    expires = ident.expires_at
                    handover = lambda: owner.adopt(sub, sock, release, expires)  # noqa: E731
        app.extensions["streamgate.metrics"].active_subscribers.inc()
        release.counted = True
        pages = events.pages(channel, last, backlog)
        body = _events(app, sub, ident, kind, pages, last, grace, handover)
        return Response(_Body(body, release), headers=headers)


def _not_after(entry: str, last: str) -> bool:
    """True when log entry ``entry`` is ``last`` or older (both well-formed ids)."""
    a, b = parse_id(entry), parse_id(last)
    return a is not None and b is not None and a <= b


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "The event hub is reconnecting to Redis; retry shortly.",
        code="hub_unavailable",
        headers={"Retry-After": "1"},
    )


def _dispatcher(app: Flask) -> Dispatcher:
    """This worker's dispatcher (started with the worker, never by a request)."""
    services = services_of(app)
    if services is None:
        log.error("the hub's dispatcher is not running in this process")
        raise _unavailable()
    return services.dispatcher


hub = EventHub("events", __name__)
hub.add_url_rule("", endpoint="stream", view_func=hub.stream, methods=["GET"])


@hub.before_request
def gate() -> None:
    """Refuse malformed channels (400), unauthenticated (401) and unreadable (403) requests."""
    channel = request.args.get("channel", "")
    parse_channel(channel)  # 400 before any Redis call
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if last and parse_id(last) is None:  # also before any Redis call
        raise ApiError(
            400, "Malformed Last-Event-ID: expected '<ms>-<seq>'.", code="invalid_last_event_id"
        )
    ticket = request.args.get("ticket")
    if ticket is not None:
        claims = redeem_ticket(ticket, channel)
        g.hub_ticket = True
    else:
        verify_jwt_in_request()
        claims = dict(get_jwt())
    ident = Identity.from_claims(claims)
    g.identity, g.tenant_id, g.user_id = ident, ident.tenant_id, ident.user_id
    if "read" not in ident.scopes:
        raise auth_error(
            "This token lacks the 'read' scope", error="insufficient_scope", status=403
        )
    if not may_read(ident, channel, owner_of=lambda object_id: _owner(ident, object_id)):
        raise ApiError(403, "You may not read this channel.", code="channel_forbidden")
    g.hub_identity, g.hub_claims, g.hub_channel = ident, claims, channel


def _owner(ident: Identity, object_id: str) -> tuple[str, str] | None:
    if object_id.startswith("str_"):
        # The whole live hash, kept for the view, which needs its status: one Redis round trip
        # for both (each round trip waits a turn of a busy event loop).
        live = state.live_status(object_id)
        g.hub_live = live
        return state.owner_in(live) or state.recorded_owner(object_id)
    if object_id == ident.user_id:
        return ident.tenant_id, ident.user_id
    user = db.session.get(User, object_id)
    return (user.tenant_id, user.id) if user is not None else None


class _Release:
    """Everything one subscription holds, released once, whichever path ends it."""

    __slots__ = ("app", "dispatcher", "sub", "done", "counted", "watcher", "handed_over")

    def __init__(self, app: Flask, dispatcher: Dispatcher, sub: Subscriber) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.sub = sub
        self.done = False
        self.counted = False
        self.watcher: Any = None
        self.handed_over = False  # the hub holds the connection: it releases, not gunicorn

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        self.sub.close("released")
        self.dispatcher.remove(self.sub)
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
        if self.counted:
            self.app.extensions["streamgate.metrics"].active_subscribers.dec()
        subscriptions.release(self.app, self.sub)


class _Body:
    """The response body: the event generator, plus a ``close`` that releases the subscription
    even when the server closes the response before the generator ever started."""

    def __init__(self, events: Iterator[bytes], release: _Release) -> None:
        self.events = events
        self.release = release

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        return next(self.events)

    def close(self) -> None:
        try:
            self.events.close()  # type: ignore[attr-defined]
        finally:
            if not self.release.handed_over:
                self.release()


def _abort_when_unacknowledged(sock: Any, seconds: float) -> None:
    """A peer that vanished without closing (a phone off the network) never sends FIN: with
    TCP_USER_TIMEOUT the kernel aborts the connection once a ping stays unacknowledged this long,
    which the hang-up watcher then sees: released within two heartbeat intervals."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:  # pragma: no cover - not Linux
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1000, int(seconds * 1000)))
    except OSError:  # pragma: no cover - not a TCP socket
        log.debug("TCP_USER_TIMEOUT not set", exc_info=True)


def _events(
    app: Flask,
    sub: LiveSubscriber,
    ident: Identity,
    kind: str,
    backlog: Iterator[list[tuple[str, str, str]]],
    last: str | None,
    grace: float | None,
    handover: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """The subscriber's event stream: first flush, replay, then live events and pings.

    A waiting subscriber blocks on its wake-up flag (no CPU, no Redis call): the dispatcher fills
    it (or writes a live event to the socket itself, ``streaming.fanout``), the keeper renews its
    subscription entry and re-checks its token in batch for the worker. Whatever is pending goes
    out in one write. ``grace``: the stream already ended, follow only that long for its terminal
    event. ``handover``: once idle, the connection is given to the worker's hub, and this
    greenlet ends (``streaming.takeover``).
    """
    cfg = app.config
    heartbeat = float(cfg["SSE_HEARTBEAT_S"])
    terminal = TERMINAL_EVENTS if kind == "streams" else frozenset()
    sub.last_seen, sub.last_str = parse_id(last), last
    yield sse.retry_hint(cfg["SSE_RETRY_MS"]) + sse.comment("connected")
    chunk: list[bytes] = []
    size = 0
    for page in backlog:  # each page read from Redis once the previous one was written
        for entry_id, event, data in page:
            frame = sse.frame(data, event=event, id=entry_id)
            chunk.append(frame)
            size += len(frame)
            sub.last_seen, sub.last_str = parse_id(entry_id), entry_id
            if event in terminal:
                yield b"".join(chunk)
                return
            if size >= REPLAY_CHUNK_BYTES:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)
            chunk, size = [], 0
    deadline = ident.expires_at if grace is None else min(ident.expires_at, time.time() + grace)
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            if deadline == ident.expires_at:
                yield sse.comment("token expired")  # never outlive the token
            return
        if handover is not None and not sub.items and sub.closed is None and handover():
            # Everything yielded so far is written (gunicorn wrote it before asking for more).
            raise takeover.handed_over()
        batch = sub.wait(min(heartbeat, remaining))
        if not batch:
            if sub.closed is not None or deadline - time.time() <= 0:
                continue  # the loop's head (or the CLOSE item) ends it
            yield sse.json_frame(
                {"type": "ping", "time": round(time.time(), 3)}, event="ping", id=sub.last_str
            )
            continue
        frames: list[bytes] = []
        end = False
        for item in batch:
            if item is CLOSE:
                end = True
                break
            parsed, entry_id, event, frame, _ = item
            if sub.last_seen is not None and parsed <= sub.last_seen:
                continue  # already sent
            sub.last_seen, sub.last_str = parsed, entry_id
            frames.append(frame)
            if event in terminal:
                end = True
                break
        if frames:
            yield b"".join(frames)
        if end:
            return
