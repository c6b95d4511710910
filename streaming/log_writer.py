"""The process's one writer of channel logs, and its repair of a stream log a failover cut short.

One Lua script appends an event (``XADD``, bounded with ``MAXLEN ~``), refreshes the log's expiry
and ``PUBLISH``es the entry to the channel's notification topic, so the order in which subscribers
are notified is the order of the entry ids: a subscriber that skips ids it has already seen can
never skip one it has not. Keys carry a hash tag (the channel) so a cluster keeps each script on
one slot.

Where a replica can be promoted (a Cluster, a Sentinel-watched master) a write the dead master
acknowledged can be lost with it. There the writer names each stream-log entry's id itself
(``<ms>-<seq>``, strictly increasing per stream) and keeps the entries it appended in the last
``STREAM_LOG_REPAIR_S`` (a failover loses only what the master had not yet sent its replica, the
last milliseconds' worth), and a stream's id until as long after its last append. Each append
names the entry before it;
the script refuses one whose predecessor is missing (``gap``), and the writer re-appends what the
log lost, with the ids live readers already saw, before it. A stream with nothing more to append
is checked when the topology epoch moves (or the writer saw Redis errors). A single Redis has no
replica to lose writes to: there the ids are Redis's (``*``), nothing is kept, nothing checked.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

from core.store import TRANSIENT_ERRORS, is_cluster, topology_epoch, writer_client

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
# id returned for a skipped one is its own when the writer named it, else the channel's newest).
# ARGV[9]: the entry the writer appended before this one (empty: none to check); when the log's
# newest is older (a failover lost it), nothing is written and "gap <newest>" is returned.
# ARGV[10]: the entry's id (empty: Redis's). Taken, e.g. by another process's later entry, it
# falls back to Redis's id.
APPEND_SCRIPT = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local prev = redis.call('GET', KEYS[2])
local last
if prev then
  local who, n
  who, n, last = string.match(prev, '^(%S+) (%d+) (%S+)$')
  if who == ARGV[6] and tonumber(n) >= tonumber(ARGV[7]) then
    if ARGV[10] ~= '' then return ARGV[10] end
    return last
  end
end
if ARGV[9] ~= '' and (not last or older(last, ARGV[9])) then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if not top then return 'gap' end
  if older(top[1], ARGV[9]) then return 'gap ' .. top[1] end
end
local id
if ARGV[10] ~= '' then
  id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[10], 'e', ARGV[2], 'd', ARGV[3])
  if type(id) == 'table' then id = nil end
end
if not id and ARGV[8] == '0' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
elseif not id then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '=', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[8])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[6] .. ' ' .. ARGV[7] .. ' ' .. id, 'EX', ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""
_NUMBER, _PREV, _ID = 6, 8, 9  # where the append's number, predecessor and id are in its args
REPAIR_POLL_S = 1.0  # how often a writer keeping entries looks at the topology epoch


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

    __slots__ = ("args", "channel", "done", "entry", "error", "keys", "on_error")

    def __init__(
        self,
        channel: str | None,
        args: list[Any],
        done: threading.Event | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.channel = channel
        self.keys = [log_key(channel), _dedupe_key(channel)] if channel is not None else []
        self.args = args
        self.done = done
        self.on_error = on_error
        self.entry = ""
        self.error: BaseException | None = None


class _Kept:
    """What the writer appended to one stream's log in the last ``STREAM_LOG_REPAIR_S``: each
    append's time and args, in id order (older ones reached the replica long ago: a failover
    loses only the writes its master had not yet sent, the last milliseconds' worth)."""

    __slots__ = ("entries", "last", "touched")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, list[Any]]] = deque()
        self.last: EventId | None = None
        self.touched = time.monotonic()


def _text(entry: EventId) -> str:
    return f"{entry[0]}-{entry[1]}"


def _gap(result: Any) -> str | None:
    """The log's newest id ("" when it has none) if the script found a gap, else None."""
    text = result.decode() if isinstance(result, bytes) else result
    return text[4:] if isinstance(text, str) and text.startswith("gap") else None


_STOP = object()
# A slot served elsewhere now (a failover, a migration): sent again after a topology refresh.
_MOVED = (redis.exceptions.MovedError, redis.exceptions.AskError)
# A pipeline result that means "send it again" (the slot moved, a failover is under way, or the
# node lost the script: a promoted replica, a restarted Redis).
_SEND_AGAIN: tuple[type[Exception], ...] = (
    *_MOVED,
    *TRANSIENT_ERRORS,
    redis.exceptions.NoScriptError,
)


class LogWriter:
    """The process's one writer of channel logs: appends go out in order, many per round trip.

    Runs queue their events and go on; the writer sends whatever is queued as one pipeline on a
    connection of its own, so a worker's appends need one Redis connection however many runs it
    has, never wait for a pool shared with requests, and cost one round trip per batch rather
    than per event. Nothing is held back to fill a batch: while one pipeline is in flight the
    next one gathers. Order per channel is the queue's order (one writer, one connection).
    """

    MAX_BATCH = 512

    def __init__(
        self,
        client: redis.Redis,
        script: Any,
        retry_s: float,
        repair_s: float,
        on_repair: Callable[[int], None] | None = None,
    ) -> None:
        self.client = writer_client(client)
        self.on_repair = on_repair  # told how many entries each repair appends again
        self.cluster = is_cluster(self.client)
        self.script = script
        self.retry_s = retry_s
        self.repair_s = repair_s
        self.repair = repair_s > 0
        self.kept: dict[str, _Kept] = {}  # stream channel -> what was appended to it
        self.epoch: str | None = None
        self.suspect = False  # Redis failed us since the last check: a failover may have struck
        self.checked = time.monotonic()
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
        if self.repair:
            self._check()  # the epoch to compare with
        while True:
            try:
                first = self.queue.get(timeout=REPAIR_POLL_S if self.kept else None)
            except queue.Empty:
                self._check()
                continue
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
            if self.kept and time.monotonic() - self.checked >= REPAIR_POLL_S:
                self._check()

    def _write(self, batch: list[Append]) -> None:
        appends = [item for item in batch if item.keys]  # the rest are barriers
        for item in appends:  # numbered in sending order: a retry's duplicates are recognised
            item.args[_NUMBER] = next(self.numbers)
            if self.repair and item.args[7] == "0" and not item.args[_ID]:
                self._name(item)

        written: dict[int, Any] = {}
        pending = appends

        def send() -> None:
            # Each node's appends in a pipeline of their own: one node failing over holds up
            # only the channels it serves. What fails for a while (a failover's CLUSTERDOWN,
            # a dead node, READONLY, a script cache emptied by a promotion) is sent again; the
            # dedupe key skips what was written.
            nonlocal pending
            again: list[Append] = []
            gaps: dict[str, str] = {}
            error: BaseException | None = None
            for group in self._by_node(pending):
                try:
                    results = self._send(group)
                except TRANSIENT_ERRORS as exc:
                    again, error = again + group, exc
                    continue
                for item, result in zip(group, results, strict=True):
                    newest = _gap(result)
                    if isinstance(result, _SEND_AGAIN):
                        again.append(item)
                        error = cast(BaseException, result)
                    elif newest is not None and item.channel is not None:
                        gaps.setdefault(item.channel, newest)
                        again.append(item)
                    else:
                        written[id(item)] = result
            if error is not None:
                self.suspect = True
            pending = self._with_lost(again, gaps) if gaps else again
            if pending:
                raise redis.ConnectionError(f"{len(pending)} appends to send again: {error}")

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
                self.kept.pop(item.channel or "", None)  # its run fails: nothing to repair
                if item.on_error is not None:
                    item.on_error(result)
            else:
                item.entry = result.decode() if isinstance(result, bytes) else str(result)
                if item.args[_ID] and item.entry != item.args[_ID]:
                    self._renamed(item)
        for item in batch:
            if item.done is not None:
                item.done.set()

    # --- repair: the writer's own ids, kept until a failover can no longer take them ---

    def _name(self, item: Append) -> None:
        """Give a stream-log append its id, after the stream's previous one, and keep it."""
        channel = cast(str, item.channel)
        kept = self.kept.get(channel)
        if kept is None:
            kept = self.kept[channel] = _Kept()
        now_ms, last = int(time.time() * 1000), kept.last
        entry = (now_ms, 0) if last is None or now_ms > last[0] else (last[0], last[1] + 1)
        item.args[_PREV] = _text(last) if last is not None else ""
        item.args[_ID] = _text(entry)
        kept.last, kept.touched = entry, time.monotonic()
        kept.entries.append((kept.touched, item.args))
        horizon = kept.touched - self.repair_s  # memory by rate and window, not stream length
        while kept.entries[0][0] < horizon:
            kept.entries.popleft()

    def _renamed(self, item: Append) -> None:
        """Redis gave the entry another id (another process wrote a later one): keep that."""
        entry = parse_id(item.entry)
        item.args[_ID] = item.entry
        kept = self.kept.get(item.channel or "")
        if kept is not None and entry is not None and (kept.last is None or entry > kept.last):
            kept.last = entry

    def _with_lost(self, again: list[Append], gaps: dict[str, str]) -> list[Append]:
        """``again`` with, before each gapped stream's appends, what its log lost (same ids)."""
        redo = [item for item in again if item.channel not in gaps]
        for channel, newest in gaps.items():
            redo += self._lost(channel, newest, [i for i in again if i.channel == channel])
        return redo

    def _lost(self, channel: str, newest: str, waiting: list[Append]) -> list[Append]:
        """The appends that bring ``channel``'s log from ``newest`` up to date, then ``waiting``."""
        top = parse_id(newest)
        queued = {id(item.args) for item in waiting}
        kept = self.kept.get(channel)
        lost = [
            args
            for _, args in (kept.entries if kept is not None else ())
            if id(args) not in queued and (top is None or (parse_id(args[_ID]) or top) > top)
        ]
        redo = [Append(channel, args, None, None) for args in lost] + waiting
        log.warning(
            "the log of %s lost its entries after %s (a failover): %d appended again",
            channel,
            newest or "its start",
            len(lost),
        )
        if self.on_repair is not None:
            self.on_repair(len(lost))
        for item in redo:  # fresh numbers in sending order, or the dedupe key would skip them
            item.args[_NUMBER] = next(self.numbers)
        if redo:
            redo[0].args[_PREV] = newest if top is not None else ""
        return redo

    def _check(self) -> None:
        """Forget streams quiet for ``STREAM_LOG_REPAIR_S``; after a failover (the topology
        epoch moved, or Redis failed the writer), re-append what the kept streams' logs lost."""
        now = time.monotonic()
        self.checked = now
        for channel in [c for c, k in self.kept.items() if now - k.touched > self.repair_s]:
            del self.kept[channel]
        try:
            epoch = topology_epoch(self.client)
        except redis.RedisError:
            self.suspect = True
            return
        moved = self.epoch is not None and epoch != self.epoch
        if (moved or self.suspect) and self.kept and not self._verify():
            return  # checked again at the next poll
        self.epoch, self.suspect = epoch, False

    def _verify(self) -> bool:
        """Compare each kept stream's log with what was appended; re-append what it lost."""
        channels = list(self.kept)
        try:
            pipe: Any = self.client.pipeline(transaction=False)
            for channel in channels:
                pipe.xrevrange(log_key(channel), "+", "-", count=1)
            tops = pipe.execute()
        except redis.RedisError:
            return False
        redo: list[Append] = []
        for channel, rows in zip(channels, tops, strict=True):
            newest = parse_id(rows[0][0]) if rows else None
            last = self.kept[channel].last
            if last is not None and (newest is None or newest < last):
                redo += self._lost(channel, _text(newest) if newest else "", [])
        if redo:
            self._write(redo)
        return True

    def _by_node(self, appends: list[Append]) -> list[list[Append]]:
        if not self.cluster:
            return [appends] if appends else []
        groups: dict[str, list[Append]] = {}
        cluster: Any = self.client
        for item in appends:
            groups.setdefault(cluster.get_node_from_key(item.keys[0]).name, []).append(item)
        return list(groups.values())

    def _send(self, appends: list[Append]) -> list[Any]:
        """One pipeline of ``EVALSHA`` to the node serving these appends.

        Not the script object's own pipeline call: redis-py's pipeline asks ``SCRIPT EXISTS``
        before every batch, a second round trip per batch (per token when runs are few). A node
        that lacks the script (a replica just promoted, a restarted Redis) answers NOSCRIPT: it
        is loaded there and those appends are sent again (nothing of them was written).
        """
        client: Any = self.client
        if self.cluster:
            client = client.get_redis_connection(client.get_node_from_key(appends[0].keys[0]))
        pipe = client.pipeline(transaction=False)
        sha = self.script.sha
        for item in appends:
            pipe.evalsha(sha, len(item.keys), *item.keys, *item.args)
        try:
            results = list(pipe.execute(raise_on_error=False))
        except TRANSIENT_ERRORS:
            self._refresh()
            raise
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            client.script_load(self.script.script)
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
