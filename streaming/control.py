"""The control bus: a typed message, one writer, one reader per worker, ops by table.

- ``ControlMessage``: an admin action (cancel / revoke a stream, revoke a user, a token or a
  tenant), with the one ``encode`` / ``decode`` of its JSON. ``send`` (and ``set_flags``, for the
  per-stream flags a worker re-checks on its keeper tick) are the only writers of that JSON;
  ``streaming.revocation`` and channel-mode cancel call them.
- ``Dispatcher``: ONE pub/sub connection per worker process. It receives control messages (each
  handed to the handler its op names in ``ops``) and the notifications of every hub channel that
  has a local subscriber, and fans each event out to the local subscribers' queues (framed once,
  shared by all). Redis connections per worker therefore do not grow with subscribers.
- ``Services``: the worker's dispatcher and keeper threads, started by
  ``streaming.services.start_services`` (gunicorn's ``post_worker_init``, test fixtures), never
  by a request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from flask import Flask

from core.store import RedisTarget, reader_client
from streaming import sse
from streaming.load import stop_load_monitor
from streaming.log import EVENT_TOPIC_PREFIX, close_event_log, parse_id, topic

log = logging.getLogger("streamgate.control")

CONTROL_TOPIC = "sg:control"
FLAG_KEY = "sg:flag:stream:{}"
CLOSE = object()

CANCEL_STREAM = "cancel_stream"
REVOKE_STREAM = "revoke_stream"
REVOKE_USER = "revoke_user"
REVOKE_TOKEN = "revoke_token"  # noqa: S105 - an op name, not a secret
REVOKE_TENANT = "revoke_tenant"
_TARGETS = ("stream_id", "user_id", "jti", "tenant_id")


def flag_key(stream_id: str) -> str:
    return FLAG_KEY.format(stream_id)


@dataclass(frozen=True)
class ControlMessage:
    """One action on the control bus: ``op`` and the one target field it names."""

    op: str
    stream_id: str | None = None
    user_id: str | None = None
    jti: str | None = None
    tenant_id: str | None = None
    by: str | None = None  # the acting user's id; None: the command line
    reason: str | None = None

    def encode(self) -> str:
        """The JSON on the wire and in a stream's flag: the op, its target, by and reason."""
        fields = asdict(self)
        return json.dumps({k: v for k, v in fields.items() if k not in _TARGETS or v is not None})

    @classmethod
    def decode(cls, raw: str | bytes) -> ControlMessage:
        """Parse a message (ValueError when it is not one)."""
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("op"), str):
            raise ValueError("not a control message")
        values = {k: data.get(k) for k in ("op", *_TARGETS, "by", "reason")}
        return cls(**{k: None if v is None else str(v) for k, v in values.items()})  # type: ignore[arg-type]


def send(client: redis.Redis, message: ControlMessage, ttl_s: int) -> None:
    """Record a stream op as the stream's flag, then announce the message to every worker."""
    encoded = message.encode()
    pipe = client.pipeline(transaction=False)
    if message.stream_id is not None:
        pipe.set(flag_key(message.stream_id), encoded, ex=ttl_s)
    # By name: a Cluster pipeline refuses .publish() (it goes to any node and is broadcast).
    pipe.execute_command("PUBLISH", CONTROL_TOPIC, encoded)
    pipe.execute()


def set_flags(client: redis.Redis, messages: list[ControlMessage], ttl_s: int) -> None:
    """Flag streams without announcing them (a principal-wide message announces them all)."""
    if not messages:
        return
    pipe = client.pipeline(transaction=False)
    for message in messages:
        if message.stream_id is not None:
            pipe.set(flag_key(message.stream_id), message.encode(), ex=ttl_s)
    pipe.execute()


Handler = Callable[[ControlMessage], None]


class Subscriber:
    """One open hub connection in this process.

    Its pending events are a deque and a wake-up flag: the dispatcher appends and sets the flag,
    the connection's greenlet waits on the flag (no CPU while idle) and takes everything pending
    at once, so a reader that fell behind catches up in one write instead of one per event.
    ``claims`` are the verified token's (for the batched revocation re-check), ``conn_id`` its entry
    in the user's subscription set (renewed in batch by the keeper: an idle subscriber makes no
    Redis call of its own).
    """

    __slots__ = (
        "channel",
        "user_id",
        "jti",
        "tenant_id",
        "claims",
        "conn_id",
        "maxsize",
        "items",
        "wakeup",
        "closed",
    )

    def __init__(
        self,
        channel: str,
        user_id: str,
        jti: str,
        tenant_id: str,
        maxsize: int,
        claims: dict[str, Any] | None = None,
        conn_id: str = "",
    ) -> None:
        self.channel = channel
        self.user_id = user_id
        self.jti = jti
        self.tenant_id = tenant_id
        self.claims = claims or {}
        self.conn_id = conn_id
        self.maxsize = maxsize
        self.items: deque[Any] = deque()
        self.wakeup = threading.Event()
        self.closed: str | None = None

    def offer(self, item: Any) -> None:
        if self.closed is not None:
            return
        if len(self.items) >= self.maxsize:
            self.close("slow_consumer")  # a client that does not read; it can resume from the log
            return
        self.items.append(item)
        self.wakeup.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.items.append(CLOSE)
            self.wakeup.set()

    def take(self, timeout: float) -> list[Any]:
        """Everything pending, waiting up to ``timeout`` for the first item; [] on timeout."""
        deadline = time.monotonic() + timeout
        while not self.items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self.wakeup.wait(remaining)
            self.wakeup.clear()  # then look again: an item appended meanwhile is not lost
        return [self.items.popleft() for _ in range(len(self.items))]


class _Channel:
    """The local subscribers of one hub channel, and whether Redis confirmed our SUBSCRIBE."""

    __slots__ = ("subs", "ready")

    def __init__(self) -> None:
        self.subs: set[Subscriber] = set()
        self.ready = threading.Event()


class Dispatcher:
    """The worker's single pub/sub reader: control messages and hub fan-out.

    A subscriber must not replay the log before Redis has processed the SUBSCRIBE for its
    channel, or an event appended in between would be neither replayed nor delivered. ``add``
    returns an event that is set when Redis confirmed the subscription: SUBSCRIBE and UNSUBSCRIBE
    replies arrive in the order the commands were sent, so a channel is ready when the reply to
    the last SUBSCRIBE sent for it has arrived (``pending`` counts the unanswered ones).

    The connection never reconnects silently (a client with retries, as ``redis.Redis(host=...)``
    gets by default, would re-subscribe inside ``get_message`` and hide what was published while
    it was away): retries are pinned to 0, any failure surfaces here, every local subscriber is
    closed (it resumes from the log with Last-Event-ID), and a fresh connection subscribes anew.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.lock = threading.RLock()
        self.channels: dict[str, _Channel] = {}
        self.pending: dict[str, int] = {}
        self.ops: dict[str, Handler] = {}  # op name -> what this worker does about it
        self.pubsub: Any = None
        self.running = True
        self.healthy = threading.Event()
        # Its own connection without a read timeout (it waits for messages indefinitely) and
        # without retries (a reconnect must be seen, not papered over). On a Cluster: to any
        # node (plain PUBLISH reaches them all), another one after that node fails.
        self.client = reader_client(
            RedisTarget.from_config(app.config), client_name=f"sg-hub:{os.getpid()}"
        )

    # --- subscriptions --------------------------------------------------------------------

    def add(self, sub: Subscriber) -> threading.Event:
        """Register ``sub`` for its channel's live events; wait on the result before replaying."""
        with self.lock:
            state = self.channels.get(sub.channel)
            if state is None:
                state = self.channels[sub.channel] = _Channel()
                self._send("subscribe", sub.channel)
            state.subs.add(sub)
            return state.ready

    def remove(self, sub: Subscriber) -> None:
        with self.lock:
            state = self.channels.get(sub.channel)
            if state is None or sub not in state.subs:
                return
            state.subs.discard(sub)
            if not state.subs:
                del self.channels[sub.channel]
                self._send("unsubscribe", sub.channel)

    def _send(self, command: str, channel: str) -> None:
        # Called with the lock held. When the connection is down, the next connect subscribes
        # to every channel that still has subscribers; a failure here is the reader's to handle.
        if self.pubsub is None or not self.healthy.is_set():
            return
        name = topic(channel)
        try:
            if command == "subscribe":
                self.pending[name] = self.pending.get(name, 0) + 1
                self.pubsub.subscribe(name)
            else:
                self.pubsub.unsubscribe(name)
        except (redis.RedisError, OSError):
            log.warning("hub %s %s failed; the reader reconnects", command, channel)

    def _confirmed(self, name: str) -> None:
        with self.lock:
            left = self.pending.get(name, 0) - 1
            if left > 0:
                self.pending[name] = left
                return
            self.pending.pop(name, None)
            state = self.channels.get(name[len(EVENT_TOPIC_PREFIX) :])
            if state is not None:
                state.ready.set()

    def subscribers(self, predicate: Callable[[Subscriber], bool]) -> list[Subscriber]:
        with self.lock:
            return [s for state in self.channels.values() for s in state.subs if predicate(s)]

    def count(self) -> int:
        with self.lock:
            return sum(len(state.subs) for state in self.channels.values())

    # --- the reader -----------------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.1
        while self.running:
            try:
                self._connect()
                backoff = 0.1
                self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure of the connection means reconnect
                with self.lock:
                    self.healthy.clear()
                    for state in self.channels.values():
                        state.ready.clear()
                    subs = [s for state in self.channels.values() for s in state.subs]
                if not self.running:
                    return  # stop() closed the connection under us
                log.warning("control/hub connection lost: %s; reconnecting", exc)
                # Anything published while we were away was missed: close local subscribers so
                # they resume from the log with Last-Event-ID, rather than silently skip events.
                for sub in subs:
                    sub.close("hub_reconnect")
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _close_pubsub(self) -> None:
        """Close the current subscription connection, if any (caller holds the lock).

        The closed PubSub is dropped, not kept: redis-py's PubSub opens a new connection on its
        next command (a subscriber's UNSUBSCRIBE, the idle PING), one nobody would close.
        """
        pubsub, self.pubsub = self.pubsub, None
        self.healthy.clear()
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001, S110 - it is being replaced or stopped either way
                pass

    def _connect(self) -> None:
        with self.lock:
            self._close_pubsub()
            if not self.running:  # stop() ran since the loop's check: connect no more
                raise ConnectionError("the dispatcher is stopped")
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=False)
            names = [topic(c) for c in self.channels]
            self.pending = dict.fromkeys([CONTROL_TOPIC, *names], 1)
            self.pubsub.subscribe(CONTROL_TOPIC, *names)
            self.healthy.set()

    def _listen(self) -> None:
        pubsub = self.pubsub  # this connection's; replaced or dropped only by _connect/stop
        idle_since = time.monotonic()
        while self.running:
            message = pubsub.get_message(timeout=5.0)
            if message is None:
                if time.monotonic() - idle_since > 30:
                    with self.lock:
                        if pubsub is not self.pubsub:  # closed under us: reconnect or stop
                            raise ConnectionError("the pub/sub connection was closed")
                        pubsub.ping()  # proves the connection is alive; raises if not
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            kind = message.get("type")
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if kind == "subscribe":
                self._confirmed(channel)
                continue
            if kind != "message":
                continue
            data = message["data"]
            data = data.decode() if isinstance(data, bytes) else data
            if channel == CONTROL_TOPIC:
                self._control(data)
            elif channel.startswith(EVENT_TOPIC_PREFIX):
                self._fan_out(channel[len(EVENT_TOPIC_PREFIX) :], data)

    def _fan_out(self, channel: str, data: str) -> None:
        entry_id, event, payload = data.split("\n", 2)
        parsed = parse_id(entry_id)
        if parsed is None:
            return
        frame = sse.frame(payload, event=event, id=entry_id)
        # Framed once for every subscriber: as an SSE event, and as the HTTP/1.1 chunk carrying
        # it (what a subscriber's socket is sent directly, streaming.fanout).
        item = (parsed, entry_id, event, frame, sse.http_chunk(frame))
        with self.lock:
            state = self.channels.get(channel)
            subs = list(state.subs) if state is not None else []
        for sub in subs:
            sub.offer(item)

    def _control(self, data: str) -> None:
        try:
            message = ControlMessage.decode(data)
        except ValueError:
            return
        handler = self.ops.get(message.op)
        if handler is None:
            return
        try:
            handler(message)
        except Exception:  # noqa: BLE001 - a failed handler must not stop the reader
            log.exception("control handler failed for %s", message.op)

    def stop(self) -> None:
        self.running = False
        with self.lock:
            self._close_pubsub()
        self.client.close()


class Services:
    """The per-process background services of one app: the dispatcher and the keeper.

    ``keeper`` is the keeper's loop; it returns once ``stopping`` is set.
    """

    def __init__(self, app: Flask, dispatcher: Dispatcher) -> None:
        self.app = app
        self.pid = os.getpid()
        self.dispatcher = dispatcher
        self.stopping = threading.Event()  # wakes the keeper's sleep at once on stop
        self.threads: list[threading.Thread] = []

    def start(self, keeper: Callable[[], None]) -> None:
        for name, target in (("hub-dispatcher", self.dispatcher.run), ("keeper", keeper)):
            thread = threading.Thread(target=target, name=f"streamgate-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.dispatcher.healthy.wait(5)

    def stop(self) -> None:
        self.stopping.set()
        self.dispatcher.stop()
        for thread in self.threads:
            thread.join(2)


_SERVICES = "streamgate.services"


def install(app: Flask, services: Services) -> None:
    """Make ``services`` this process's services for ``app`` (see ``services_of``)."""
    app.extensions[_SERVICES] = services


def services_of(app: Flask) -> Services | None:
    """This process's running services for ``app``; None when none were started here."""
    current: Services | None = app.extensions.get(_SERVICES)
    if current is None or current.pid != os.getpid():
        return None
    return current


def stop_services(app: Flask) -> None:
    """Stop this app's background services (tests, shutdown)."""
    current: Services | None = app.extensions.pop(_SERVICES, None)
    if current is not None and current.pid == os.getpid():
        current.stop()
    close_event_log(app)
    stop_load_monitor(app)
    upstreams = app.extensions.get("streamgate.upstreams")
    if upstreams is not None:
        upstreams.close()
