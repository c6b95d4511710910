"""The control bus and the per-process services that act on it.

- ``send``: an admin action (cancel / revoke a stream, revoke a user or a token) is written as a
  flag in Redis, then announced on the ``sg:control`` pub/sub topic.
- ``Dispatcher``: ONE pub/sub connection per worker process. It receives control messages and the
  notifications of every hub channel that has a local subscriber, and fans each event out to the
  local subscribers' queues (framed once, shared by all). Redis connections per worker therefore
  do not grow with subscribers.
- ``Keeper``: every few seconds renews the leases of local runs, re-checks their flags (a worker
  that missed a message still acts within one interval), enforces the maximum duration, and reaps
  runs whose worker died (their lease expired) so their subscribers are told.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask

from auth.store import REDIS_EXTENSION
from streaming import sse
from streaming.log import EventLog, parse_id, topic

log = logging.getLogger("streamgate.control")

CONTROL_TOPIC = "sg:control"
FLAG_KEY = "sg:flag:stream:{}"
CLOSE = object()


def flag_key(stream_id: str) -> str:
    return FLAG_KEY.format(stream_id)


def send(client: redis.Redis, op: str, ttl_s: int, **fields: Any) -> None:
    """Record the action as a flag (for stream ops) and announce it to every worker."""
    message = json.dumps({"op": op, **fields})
    pipe = client.pipeline(transaction=False)
    if "stream_id" in fields:
        pipe.set(flag_key(fields["stream_id"]), message, ex=ttl_s)
    pipe.publish(CONTROL_TOPIC, message)
    pipe.execute()


class Subscriber:
    """One open hub connection in this process."""

    __slots__ = ("channel", "user_id", "jti", "tenant_id", "queue", "closed")

    def __init__(self, channel: str, user_id: str, jti: str, tenant_id: str, maxsize: int) -> None:
        self.channel = channel
        self.user_id = user_id
        self.jti = jti
        self.tenant_id = tenant_id
        self.queue: queue.Queue[Any] = queue.Queue(maxsize)
        self.closed: str | None = None

    def offer(self, item: Any) -> None:
        if self.closed is not None:
            return
        try:
            self.queue.put_nowait(item)
        except queue.Full:  # a client that does not read: drop it; it can resume from the log
            self.close("slow_consumer")

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            try:
                self.queue.put_nowait(CLOSE)
            except queue.Full:
                pass  # the reader finds ``closed`` set at its next item


class Dispatcher:
    """The worker's single pub/sub reader: control messages and hub fan-out."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.lock = threading.RLock()
        self.channels: dict[str, set[Subscriber]] = {}
        self.handlers: list[Callable[[dict[str, Any]], None]] = []
        self.pubsub: Any = None
        self.running = True
        self.healthy = threading.Event()
        url = app.config["REDIS_URL"]
        # Its own connection without a read timeout: it waits for messages indefinitely.
        self.client = redis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=2,
                                           socket_keepalive=True)

    # --- subscriptions --------------------------------------------------------------------

    def add(self, sub: Subscriber) -> None:
        with self.lock:
            subs = self.channels.get(sub.channel)
            if subs is None:
                subs = self.channels[sub.channel] = set()
                if self.pubsub is not None:
                    self.pubsub.subscribe(topic(sub.channel))
            subs.add(sub)

    def remove(self, sub: Subscriber) -> None:
        with self.lock:
            subs = self.channels.get(sub.channel)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self.channels[sub.channel]
                if self.pubsub is not None:
                    try:
                        self.pubsub.unsubscribe(topic(sub.channel))
                    except redis.RedisError:
                        pass  # the reconnect resubscribes only to live channels

    def subscribers(self, predicate: Callable[[Subscriber], bool]) -> list[Subscriber]:
        with self.lock:
            return [s for subs in self.channels.values() for s in subs if predicate(s)]

    def count(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.channels.values())

    # --- the reader -----------------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.1
        while self.running:
            try:
                self._connect()
                backoff = 0.1
                self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure of the connection means reconnect
                self.healthy.clear()
                if not self.running:
                    return  # stop() closed the connection under us
                log.warning("control/hub connection lost: %s; reconnecting", exc)
                # Anything published while we were away was missed: close local subscribers so
                # they resume from the log with Last-Event-ID, rather than silently skip events.
                for sub in self.subscribers(lambda s: True):
                    sub.close("hub_reconnect")
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _connect(self) -> None:
        with self.lock:
            if self.pubsub is not None:
                try:
                    self.pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            self.pubsub.subscribe(CONTROL_TOPIC, *[topic(c) for c in self.channels])
        self.healthy.set()

    def _listen(self) -> None:
        idle_since = time.monotonic()
        while self.running:
            message = self.pubsub.get_message(timeout=5.0)
            if message is None:
                if time.monotonic() - idle_since > 30:
                    self.pubsub.ping()  # proves the connection is alive; raises if not
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            if message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            data = message["data"]
            data = data.decode() if isinstance(data, bytes) else data
            if channel == CONTROL_TOPIC:
                self._control(data)
            elif channel.startswith("sg:ev:"):
                self._fan_out(channel[len("sg:ev:"):], data)

    def _fan_out(self, channel: str, data: str) -> None:
        entry_id, event, payload = data.split("\n", 2)
        parsed = parse_id(entry_id)
        if parsed is None:
            return
        frame = sse.frame(payload, event=event, id=entry_id)
        item = (parsed, entry_id, event, frame)
        with self.lock:
            subs = list(self.channels.get(channel, ()))
        for sub in subs:
            sub.offer(item)

    def _control(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        for handler in list(self.handlers):
            try:
                handler(message)
            except Exception:  # noqa: BLE001 - one handler must not starve the others
                log.exception("control handler failed for %s", message.get("op"))

    def stop(self) -> None:
        self.running = False
        with self.lock:
            if self.pubsub is not None:
                try:
                    self.pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
        self.client.close()


class Services:
    """The per-process services of one app: dispatcher, keeper, event log."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.pid = os.getpid()
        self.dispatcher = Dispatcher(app)
        self.event_log = EventLog(app.extensions[REDIS_EXTENSION], app.config["STREAM_LOG_MAXLEN"])
        self.running = True
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        from streaming.keeper import keep

        for name, target in (("hub-dispatcher", self.dispatcher.run), ("keeper", lambda: keep(self))):
            thread = threading.Thread(target=target, name=f"streamgate-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.dispatcher.healthy.wait(5)

    def stop(self) -> None:
        self.running = False
        self.dispatcher.stop()
        for thread in self.threads:
            thread.join(2)


_start_lock = threading.Lock()


def services(app: Flask) -> Services:
    """This process's services for ``app``, started on first use (after gunicorn forks)."""
    current: Services | None = app.extensions.get("streamgate.services")
    if current is not None and current.pid == os.getpid():
        return current
    with _start_lock:
        current = app.extensions.get("streamgate.services")
        if current is None or current.pid != os.getpid():
            current = Services(app)
            app.extensions["streamgate.services"] = current
            from streaming.keeper import install_control_handlers

            install_control_handlers(current)
            current.start()
    return current


def stop_services(app: Flask) -> None:
    """Stop this app's background services (tests, shutdown)."""
    current: Services | None = app.extensions.pop("streamgate.services", None)
    if current is not None and current.pid == os.getpid():
        current.stop()
