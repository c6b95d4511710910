"""Open hub connections counted in Redis: the per-user cap and the admin's subscriber counts.

A connection claims an entry (conn id -> expiry) in its user's set ``sg:subs:<user>`` and, for a
stream channel, in the stream's set ``sg:ss:<stream>``. The keeper renews this worker's entries
in one pipeline per tick (an idle subscriber makes no Redis call of its own); a released entry is
removed in batches, and an entry whose worker died simply expires.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from flask import Flask

from core.errors import ApiError
from core.store import REDIS_EXTENSION, get_redis
from streaming.control import Subscriber
from streaming.generation import stream_of
from streaming.greenlets import call_later

log = logging.getLogger("streamgate.hub")

SUBS_KEY = "sg:subs:{}"
CONNECTS_KEY = "sg:cn:{}:{}"  # connections a user opened in one minute (fixed window)
STREAM_SUBS_KEY = "sg:ss:{}"  # a stream's open connections (conn id -> expiry): the admin's count


def claim(app: Flask, user_id: str, channel: str) -> str:
    """Count this connection against the user's open subscriptions and connects a minute; 429
    past either (``SSE_MAX_SUBSCRIPTIONS_PER_USER``, ``SSE_CONNECTS_PER_MINUTE``).

    The same entry goes into the stream's own set (``sg:ss:<id>``): the admin's subscriber count.
    """
    cfg = app.config
    conn_id = uuid.uuid4().hex
    key = SUBS_KEY.format(user_id)
    now = time.time()
    ttl = subscription_ttl(app)
    stream_id = stream_of(channel)
    # One round trip. Not MULTI (the two keys may live on different cluster slots): two claims
    # racing may both see the other's entry and both be refused, never both admitted over it.
    minute = int(now // 60)
    connects_key = CONNECTS_KEY.format(user_id, minute)
    pipe = get_redis().pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zadd(key, {conn_id: now + ttl})
    pipe.zcard(key)
    pipe.expire(key, int(ttl) + 1)
    pipe.incr(connects_key)
    pipe.expire(connects_key, 120)
    if stream_id is not None:
        skey = STREAM_SUBS_KEY.format(stream_id)
        pipe.zremrangebyscore(skey, "-inf", now)
        pipe.zadd(skey, {conn_id: now + ttl})
        pipe.expire(skey, int(ttl) + 1)
    results = pipe.execute()
    count, connects = results[2], results[4]
    limit = cfg["SSE_MAX_SUBSCRIPTIONS_PER_USER"]
    per_minute = cfg["SSE_CONNECTS_PER_MINUTE"]
    if count > limit or connects > per_minute:
        pipe = get_redis().pipeline(transaction=False)
        pipe.zrem(key, conn_id)
        if stream_id is not None:
            pipe.zrem(STREAM_SUBS_KEY.format(stream_id), conn_id)
        pipe.execute()
        if connects > per_minute:  # a reconnect loop: refused until the minute turns
            app.extensions["streamgate.metrics"].rate_limited.labels("connects").inc()
            raise ApiError(
                429,
                f"Too many event-stream connections: at most {per_minute} a minute per user.",
                code="too_many_connects",
                headers={"Retry-After": str(max(1, 60 * (minute + 1) - int(now)))},
            )
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
        stream_id = stream_of(sub.channel)
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
                    stream_id = stream_of(sub.channel)
                    if stream_id is not None:
                        pipe.zrem(STREAM_SUBS_KEY.format(stream_id), sub.conn_id)
                pipe.execute()
            except Exception:  # noqa: BLE001 - the entries expire on their own
                log.warning("releasing %d hub subscriptions failed; they expire", len(batch))


def release(app: Flask, sub: Subscriber) -> None:
    """Remove ``sub``'s entries (batched with other releases; they would expire anyway)."""
    _releaser(app).release(sub)


def flush_releases(app: Flask) -> None:
    """Remove the released entries now (a worker that exits), not on the next loop turn."""
    _releaser(app).flush()


def _releaser(app: Flask) -> _Releaser:
    current: _Releaser | None = app.extensions.get("streamgate.hub_releaser")
    if current is None or current.pid != os.getpid():
        current = _Releaser(app.extensions[REDIS_EXTENSION])
        app.extensions["streamgate.hub_releaser"] = current
    return current
