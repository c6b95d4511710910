"""The worker's one pub/sub connection: shared by every channel, never silently reconnected, and a
subscriber that joins while events pour in misses none of them.

In-process app (threads instead of greenlets), real Redis; the hub is read with the test client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from streaming.control import Dispatcher, Subscriber, services_of
from streaming.log import event_log, log_key
from tests.support.accounts import member_channel
from tests.support.hub import open_hub
from tests.support.tokens import user_headers
from tests.support.waiting import wait_until

# The hub and the control bus need this process's dispatcher and keeper (post_worker_init's).
pytestmark = pytest.mark.usefixtures("app_services")


member = pytest.fixture(member_channel, name="member")


def _hub_connection(redis: Any) -> dict[str, Any]:
    (conn,) = _hub_connections(redis)
    return dict(conn)


def test_one_pubsub_connection_carries_every_channel_and_lets_go_of_them(
    app: Any,
    client: Any,
    redis: Any,
    make_user: Callable[..., Any],
) -> None:
    users = [(u.id, user_headers(u)) for u in (make_user() for _ in range(12))]
    readers = [open_hub(client, f"users/{uid}", headers) for uid, headers in users]
    try:
        assert all(r.status == 200 for r in readers)
        conn = _hub_connection(redis)  # one connection for this process...
        assert int(conn["sub"]) == 12 + 1  # ...subscribed to 12 channels and the control topic
    finally:
        for reader in readers:
            reader.close()
    # Closed subscribers unsubscribe at once (stock flask-sse waits for the next message).
    wait_until(lambda: int(_hub_connection(redis)["sub"]) == 1)


# The log is never trimmed during the test: the entries a reader got are still there to compare
# with (at the default 1,000, a loaded machine's publisher outran the comparison).
@pytest.mark.parametrize("app_overrides", [{"USER_LOG_MAXLEN": 10_000_000}])
def test_resuming_while_events_pour_in_never_skips_or_repeats_one(
    app: Any, client: Any, redis: Any, member: tuple[str, dict[str, str]]
) -> None:
    channel, headers = member
    log = event_log(app)
    stop = threading.Event()

    def publish() -> None:
        for n in range(1_000_000):  # bounded; stopped by the test
            if stop.is_set():
                return
            log.append(channel, "stream.started", f'{{"type":"stream.started","n":{n}}}', 600)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_until(lambda: redis.xlen(log_key(channel)) > 10)
        for _ in range(60):
            last = redis.xrevrange(log_key(channel), count=1)[0][0]
            reader = open_hub(client, channel, headers, last_event_id=last)
            try:
                seen = reader.read(until=lambda _e, r=reader: len(r.events) >= 20)
            finally:
                reader.close()
            ids = [e.id for e in seen]
            expected = [
                row[0] for row in redis.xrange(log_key(channel), min="(" + last, count=len(ids))
            ]
            assert ids == expected  # the first entries after the resume point, in order
    finally:
        stop.set()
        publisher.join(10)


def test_a_dropped_pubsub_connection_closes_local_subscribers_instead_of_hiding_the_gap(
    app: Any, client: Any, redis: Any, member: tuple[str, dict[str, str]]
) -> None:
    channel, headers = member
    with _reading(client, channel, headers) as reader:
        assert redis.client_kill_filter(_type="pubsub") >= 1
        reader.read()  # returns when the server ends the stream
        assert reader.eof
    # The dispatcher is back, on a fresh connection, and delivers again.
    wait_until(lambda: _hub_connections(redis))
    with _reading(client, channel, headers) as again:
        event_log(app).append(channel, "stream.started", '{"type":"stream.started"}', 60)
        events = again.read(until=lambda e: e.event == "stream.started")
        assert events[-1].data == {"type": "stream.started"}


def test_a_subscriber_that_leaves_after_the_dispatcher_stopped_opens_no_connection(
    app: Any, client: Any, redis: Any, member: tuple[str, dict[str, str]]
) -> None:
    # A worker shutting down (or a test's teardown) stops the dispatcher while hub readers are
    # still open; each one unsubscribes as it goes. That must not open a fresh pub/sub
    # connection nobody will close: it would outlive the dispatcher.
    channel, headers = member
    with _reading(client, channel, headers):
        _stop_services(app)
    wait_until(lambda: not _hub_connections(redis))


def test_a_stopped_dispatcher_sends_nothing_more_even_before_its_reader_notices(
    app: Any, redis: Any
) -> None:
    # The reader thread learns of stop() when its read fails; a subscriber leaving in between
    # must not send its UNSUBSCRIBE on a new connection. Driven without the thread, so that
    # window stays open for as long as the test needs.
    _stop_services(app)
    wait_until(lambda: not _hub_connections(redis))
    dispatcher = Dispatcher(app)
    try:
        dispatcher._connect()  # what its reader thread does first
        sub = Subscriber("users/usr_late", "usr_late", "jti", "ten", maxsize=10)
        dispatcher.add(sub)
        assert len(_hub_connections(redis)) == 1
        dispatcher.stop()
        dispatcher.remove(sub)
        wait_until(lambda: not _hub_connections(redis))
        with pytest.raises(ConnectionError):
            dispatcher._connect()  # nor does a reader that checked ``running`` before stop()
        assert not _hub_connections(redis)
    finally:
        dispatcher.stop()  # idempotent; a failed assertion must not leave it to the next test


@contextmanager
def _reading(client: Any, channel: str, headers: dict[str, str]) -> Iterator[Any]:
    """An open hub connection (asserted 200), closed on leaving the block."""
    reader = open_hub(client, channel, headers)
    try:
        assert reader.status == 200
        yield reader
    finally:
        reader.close()


def _stop_services(app: Any) -> None:
    services = services_of(app)
    assert services is not None
    services.stop()


def _hub_connections(redis: Any) -> list[Any]:
    return [c for c in redis.client_list() if c.get("name") == f"sg-hub:{os.getpid()}"]
