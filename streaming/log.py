"""The per-channel event log: a Redis Stream, appended and announced atomically.

One Lua script appends an event (``XADD``, bounded with ``MAXLEN ~``), refreshes the log's expiry
and ``PUBLISH``es the entry to the channel's notification topic, so the order in which subscribers
are notified is the order of the entry ids: a subscriber that skips ids it has already seen can
never skip one it has not. Keys carry a hash tag (the channel) so a cluster keeps each script on
one slot.
"""

from __future__ import annotations

import re
from typing import Any

import redis

EventId = tuple[int, int]
ID_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")

_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


def log_key(channel: str) -> str:
    return "sg:log:{" + channel + "}"


def topic(channel: str) -> str:
    """The pub/sub topic that announces new entries of ``channel``."""
    return "sg:ev:" + channel


def parse_id(raw: str | bytes | None) -> EventId | None:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; None when malformed."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    match = ID_RE.match(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


class EventLog:
    """Append to and read from channel logs on one Redis client."""

    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen
        self._append = client.register_script(_APPEND)

    def append(self, channel: str, event: str, data: str, ttl_s: int) -> str:
        """Append one event; returns its entry id (the SSE ``id``)."""
        entry = self._append(keys=[log_key(channel)], args=[self.maxlen, event, data, ttl_s, topic(channel)])
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def read_after(self, channel: str, after: str | None, count: int = 1000) -> list[tuple[str, str, str]]:
        """Entries strictly after ``after`` (or from the start): ``(id, event, data)``."""
        start = "-" if after is None else "(" + after
        rows = self.client.xrange(log_key(channel), min=start, max="+", count=count)
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

    def history_lost(self, channel: str, after: str) -> bool:
        """True when entries after ``after`` were trimmed or expired (a gap we cannot fill)."""
        try:
            info: dict[Any, Any] = self.client.xinfo_stream(log_key(channel))
        except redis.ResponseError:  # no such key: the whole log expired
            return True
        deleted = parse_id(info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id"))
        wanted = parse_id(after)
        return deleted is not None and wanted is not None and wanted < deleted

    def exists(self, channel: str) -> bool:
        return bool(self.client.exists(log_key(channel)))

    def expire(self, channel: str, ttl_s: int) -> None:
        self.client.expire(log_key(channel), ttl_s)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
