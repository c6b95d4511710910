"""The process's one writer of channel logs.

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
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

from core.store import TRANSIENT_ERRORS, is_cluster, writer_client

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
APPEND_SCRIPT = """
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


class AppendFailed(redis.ConnectionError):
    """An append could not be written within ``REDIS_RETRY_S`` (Redis unreachable that long)."""


class Append:
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


class LogWriter:
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

    def put(self, item: Append) -> None:
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
            batch: list[Append] = [first]
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

    def _write(self, batch: list[Append]) -> None:
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
            again: list[Append] = []
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

    def _by_node(self, appends: list[Append]) -> list[list[Append]]:
        if not self.cluster:
            return [appends] if appends else []
        groups: dict[str, list[Append]] = {}
        cluster: Any = self.client
        for item in appends:
            groups.setdefault(cluster.get_node_from_key(item.keys[0]).name, []).append(item)
        return list(groups.values())

    def _send(self, appends: list[Append]) -> list[Any]:
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
