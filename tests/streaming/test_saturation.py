"""At capacity, admitted work finishes and new work is refused at the door (issue 14).

Real Redis, the in-process app. The worker's request pool is drained the way a crowd of
subscribers drains it (every connection checked out and held):

- a channel-mode run that is already going completes with the exact text: its events go through
  the log writer's own connection and its bookkeeping through the runs' pool. Before, each flush
  waited for the shared pool; a flush that gave up lost its merged tokens (the bench's
  ``text_mismatches``) and a token flush that gave up failed the run (``internal_error``);
- the requests that meet the drained pool get ``503 overloaded`` with ``Retry-After``, in
  OpenAI's shape on the OpenAI route, never ``redis_unavailable`` (Redis is fine);
- the event-loop lag monitor refuses new work while the loop is stalled, and admits it again
  once the stall is over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.fake_upstream import expected_text
from streaming.generation import TERMINAL_EVENTS, stream_channel
from streaming.load import LoadMonitor
from streaming.log import log_key
from tests.support.accounts import member_headers
from tests.support.waiting import wait_until

TOKENS = 60


headers = pytest.fixture(member_headers, name="headers")


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    # A short wait for a connection (the default 2 s only makes the test slower) and a coalescing
    # window that the upstream's 10 ms tokens straddle, so timer flushes happen too.
    return {"REDIS_POOL_WAIT_S": 0.2, "SSE_COALESCE_MS": 15, "REDIS_RETRY_S": 1}


class Drained:
    """Every connection of the app's request pool checked out and held, then given back."""

    def __init__(self, app: Any) -> None:
        self.pool = app.extensions["streamgate.redis"].connection_pool
        self.held = [self.pool.get_connection() for _ in range(self.pool.max_connections)]

    def release(self) -> None:
        for connection in self.held:
            self.pool.release(connection)
        self.held = []


@pytest.fixture()
def drained(app: Any) -> Iterator[Callable[[], Drained]]:
    made: list[Drained] = []

    def drain() -> Drained:
        made.append(Drained(app))
        return made[-1]

    yield drain
    for d in made:
        d.release()


def _body() -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def _log_events(redis: Any, stream_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The stream's log, read on the test's own Redis client (the app's pool may be drained)."""
    rows = redis.xrange(log_key(stream_channel(stream_id)))
    return [(fields["e"], json.loads(fields["d"])) for _, fields in rows]


def _ended(redis: Any, stream_id: str) -> list[tuple[str, dict[str, Any]]] | None:
    events = _log_events(redis, stream_id)
    return events if events and events[-1][0] in TERMINAL_EVENTS else None


def test_a_running_stream_completes_exactly_while_the_request_pool_is_drained(
    app: Any,
    redis: Any,
    client: Any,
    headers: dict[str, str],
    fake_upstream: Any,
    drained: Callable[[], Drained],
) -> None:
    fake_upstream.reset(tokens=TOKENS, delay_ms=10, first_delay_ms=100)
    created = client.post("/v1/streams", headers=headers, json=_body())
    assert created.status_code == 202, created.get_data(as_text=True)
    stream_id = created.get_json()["id"]

    pool = drained()  # the crowd arrives while the run streams
    try:
        events = wait_until(lambda: _ended(redis, stream_id), timeout=60)
    finally:
        pool.release()
    names = [name for name, _ in events]
    assert names[-1] == "stream.completed", events[-1]
    text = "".join(data["text"] for name, data in events if name == "token")
    assert text == expected_text(TOKENS)
    assert sum(data["count"] for name, data in events if name == "token") == TOKENS


def test_a_drained_pool_is_answered_overloaded_not_redis_unavailable(
    client: Any, headers: dict[str, str], fake_upstream: Any, drained: Callable[[], Drained]
) -> None:
    fake_upstream.reset(tokens=3)
    pool = drained()
    try:
        streams = client.post("/v1/streams", headers=headers, json=_body())
        chat = client.post("/v1/chat/completions", headers=headers, json=_body())
    finally:
        pool.release()
    assert streams.status_code == 503, streams.get_data(as_text=True)
    assert streams.get_json()["error_code"] == "overloaded"
    assert streams.headers["Retry-After"] == "1"
    assert chat.status_code == 503, chat.get_data(as_text=True)
    assert chat.get_json()["error"]["code"] == "overloaded"  # OpenAI's shape: SDKs retry it
    assert chat.headers["Retry-After"] == "1"
    # Nothing was admitted, nothing is left: the same user may start a stream at once.
    again = client.post("/v1/streams", headers=headers, json=_body())
    assert again.status_code == 202, again.get_data(as_text=True)


@pytest.mark.parametrize("app_overrides", [{"OVERLOAD_MAX_RUNS": 1}])
def test_the_door_refuses_new_generations_past_the_worker_cap_and_reopens(
    app: Any,
    redis: Any,
    client: Any,
    headers: dict[str, str],
    fake_upstream: Any,
) -> None:
    # Long enough to be running when the next request comes, however loaded the machine (at 20
    # tokens it could finish first: 202 == 503).
    fake_upstream.reset(tokens=100, delay_ms=50)
    first = client.post("/v1/streams", headers=headers, json=_body())
    assert first.status_code == 202
    stream_id = first.get_json()["id"]
    refused = client.post("/v1/streams", headers=headers, json=_body())
    assert refused.status_code == 503 and refused.get_json()["error_code"] == "overloaded"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'streamgate_overload_refusals_total{reason="max_runs"} 1.0' in metrics
    # The admitted one is untouched by the refusal.
    events = wait_until(lambda: _ended(redis, stream_id), timeout=30)
    assert events[-1][0] == "stream.completed"
    assert "".join(d["text"] for n, d in events if n == "token") == expected_text(100)
    # And once it is done the door opens again.
    wait_until(
        lambda: client.post("/v1/streams", headers=headers, json=_body()).status_code == 202,
        timeout=10,
    )


def test_the_lag_monitor_refuses_while_the_loop_is_stalled_and_recovers() -> None:
    running = 50
    learned: list[float] = []
    monitor = LoadMonitor(
        lag_limit_s=0.1,
        max_runs=0,
        running=lambda: running,
        interval_s=0.02,
        smoothing=1.0,
        report=lambda _lag, capacity: learned.append(capacity),
    )
    try:
        assert monitor.refusal(0) is None
        # A stall of the interpreter: a long C-level loop holds the GIL, so the monitor's timer
        # fires late exactly as a gevent worker's does when one greenlet hogs the loop.
        refusals = []
        deadline = time.monotonic() + 30
        while not refusals and time.monotonic() < deadline:
            sum(range(20_000_000))
            time.sleep(0.001)  # let the monitor take its (late) sample
            refusal = monitor.refusal(0)
            if refusal is not None:
                refusals.append(refusal)
        assert refusals and refusals[0].reason == "event_loop_lag"
        # It learned that 50 running generations were too many for this worker: a burst is
        # refused past 90% of that once the loop is on time again, ...
        wait_until(lambda: monitor.refusal(None) is None, timeout=10)
        # (The first capacity learned: on a loaded machine a later late timer of the machine's
        # own making may lower it again, from wherever it had grown back to.)
        assert [c for c in learned if c != float("inf")][0] == 45.0
        # ... and the capacity grows back, one a sample, while the loop stays on time.
        wait_until(lambda: learned[-1] > 60, timeout=10)
        monitor.stop()
        monitor.thread.join(5)
        monitor.capacity = 45.0  # the verdict itself, at a known capacity
        refused = monitor.refusal(running=45)
        assert refused is not None and refused.reason == "capacity"
    finally:
        monitor.stop()
