"""The delivery hub: our ``flask_sse.ServerSentEventsBlueprint`` subclass, mounted at /v1/events.

``GET /v1/events?channel=streams/<id>|users/<id>`` streams a channel's events. A ``before_request``
gate refuses malformed channel names (400) before any Redis call, then authenticates (bearer
header, cookie, or a one-time ``ticket``) and applies ``may_read`` (403, the same body whether or
not the channel exists).

Unlike stock flask-sse (a pub/sub connection per subscriber, leaked until the next message), a
subscriber here costs a queue in this process: the worker's single dispatcher fans events out.
A subscriber first registers for live events, then replays the log after ``Last-Event-ID``
(header, or ``last_event_id`` query for clients that cannot set headers), and skips live events
it already replayed: no gap, no duplicate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_sse import ServerSentEventsBlueprint

from auth.access import Identity, may_read, parse_channel
from auth.models import User
from auth.tickets import redeem_ticket
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import REDIS_EXTENSION, db, get_redis
from streaming import sse, state
from streaming.channel import TERMINAL_EVENTS, call_later
from streaming.control import CLOSE, Services, Subscriber, event_log, services
from streaming.log import parse_id
from streaming.models import StreamRecord
from streaming.runner import dumps

log = logging.getLogger("streamgate.hub")

SUBS_KEY = "sg:subs:{}"
STREAM_SUBS_KEY = "sg:ss:{}"  # a stream's open connections (conn id -> expiry): the admin's count
QUEUE_BOUND = 1024  # events buffered for one slow subscriber before it is dropped
REPLAY_CHUNK_BYTES = 65536  # a replayed backlog goes out in writes of about this size
SUBSCRIBE_TIMEOUT_S = 5.0  # longest wait for Redis to confirm a new channel subscription


class EventHub(ServerSentEventsBlueprint):
    """flask-sse's blueprint, with a Redis Streams log, one reader per worker and an access gate."""

    @property
    def redis(self) -> Any:
        """The app's shared client (flask-sse would build a new one on every access)."""
        return get_redis()

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: str | None = None,  # noqa: A002
        retry: int | None = None,
        channel: str = "sse",
    ) -> str:
        """flask-sse's signature: append ``data`` to ``channel``'s log; returns the entry id."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        encoded = data if isinstance(data, str) else dumps(data)
        return self.publish_to(
            app,
            channel,
            type or "message",
            None,
            int(app.config["STREAM_LOG_TTL_S"]),
            encoded=encoded,
        )

    def publish_to(
        self,
        app: Flask,
        channel: str,
        event: str,
        payload: Any,
        ttl_s: int,
        encoded: str | None = None,
    ) -> str:
        """Append one event to ``channel``'s log and announce it to every worker."""
        return event_log(app).append(
            channel, event, encoded if encoded is not None else dumps(payload), ttl_s
        )

    def messages(self, channel: str = "sse") -> Iterator[Any]:
        """Not used: stock flask-sse opens a pub/sub connection per subscriber; see ``stream``."""
        raise NotImplementedError("subscribe through GET /v1/events (EventHub.stream)")

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
        svc = services(app)
        live = state.live_status(object_id) if kind == "streams" else {}
        if live.get("status") == "revoked":
            raise ApiError(410, "This stream was revoked.", code="stream_revoked")
        conn_id = _claim_subscription(app, ident, channel)
        sub = Subscriber(
            channel, ident.user_id, ident.jti, ident.tenant_id, QUEUE_BOUND, claims, conn_id
        )
        release = _Release(app, svc, sub)
        try:
            # Live events first (confirmed by Redis), then the log: an event appended in between
            # is in both, and the subscriber skips what it already replayed. No gap, no duplicate.
            if not svc.dispatcher.add(sub).wait(SUBSCRIBE_TIMEOUT_S) or sub.closed is not None:
                raise ApiError(
                    503,
                    "The event hub is reconnecting to Redis; retry shortly.",
                    code="hub_unavailable",
                    headers={"Retry-After": "1"},
                )
            backlog = svc.event_log.replay(channel, last)
            lost = svc.event_log.history_lost(channel, last)
            grace: float | None = None  # follow without end, or only this long
            if kind == "streams":
                status = live.get("status")
                if status is None:  # the live state expired: ask the record
                    record = db.session.get(StreamRecord, object_id)
                    status = record.status if record is not None else None
                    if not backlog and not svc.event_log.exists(channel):
                        if status == "revoked":
                            raise ApiError(410, "This stream was revoked.", code="stream_revoked")
                        raise ApiError(
                            410,
                            "This stream's events have expired; GET /v1/streams/<id> has its text.",
                            code="stream_expired",
                        )
                if status is not None and status != "running":
                    tail = backlog[-1][1] if backlog else svc.event_log.last_event(channel)
                    if tail in TERMINAL_EVENTS and not backlog and last is not None:
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
        if g.get("hub_ticket"):
            headers["Access-Control-Allow-Origin"] = (
                "*"  # the ticket is the credential, not a cookie
            )
            headers["Access-Control-Expose-Headers"] = "X-Streamgate-History"
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(cfg["SSE_SEND_TIMEOUT_S"])  # a client that stops reading is dropped
            _abort_when_unacknowledged(sock, float(cfg["SSE_HEARTBEAT_S"]))
            release.watcher = _watch_hangup(sock, sub)
        app.extensions["streamgate.metrics"].active_subscribers.inc()
        release.counted = True
        body = _events(app, sub, ident, kind, backlog, last, grace)
        return Response(_Body(body, release), headers=headers)


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
        return state.owner(object_id)
    if object_id == ident.user_id:
        return ident.tenant_id, ident.user_id
    user = db.session.get(User, object_id)
    return (user.tenant_id, user.id) if user is not None else None


def _stream_of(channel: str) -> str | None:
    return channel[len("streams/") :] if channel.startswith("streams/") else None


def _claim_subscription(app: Flask, ident: Identity, channel: str) -> str:
    """Count this connection against the user's open subscriptions; 429 past the cap.

    The same entry goes into the stream's own set (``sg:ss:<id>``): the admin's subscriber count.
    """
    cfg = app.config
    conn_id = uuid.uuid4().hex
    key = SUBS_KEY.format(ident.user_id)
    now = time.time()
    ttl = subscription_ttl(app)
    stream_id = _stream_of(channel)
    # One round trip. Not MULTI (the two keys may live on different cluster slots): two claims
    # racing may both see the other's entry and both be refused, never both admitted over it.
    pipe = get_redis().pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zadd(key, {conn_id: now + ttl})
    pipe.zcard(key)
    pipe.expire(key, int(ttl) + 1)
    if stream_id is not None:
        skey = STREAM_SUBS_KEY.format(stream_id)
        pipe.zremrangebyscore(skey, "-inf", now)
        pipe.zadd(skey, {conn_id: now + ttl})
        pipe.expire(skey, int(ttl) + 1)
    count = pipe.execute()[2]
    limit = cfg["SSE_MAX_SUBSCRIPTIONS_PER_USER"]
    if count > limit:
        pipe = get_redis().pipeline(transaction=False)
        pipe.zrem(key, conn_id)
        if stream_id is not None:
            pipe.zrem(STREAM_SUBS_KEY.format(stream_id), conn_id)
        pipe.execute()
        app.extensions["streamgate.metrics"].rate_limited.labels("subscriptions").inc()
        raise ApiError(
            429,
            f"Too many open subscriptions: at most {limit} per user.",
            code="too_many_subscriptions",
            headers={"Retry-After": str(max(1, int(cfg["SSE_HEARTBEAT_S"])))},
        )
    return conn_id


def subscription_ttl(app: Flask) -> float:
    """How long a subscription entry lives without renewal (the keeper renews it every tick)."""
    return 3 * float(app.config["SSE_HEARTBEAT_S"])


def renew_subscriptions(app: Flask, subs: list[Subscriber]) -> None:
    """Renew the subscription entries of this worker's open connections (one pipeline)."""
    if not subs:
        return
    ttl = subscription_ttl(app)
    expires = time.time() + ttl
    keys: dict[str, dict[str, float]] = {}
    for sub in subs:
        keys.setdefault(SUBS_KEY.format(sub.user_id), {})[sub.conn_id] = expires
        stream_id = _stream_of(sub.channel)
        if stream_id is not None:
            keys.setdefault(STREAM_SUBS_KEY.format(stream_id), {})[sub.conn_id] = expires
    pipe = get_redis().pipeline(transaction=False)
    for key, members in keys.items():
        pipe.zadd(key, members, xx=True)  # xx: a released entry is not brought back
        pipe.expire(key, int(ttl) + 1)
    pipe.execute()


def subscriber_counts(stream_ids: list[str]) -> dict[str, int]:
    """Open hub connections to each stream, on every node (one round trip)."""
    if not stream_ids:
        return {}
    now = time.time()
    pipe = get_redis().pipeline(transaction=False)
    for stream_id in stream_ids:
        pipe.zcount(STREAM_SUBS_KEY.format(stream_id), now, "+inf")
    return {stream_id: int(n) for stream_id, n in zip(stream_ids, pipe.execute(), strict=True)}


class _Releaser:
    """Removes released subscription entries in batches: a mass hang-up costs one round trip
    (and one pooled connection) per batch, not one per subscriber."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pending: list[Subscriber] = []
        self.scheduled = False

    def release(self, sub: Subscriber) -> None:
        with self.lock:
            self.pending.append(sub)
            if self.scheduled:
                return
            self.scheduled = True
        call_later(0.0, self.flush)

    def flush(self) -> None:
        # One flush in flight at a time: what is released meanwhile goes in its next round.
        for _ in range(1_000_000):
            with self.lock:
                batch, self.pending = self.pending, []
                if not batch:
                    self.scheduled = False
                    return
            try:
                pipe = self.client.pipeline(transaction=False)
                for sub in batch:
                    pipe.zrem(SUBS_KEY.format(sub.user_id), sub.conn_id)
                    stream_id = _stream_of(sub.channel)
                    if stream_id is not None:
                        pipe.zrem(STREAM_SUBS_KEY.format(stream_id), sub.conn_id)
                pipe.execute()
            except Exception:  # noqa: BLE001 - the entries expire on their own
                log.warning("releasing %d hub subscriptions failed; they expire", len(batch))


def _releaser(app: Flask) -> _Releaser:
    current: _Releaser | None = app.extensions.get("streamgate.hub_releaser")
    if current is None or current.pid != os.getpid():
        current = _Releaser(app.extensions[REDIS_EXTENSION])
        app.extensions["streamgate.hub_releaser"] = current
    return current


class _Release:
    """Everything one subscription holds, released once, whichever path ends it."""

    def __init__(self, app: Flask, svc: Services, sub: Subscriber) -> None:
        self.app = app
        self.svc = svc
        self.sub = sub
        self.done = False
        self.counted = False
        self.watcher: Any = None

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        self.sub.close("released")
        self.svc.dispatcher.remove(self.sub)
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
        if self.counted:
            self.app.extensions["streamgate.metrics"].active_subscribers.dec()
        _releaser(self.app).release(self.sub)


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


def _watch_hangup(sock: Any, sub: Subscriber) -> Any:
    """Close ``sub`` as soon as the client hangs up, not at the next heartbeat write.

    Under gevent an idle subscriber's socket is watched by the event loop (no greenlet, no CPU):
    a client that goes away makes it readable with nothing to read. Nothing else may arrive on an
    event stream's connection; if bytes do arrive, the watch stops and the heartbeat write is
    what notices a dead peer.
    """
    try:
        from gevent import get_hub, monkey, spawn
    except ImportError:  # pragma: no cover - gevent is a dependency
        return None
    raw = getattr(sock, "_sock", None)
    if raw is None or not monkey.is_module_patched("socket"):
        return None
    watcher = get_hub().loop.io(sock.fileno(), 1)

    def readable() -> None:
        try:
            peeked = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # spurious wake-up
        except OSError:
            peeked = b""
        watcher.stop()
        if not peeked:
            spawn(sub.close, "client_gone")  # not from the loop's own callback: close takes locks

    watcher.start(readable)
    return watcher


def _events(
    app: Flask,
    sub: Subscriber,
    ident: Identity,
    kind: str,
    backlog: list[tuple[str, str, str]],
    last: str | None,
    grace: float | None,
) -> Iterator[bytes]:
    """The subscriber's event stream: first flush, replay, then live events and pings.

    A waiting subscriber blocks on its wake-up flag (no CPU, no Redis call): the dispatcher fills
    it, the keeper renews its subscription entry and re-checks its token in batch for the worker.
    Whatever is pending goes out in one write. ``grace``: the stream already ended, follow only
    that long for its terminal event.
    """
    cfg = app.config
    heartbeat = float(cfg["SSE_HEARTBEAT_S"])
    terminal = TERMINAL_EVENTS if kind == "streams" else frozenset()
    last_seen = parse_id(last)
    last_str = last
    yield sse.retry_hint(cfg["SSE_RETRY_MS"]) + sse.comment("connected")
    chunk: list[bytes] = []
    size = 0
    for entry_id, event, data in backlog:
        frame = sse.frame(data, event=event, id=entry_id)
        chunk.append(frame)
        size += len(frame)
        last_seen, last_str = parse_id(entry_id), entry_id
        if event in terminal:
            yield b"".join(chunk)
            return
        if size >= REPLAY_CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)
    deadline = ident.expires_at if grace is None else min(ident.expires_at, time.time() + grace)
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            if deadline == ident.expires_at:
                yield sse.comment("token expired")  # never outlive the token
            return
        batch = sub.take(min(heartbeat, remaining))
        if not batch:
            if sub.closed is not None or deadline - time.time() <= 0:
                continue  # the loop's head (or the CLOSE item) ends it
            yield sse.json_frame(
                {"type": "ping", "time": round(time.time(), 3)}, event="ping", id=last_str
            )
            continue
        frames: list[bytes] = []
        end = False
        for item in batch:
            if item is CLOSE:
                end = True
                break
            parsed, entry_id, event, frame = item
            if last_seen is not None and parsed <= last_seen:
                continue  # already replayed
            last_seen, last_str = parsed, entry_id
            frames.append(frame)
            if event in terminal:
                end = True
                break
        if frames:
            yield b"".join(frames)
        if end:
            return
