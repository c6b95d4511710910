"""The per-channel event log: a Redis Stream, appended and announced atomically.

One Lua script appends an event (``XADD``, bounded with ``MAXLEN ~``), refreshes the log's expiry
and ``PUBLISH``es the entry to the channel's notification topic, so the order in which subscribers
are notified is the order of the entry ids: a subscriber that skips ids it has already seen can
never skip one it has not. Keys carry a hash tag (the channel) so a cluster keeps each script on
one slot.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask

from core.store import REDIS_EXTENSION

T = TypeVar("T")

EventId = tuple[int, int]
ID_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")
_ID_LIMIT = 2**64  # stream ids are two unsigned 64-bit integers

# ARGV[6] names this append; a retry after a lost reply finds it in KEYS[2] and gets the id
# of the entry already written instead of writing the event twice.
_APPEND = """
local prev = redis.call('GET', KEYS[2])
if prev then
  local sep = string.find(prev, ' ', 1, true)
  if sep and string.sub(prev, 1, sep - 1) == ARGV[6] then return string.sub(prev, sep + 1) end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[6] .. ' ' .. id, 'EX', ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


def log_key(channel: str) -> str:
    return "sg:log:{" + channel + "}"


def _dedupe_key(channel: str) -> str:
    return "sg:logdd:{" + channel + "}"


def with_redis_retry(fn: Callable[[], T], seconds: float) -> T:
    """Call ``fn``, retrying connection failures with backoff for up to ``seconds``.

    A generation rides out a Redis restart (a second or two) instead of failing; past the
    deadline the error propagates and the run fails cleanly.
    """
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


EVENT_TOPIC_PREFIX = "sg:ev:"


def topic(channel: str) -> str:
    """The pub/sub topic that announces new entries of ``channel``."""
    return EVENT_TOPIC_PREFIX + channel


def parse_id(raw: str | bytes | None) -> EventId | None:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; None when malformed.

    Each part must fit Redis's unsigned 64 bits: a larger one would pass the shape check and then
    fail inside Redis, which is not the client being told what it sent wrong.
    """
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    match = ID_RE.match(text)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    return (ms, seq) if ms < _ID_LIMIT and seq < _ID_LIMIT else None


class EventLog:
    """Append to and read from channel logs on one Redis client."""

    def __init__(self, client: redis.Redis, maxlen: int, retry_s: float = 0.0) -> None:
        self.client = client
        self.maxlen = maxlen
        self.retry_s = retry_s
        self._append = client.register_script(_APPEND)
        self._names = itertools.count()
        self._pid = os.getpid()

    def append(self, channel: str, event: str, data: str, ttl_s: int) -> str:
        """Append one event exactly once (retried through a Redis restart); returns its entry id."""
        name = f"{self._pid}:{next(self._names)}"
        args: list[Any] = [self.maxlen, event, data, ttl_s, topic(channel), name]
        keys = [log_key(channel), _dedupe_key(channel)]
        entry = with_redis_retry(lambda: self._append(keys=keys, args=args), self.retry_s)
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def read_after(
        self, channel: str, after: str | None, count: int = 1000
    ) -> list[tuple[str, str, str]]:
        """Entries strictly after ``after`` (or from the start): ``(id, event, data)``."""
        start = "-" if after is None else "(" + after
        rows: Any = self.client.xrange(log_key(channel), min=start, max="+", count=count)
        return [(_s(entry_id), _s(fields[b"e"]), _s(fields[b"d"])) for entry_id, fields in rows]

    def replay(self, channel: str, after: str | None) -> list[tuple[str, str, str]]:
        """Every entry after ``after``, in pages."""
        out: list[tuple[str, str, str]] = []
        cursor = after
        while True:
            page = self.read_after(channel, cursor)
            out.extend(page)
            if len(page) < 1000:
                return out
            cursor = page[-1][0]

    def history_lost(self, channel: str, after: str | None) -> bool:
        """True when entries after ``after`` (or, without it, from the start) are gone.

        Trimming (``MAXLEN``) drops the oldest entries without moving ``max-deleted-entry-id``, so
        the test is on the oldest entry still kept: a reader whose last id is older than it, in a
        log that dropped entries, cannot be given what it missed. (Conservative by one case: a
        last id that was exactly the newest entry dropped.)
        """
        try:
            info: dict[Any, Any] = self.client.xinfo_stream(log_key(channel))
        except redis.ResponseError:  # no such key: the whole log expired (or never existed)
            return after is not None
        added = int(_get(info, "entries-added") or 0)
        if added <= int(_get(info, "length") or 0):
            return False  # nothing was ever dropped
        if after is None:
            return True
        first = _get(info, "first-entry")
        oldest = parse_id(first[0]) if first else parse_id(_get(info, "last-generated-id"))
        wanted = parse_id(after)
        return oldest is not None and wanted is not None and wanted < oldest

    def last_entry(self, channel: str) -> tuple[str, str] | None:
        """The id and event name of the newest entry in ``channel``'s log (None when empty)."""
        rows: Any = self.client.xrevrange(log_key(channel), max="+", min="-", count=1)
        return (_s(rows[0][0]), _s(rows[0][1][b"e"])) if rows else None

    def exists(self, channel: str) -> bool:
        return bool(self.client.exists(log_key(channel)))

    def expire(self, channel: str, ttl_s: int) -> None:
        self.client.expire(log_key(channel), ttl_s)


_EVENT_LOG = "streamgate.event_log"


def event_log(app: Flask) -> EventLog:
    """The app's event log (no background work: appending needs only the Redis client)."""
    current: EventLog | None = app.extensions.get(_EVENT_LOG)
    if current is None:
        current = EventLog(
            app.extensions[REDIS_EXTENSION],
            app.config["STREAM_LOG_MAXLEN"],
            retry_s=app.config["REDIS_RETRY_S"],
        )
        app.extensions[_EVENT_LOG] = current
    return current


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))
