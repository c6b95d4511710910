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

import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_sse import ServerSentEventsBlueprint

from auth.access import Identity, may_read, parse_channel
from auth.errors import ApiError
from auth.models import User
from auth.store import db, get_redis
from auth.tickets import redeem_ticket
from auth.tokens import auth_error, is_revoked
from streaming import sse, state
from streaming.channel import TERMINAL_EVENTS
from streaming.control import CLOSE, Services, Subscriber, services
from streaming.log import parse_id
from streaming.models import TERMINAL, StreamRecord
from streaming.runner import dumps

SUBS_KEY = "sg:subs:{}"
QUEUE_BOUND = 1024  # events buffered for one slow subscriber before it is dropped


class EventHub(ServerSentEventsBlueprint):
    """flask-sse's blueprint, with a Redis Streams log, one reader per worker and an access gate."""

    @property
    def redis(self) -> Any:
        """The app's shared client (flask-sse would build a new one on every access)."""
        return get_redis()

    def publish(self, data: Any, type: str | None = None, id: str | None = None,  # noqa: A002
                retry: int | None = None, channel: str = "sse") -> str:
        """flask-sse's signature: append ``data`` to ``channel``'s log; returns the entry id."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        encoded = data if isinstance(data, str) else dumps(data)
        return self.publish_to(app, channel, type or "message", None, int(app.config["STREAM_LOG_TTL_S"]),
                               encoded=encoded)

    def publish_to(self, app: Flask, channel: str, event: str, payload: Any, ttl_s: int,
                   encoded: str | None = None) -> str:
        """Append one event to ``channel``'s log and announce it to every worker."""
        return services(app).event_log.append(channel, event, encoded if encoded is not None else dumps(payload), ttl_s)

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
            raise ApiError(400, "Malformed Last-Event-ID: expected '<ms>-<seq>'.", code="invalid_last_event_id")
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        cfg = app.config
        svc = services(app)
        live = state.live_status(object_id) if kind == "streams" else {}
        if live.get("status") == "revoked":
            raise ApiError(410, "This stream was revoked.", code="stream_revoked")
        conn_id = _claim_subscription(app, ident)
        sub = Subscriber(channel, ident.user_id, ident.jti, ident.tenant_id, QUEUE_BOUND)
        svc.dispatcher.add(sub)
        try:
            backlog = svc.event_log.replay(channel, last)
            lost = last is not None and svc.event_log.history_lost(channel, last)
            if kind == "streams" and not backlog and not live:
                record = db.session.get(StreamRecord, object_id)
                if record is None or record.status in TERMINAL:
                    raise ApiError(410, "This stream's events have expired; GET /v1/streams/<id> has its text.",
                                   code="stream_expired")
        except BaseException:
            svc.dispatcher.remove(sub)
            _release_subscription(ident, conn_id)
            raise
        finally:
            db.session.remove()  # nothing below touches the database (CTFd's habit)
        headers = dict(sse.HEADERS)
        if lost:
            headers["X-Streamgate-History"] = "lost"
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(cfg["SSE_SEND_TIMEOUT_S"])  # a client that stops reading is dropped
        body = _events(app, svc, sub, ident, claims, kind, backlog, last, conn_id)
        return Response(body, headers=headers)


hub = EventHub("events", __name__)
hub.add_url_rule("", endpoint="stream", view_func=hub.stream, methods=["GET"])


@hub.before_request
def gate() -> None:
    """Refuse malformed channels (400), unauthenticated (401) and unreadable (403) requests."""
    channel = request.args.get("channel", "")
    parse_channel(channel)  # 400 before any Redis call
    ticket = request.args.get("ticket")
    if ticket is not None:
        claims = redeem_ticket(ticket, channel)
    else:
        verify_jwt_in_request()
        claims = dict(get_jwt())
    ident = Identity.from_claims(claims)
    g.identity, g.tenant_id, g.user_id = ident, ident.tenant_id, ident.user_id
    if "read" not in ident.scopes:
        raise auth_error("This token lacks the 'read' scope", error="insufficient_scope", status=403)
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


def _claim_subscription(app: Flask, ident: Identity) -> str:
    """Count this connection against the user's open subscriptions; 429 past the cap."""
    cfg = app.config
    conn_id = uuid.uuid4().hex
    key = SUBS_KEY.format(ident.user_id)
    now = time.time()
    pipe = get_redis().pipeline(transaction=True)
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zadd(key, {conn_id: now + 3 * cfg["SSE_HEARTBEAT_S"]})
    pipe.zcard(key)
    pipe.expire(key, int(3 * cfg["SSE_HEARTBEAT_S"]) + 1)
    _, _, count, _ = pipe.execute()
    limit = cfg["SSE_MAX_SUBSCRIPTIONS_PER_USER"]
    if count > limit:
        get_redis().zrem(key, conn_id)
        app.extensions["streamgate.metrics"].rate_limited.labels("subscriptions").inc()
        raise ApiError(429, f"Too many open subscriptions: at most {limit} per user.",
                       code="too_many_subscriptions", headers={"Retry-After": str(int(cfg["SSE_HEARTBEAT_S"]))})
    return conn_id


def _renew_subscription(app: Flask, ident: Identity, conn_id: str) -> None:
    ttl = 3 * app.config["SSE_HEARTBEAT_S"]
    key = SUBS_KEY.format(ident.user_id)
    pipe = get_redis().pipeline(transaction=False)
    pipe.zadd(key, {conn_id: time.time() + ttl})
    pipe.expire(key, int(ttl) + 1)
    pipe.execute()


def _release_subscription(ident: Identity, conn_id: str) -> None:
    try:
        get_redis().zrem(SUBS_KEY.format(ident.user_id), conn_id)
    except Exception:  # noqa: BLE001 - the entry expires on its own
        pass


def _events(app: Flask, svc: Services, sub: Subscriber, ident: Identity, claims: dict[str, Any],
            kind: str, backlog: list[tuple[str, str, str]], last: str | None, conn_id: str) -> Iterator[bytes]:
    """The subscriber's event stream: first flush, replay, then live events and pings."""
    cfg = app.config
    heartbeat = cfg["SSE_HEARTBEAT_S"]
    metrics = app.extensions["streamgate.metrics"]
    metrics.active_subscribers.inc()
    last_seen = parse_id(last)
    last_str = last or "0-0"
    try:
        yield sse.retry_hint(cfg["SSE_RETRY_MS"]) + sse.comment("connected")
        for entry_id, event, data in backlog:
            yield sse.frame(data, event=event, id=entry_id)
            last_seen, last_str = parse_id(entry_id), entry_id
            if kind == "streams" and event in TERMINAL_EVENTS:
                return
        while True:
            remaining = ident.expires_at - time.time()
            if remaining <= 0:
                return  # never outlive the token
            try:
                item = sub.queue.get(timeout=min(heartbeat, remaining))
            except queue.Empty:
                if sub.closed is not None:
                    return
                with app.app_context():
                    if is_revoked(claims):
                        return
                    _renew_subscription(app, ident, conn_id)
                yield sse.json_frame({"type": "ping", "time": round(time.time(), 3)}, event="ping", id=last_str)
                continue
            if item is CLOSE:
                return
            parsed, entry_id, event, frame = item
            if last_seen is not None and parsed <= last_seen:
                continue  # already replayed
            last_seen, last_str = parsed, entry_id
            yield frame
            if kind == "streams" and event in TERMINAL_EVENTS:
                return
    finally:
        svc.dispatcher.remove(sub)
        metrics.active_subscribers.dec()
        with app.app_context():
            _release_subscription(ident, conn_id)
