"""The per-channel event log: a Redis Stream, appended and announced atomically.

One Lua script appends an event (``XADD``, bounded with ``MAXLEN ~``), refreshes the log's expiry
and ``PUBLISH``es the entry to the channel's notification topic, so the order in which subscribers
are notified is the order of the entry ids: a subscriber that skips ids it has already seen can
never skip one it has not. Keys carry a hash tag (the channel) so a cluster keeps each script on
one slot.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import redis
from flask import Flask

from core.store import REDIS_EXTENSION, TRANSIENT_ERRORS, is_cluster, writer_client

T = TypeVar("T")

log = logging.getLogger("streamgate.log")

EventId = tuple[int, int]
ID_RE = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")
_ID_LIMIT = 2**64  # stream ids are two unsigned 64-bit integers

# ARGV[6] is the writing process, ARGV[7] the append's number in it (its writer numbers appends
# in the order it sends them). ARGV[8] is 0 for a stream's log (trimmed at about ARGV[1]
# entries, cheaply), else the oldest id a user's log keeps (trimmed exactly: at most ARGV[1]
# entries, none older than its age limit; lifecycle events are few, exactness costs nothing).
# KEYS[2] keeps the newest "<process> <number> <id>" of the channel: a pipeline retried after a
# lost reply finds its appends already counted and skips them instead of writing them twice (the
# id returned for a skipped one is the channel's newest).
_APPEND = """
local prev = redis.call('GET', KEYS[2])
if prev then
  local who, n, last = string.match(prev, '^(%S+) (%d+) (%S+)$')
  if who == ARGV[6] and tonumber(n) >= tonumber(ARGV[7]) then return last end
end
local id
if ARGV[8] == '0' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '=', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[8])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[6] .. ' ' .. ARGV[7] .. ' ' .. id, 'EX', ARGV[4])
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
        except TRANSIENT_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


EVENT_TOPIC_PREFIX = "sg:ev:"
REPLAY_PAGE = 500  # entries read from a log at once when replaying it to a subscriber


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


class AppendFailed(redis.ConnectionError):
    """An append could not be written within ``REDIS_RETRY_S`` (Redis unreachable that long)."""


class _Append:
    """One queued append; ``done`` is set once it is written (or failed: ``error``)."""

    __slots__ = ("args", "done", "entry", "error", "keys", "on_error")

    def __init__(
        self,
        channel: str | None,
        args: list[Any],
        done: threading.Event | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.keys = [log_key(channel), _dedupe_key(channel)] if channel is not None else []
        self.args = args
        self.done = done
        self.on_error = on_error
        self.entry = ""
        self.error: BaseException | None = None


_STOP = object()
# A slot served elsewhere now (a failover, a migration): sent again after a topology refresh.
_MOVED = (redis.exceptions.MovedError, redis.exceptions.AskError)


class _Writer:
    """The process's one writer of channel logs: appends go out in order, many per round trip.

    Runs queue their events and go on; the writer sends whatever is queued as one pipeline on a
    connection of its own, so a worker's appends need one Redis connection however many runs it
    has, never wait for a pool shared with requests, and cost one round trip per batch rather
    than per event. Nothing is held back to fill a batch: while one pipeline is in flight the
    next one gathers. Order per channel is the queue's order (one writer, one connection).
    """

    MAX_BATCH = 512

    def __init__(self, client: redis.Redis, script: Any, retry_s: float) -> None:
        self.client = writer_client(client)
        self.cluster = is_cluster(self.client)
        self.script = script
        self.retry_s = retry_s
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pid = os.getpid()
        self.numbers = itertools.count(1)
        self.thread = threading.Thread(target=self._run, daemon=True, name="streamgate-log-writer")
        self.thread.start()

    def put(self, item: _Append) -> None:
        self.queue.put(item)

    def stop(self) -> None:
        self.queue.put(_STOP)
        self.thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is _STOP:
                return
            batch: list[_Append] = [first]
            stop = False
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Append]) -> None:
        appends = [item for item in batch if item.keys]  # the rest are barriers
        for item in appends:  # numbered in sending order: a retry's duplicates are recognised
            item.args[6] = next(self.numbers)

        written: dict[int, Any] = {}
        pending = appends

        def send() -> None:
            # Each node's appends in a pipeline of their own: one node failing over holds up
            # only the channels it serves. What fails for a while (a failover's CLUSTERDOWN,
            # a dead node, READONLY, a script cache emptied by a promotion) is sent again; the
            # dedupe key skips what was written.
            nonlocal pending
            again: list[_Append] = []
            error: BaseException | None = None
            for group in self._by_node(pending):
                try:
                    results = self._send(group)
                except TRANSIENT_ERRORS as exc:
                    again, error = again + group, exc
                    continue
                for item, result in zip(group, results, strict=True):
                    if isinstance(result, (*_MOVED, *TRANSIENT_ERRORS)):
                        again.append(item)
                        error = cast(BaseException, result)
                    else:
                        written[id(item)] = result
            pending = again
            if again:
                raise redis.ConnectionError(f"{len(again)} appends to send again: {error}")

        try:
            if appends:
                with_redis_retry(send, self.retry_s)
        except Exception as exc:  # noqa: BLE001 - every waiter hears of it
            log.error("event log unreachable for %.1f s: %s", self.retry_s, exc)
        failed = AppendFailed("The event log could not be written: Redis unreachable.")
        for item in appends:
            result = written.get(id(item), failed)
            if isinstance(result, BaseException):
                item.error = result
                if item.on_error is not None:
                    item.on_error(result)
            else:
                item.entry = result.decode() if isinstance(result, bytes) else str(result)
        for item in batch:
            if item.done is not None:
                item.done.set()

    def _by_node(self, appends: list[_Append]) -> list[list[_Append]]:
        if not self.cluster:
            return [appends] if appends else []
        groups: dict[str, list[_Append]] = {}
        cluster: Any = self.client
        for item in appends:
            groups.setdefault(cluster.get_node_from_key(item.keys[0]).name, []).append(item)
        return list(groups.values())

    def _send(self, appends: list[_Append]) -> list[Any]:
        """One pipeline to the node serving these appends (a plain one: it loads the script
        where the node lacks it, e.g. a replica just promoted)."""
        client: Any = self.client
        if self.cluster:
            client = client.get_redis_connection(client.get_node_from_key(appends[0].keys[0]))
        pipe = client.pipeline(transaction=False)
        for item in appends:
            self.script(keys=item.keys, args=item.args, client=pipe)
        try:
            results = list(pipe.execute(raise_on_error=False))
        except TRANSIENT_ERRORS:
            self._refresh()
            raise
        if any(isinstance(r, _MOVED) for r in results):
            self._refresh()
        return results

    def _refresh(self) -> None:
        """A Cluster's slots may have a new master: ask the cluster again."""
        if self.cluster:
            try:
                cast(Any, self.client).nodes_manager.initialize()
            except redis.RedisError:
                log.debug("cluster topology refresh failed; retried with the appends")


class EventLog:
    """Append to and read from channel logs on one Redis client.

    Appends go through the process's writer (``_Writer``); reads use ``client``.
    """

    def __init__(
        self,
        client: redis.Redis,
        maxlen: int,
        retry_s: float = 0.0,
        user_maxlen: int = 1000,
        user_max_age_s: float = 3600.0,
    ) -> None:
        self.client = client
        self.maxlen = maxlen
        self.user_maxlen = user_maxlen
        self.user_max_age_s = user_max_age_s
        self.retry_s = retry_s
        self._append = client.register_script(_APPEND)
        self._writer: _Writer | None = None
        self._writer_lock = threading.Lock()

    def _writer_here(self) -> _Writer:
        writer = self._writer
        if writer is None or writer.pid != os.getpid():  # none yet, or inherited over a fork
            with self._writer_lock:
                writer = self._writer
                if writer is None or writer.pid != os.getpid():
                    writer = self._writer = _Writer(self.client, self._append, self.retry_s)
        return writer

    def _args(self, channel: str, event: str, data: str, ttl_s: int) -> list[Any]:
        if channel.startswith("streams/"):
            return [self.maxlen, event, data, ttl_s, topic(channel), f"{os.getpid()}", 0, "0"]
        # A user's channel is appended to for as long as the user works: bounded by count and age.
        oldest = f"{int((time.time() - self.user_max_age_s) * 1000)}-0"
        return [self.user_maxlen, event, data, ttl_s, topic(channel), f"{os.getpid()}", 0, oldest]

    def append(self, channel: str, event: str, data: str, ttl_s: int) -> str:
        """Append one event exactly once, after everything this process queued before it, and
        wait for it (retried through a Redis restart); returns its entry id."""
        item = _Append(channel, self._args(channel, event, data, ttl_s), threading.Event(), None)
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
        self._writer_here().put(_Append(channel, args, None, on_error))

    def wait_written(self) -> None:
        """Wait until every append this process queued before now is written (or failed)."""
        self._put_and_wait(_Append(None, [], threading.Event(), None))

    def _put_and_wait(self, item: _Append) -> bool:
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
        start = "-" if after is None else "(" + after
        rows: Any = self.client.xrange(log_key(channel), min=start, max="+", count=count)
        return [(_s(entry_id), _s(fields[b"e"]), _s(fields[b"d"])) for entry_id, fields in rows]

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
    """The app's event log; its writer starts with this process's first append."""
    current: EventLog | None = app.extensions.get(_EVENT_LOG)
    if current is None:
        cfg = app.config
        current = EventLog(
            app.extensions[REDIS_EXTENSION],
            cfg["STREAM_LOG_MAXLEN"],
            retry_s=cfg["REDIS_RETRY_S"],
            user_maxlen=cfg["USER_LOG_MAXLEN"],
            user_max_age_s=cfg["STREAM_LOG_TTL_S"],
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


def _get(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))
