"""The per-channel event log: a Redis Stream, appended and announced atomically.

Appends go through the process's writer (``streaming.log_writer``: one Lua script appends,
refreshes the expiry and ``PUBLISH``es, so subscribers are notified in entry-id order; where a
failover can lose acknowledged writes it also repairs a stream's log). Reads are plain
``XRANGE``s on the app's client.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask

from core.store import REDIS_EXTENSION, fails_over
from streaming.log_writer import (
    APPEND_SCRIPT,
    Append,
    AppendFailed,
    EventId,
    LogWriter,
    log_key,
    parse_id,
    with_redis_retry,
)

__all__ = [
    "EVENT_TOPIC_PREFIX",
    "REPLAY_PAGE",
    "AppendFailed",
    "EventId",
    "EventLog",
    "close_event_log",
    "event_log",
    "log_key",
    "parse_id",
    "topic",
    "with_redis_retry",
]

EVENT_TOPIC_PREFIX = "sg:ev:"
REPLAY_PAGE = 500  # entries read from a log at once when replaying it to a subscriber


def topic(channel: str) -> str:
    """The pub/sub topic that announces new entries of ``channel``."""
    return EVENT_TOPIC_PREFIX + channel


@dataclass(eq=False)
class EventLog:
    """Append to and read from channel logs on one Redis client.

    Appends go through the process's writer (``LogWriter``); reads use ``client``. ``repair_s``:
    how long the writer keeps what it appended to a stream, to re-append what a failover lost
    (0: ids are Redis's and nothing is kept; ``event_log`` sets it on a Cluster or Sentinel).
    """

    client: redis.Redis
    maxlen: int
    retry_s: float = 0.0
    user_maxlen: int = 1000
    user_max_age_s: float = 3600.0
    repair_s: float = 0.0
    on_repair: Callable[[int], None] | None = None  # entries a repair appends again (a metric)

    def __post_init__(self) -> None:
        self._append = self.client.register_script(APPEND_SCRIPT)
        self._writer: LogWriter | None = None
        self._writer_lock = threading.Lock()

    def _writer_here(self) -> LogWriter:
        writer = self._writer
        if writer is None or writer.pid != os.getpid():  # none yet, or inherited over a fork
            with self._writer_lock:
                writer = self._writer
                if writer is None or writer.pid != os.getpid():
                    writer = self._writer = LogWriter(
                        self.client, self._append, self.retry_s, self.repair_s, self.on_repair
                    )
        return writer

    def _args(self, channel: str, event: str, data: str, ttl_s: int) -> list[Any]:
        if channel.startswith("streams/"):
            pid = f"{os.getpid()}"
            return [self.maxlen, event, data, ttl_s, topic(channel), pid, 0, "0", "", ""]
        # A user's channel is appended to for as long as the user works: bounded by count and age.
        oldest = f"{int((time.time() - self.user_max_age_s) * 1000)}-0"
        pid = f"{os.getpid()}"
        return [self.user_maxlen, event, data, ttl_s, topic(channel), pid, 0, oldest, "", ""]

    def append(self, channel: str, event: str, data: str, ttl_s: int) -> str:
        """Append one event exactly once, after everything this process queued before it, and
        wait for it (retried through a Redis restart); returns its entry id."""
        item = Append(channel, self._args(channel, event, data, ttl_s), threading.Event(), None)
        if not self._put_and_wait(item):
            raise AppendFailed("The event log writer did not answer.")
        if item.error is not None:
            raise item.error
        return item.entry

    def append_later(
        self,
        channel: str,
        event: str,
        data: str,
        ttl_s: int,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue one event for the writer and return at once; ``on_error`` hears of a failure."""
        args = self._args(channel, event, data, ttl_s)
        self._writer_here().put(Append(channel, args, None, on_error))

    def wait_written(self) -> None:
        """Wait until every append this process queued before now is written (or failed)."""
        self._put_and_wait(Append(None, [], threading.Event(), None))

    def _put_and_wait(self, item: Append) -> bool:
        """Queue ``item`` and wait until the writer is past it; False when it did not answer.

        The writer gives up on a batch after ``retry_s``; the margin covers its queue ahead.
        """
        assert item.done is not None
        self._writer_here().put(item)
        return item.done.wait(self.retry_s + 30)

    def close(self) -> None:
        """Stop this process's writer after what is queued (app shutdown, tests)."""
        writer, self._writer = self._writer, None
        if writer is not None and writer.pid == os.getpid():
            writer.stop()

    def read_after(
        self, channel: str, after: str | None, count: int = 1000
    ) -> list[tuple[str, str, str]]:
        """Entries strictly after ``after`` (or from the start): ``(id, event, data)``."""
        rows: Any = self.client.xrange(log_key(channel), min=_after(after), max="+", count=count)
        return _entries(rows)

    def first_page(
        self, channel: str, after: str | None, count: int
    ) -> tuple[list[tuple[str, str, str]], bool]:
        """The first page after ``after`` (``read_after``) and whether entries after ``after``
        are gone (``_lost``), in one round trip: a subscriber's connect, where each round trip
        waits a turn of a busy event loop."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xrange(log_key(channel), min=_after(after), max="+", count=count)
        pipe.xinfo_stream(log_key(channel))
        rows, info = pipe.execute(raise_on_error=False)
        if isinstance(rows, Exception):
            raise rows
        if isinstance(info, Exception) and not isinstance(info, redis.ResponseError):
            raise info
        return _entries(rows), _lost(info, after)

    def replay(self, channel: str, after: str | None) -> list[tuple[str, str, str]]:
        """Every entry after ``after`` (a whole log in memory: for tests and small logs; the hub
        replays page by page with ``pages``)."""
        return [entry for page in self.pages(channel, after) for entry in page]

    def pages(
        self, channel: str, after: str | None, first: list[tuple[str, str, str]] | None = None
    ) -> Iterator[list[tuple[str, str, str]]]:
        """The entries after ``after``, one page of at most ``REPLAY_PAGE`` at a time, each read
        when the previous one was consumed (``first``: the first page, already read)."""
        page = self.read_after(channel, after, REPLAY_PAGE) if first is None else first
        while True:
            if page:
                yield page
            if len(page) < REPLAY_PAGE:
                return
            page = self.read_after(channel, page[-1][0], REPLAY_PAGE)

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
    """The app's event log; its writer starts with this process's first append."""
    current: EventLog | None = app.extensions.get(_EVENT_LOG)
    if current is None:
        cfg = app.config
        client = app.extensions[REDIS_EXTENSION]
        current = EventLog(
            client,
            cfg["STREAM_LOG_MAXLEN"],
            retry_s=cfg["REDIS_RETRY_S"],
            user_maxlen=cfg["USER_LOG_MAXLEN"],
            user_max_age_s=cfg["STREAM_LOG_TTL_S"],
            # Only where a promoted replica can lack what its master acknowledged.
            repair_s=cfg["STREAM_LOG_REPAIR_S"] if fails_over(client) else 0.0,
            on_repair=app.extensions["streamgate.metrics"].log_repairs.inc,
        )
        app.extensions[_EVENT_LOG] = current
    return current


def close_event_log(app: Flask) -> None:
    """Stop the app's log writer after what is queued (tests, shutdown)."""
    current: EventLog | None = app.extensions.get(_EVENT_LOG)
    if current is not None:
        current.close()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _after(after: str | None) -> str:
    """``XRANGE``'s start for the entries strictly after ``after`` (all of them without it)."""
    return "-" if after is None else "(" + after


def _entries(rows: Any) -> list[tuple[str, str, str]]:
    return [(_s(entry_id), _s(fields[b"e"]), _s(fields[b"d"])) for entry_id, fields in rows]


def _lost(info: Any, after: str | None) -> bool:
    """True when entries after ``after`` (or, without it, from the start) are gone, from the
    log's ``XINFO STREAM`` (a ``ResponseError``: no such key).

    Trimming (``MAXLEN``) drops the oldest entries without moving ``max-deleted-entry-id``, so
    the test is on the oldest entry still kept: a reader whose last id is older than it, in a
    log that dropped entries, cannot be given what it missed. (Conservative by one case: a
    last id that was exactly the newest entry dropped.)
    """
    if isinstance(info, redis.ResponseError):  # the whole log expired (or never existed)
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


def _get(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))
