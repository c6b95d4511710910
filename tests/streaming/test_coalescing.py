"""LogSink: tokens merged into ``token`` events without loss, overlap or delay past the window.

Real Redis; the sink is driven directly (as the runner drives it) and the stream's log is read back.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from streaming.channel import LogSink
from streaming.generation import Outcome, stream_channel
from streaming.log import event_log, log_key
from tests.support.hub import channel_generation
from tests.support.waiting import wait_until


def _sink(app: Any) -> tuple[LogSink, str]:
    gen = channel_generation("ten_x", "usr_x", token_jti="j", prompt_estimate=1)
    sink = LogSink(app, gen)
    sink.started()
    return sink, stream_channel(gen.stream_id)


def _tokens(app: Any, channel: str) -> list[dict[str, Any]]:
    rows = event_log(app).replay(channel, None)
    return [json.loads(data) for _, event, data in rows if event == "token"]


def _assert_exact(events: list[dict[str, Any]], parts: list[str]) -> None:
    assert "".join(e["text"] for e in events) == "".join(parts)
    expected = 0
    for e in events:
        assert e["type"] == "token" and e["index"] == expected and e["count"] >= 1 and e["text"]
        expected += e["count"]
    assert expected == len(parts)


def _finish(sink: LogSink, count: int) -> None:
    sink.finished(Outcome("completed", finish_reason="stop"), 1, count)


@pytest.fixture()
def app_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


@pytest.mark.parametrize("app_overrides", [{"SSE_COALESCE_MS": 20}], indirect=True)
def test_tokens_arriving_close_together_are_merged_without_loss_or_overlap(app: Any) -> None:
    rng = random.Random(5)
    sink, channel = _sink(app)
    parts = [
        rng.choice([" a", "b", "\n", " \u00e9t\u00e9", "\u2028", " \U0001f642"]) for _ in range(300)
    ]
    for index, text in enumerate(parts):
        sink.token(text, index)
        time.sleep(rng.choice([0, 0, 0.001, 0.003]))
    _finish(sink, len(parts))
    events = _tokens(app, channel)
    _assert_exact(events, parts)
    assert len(events) < len(parts)  # merged
    assert events[0]["count"] == 1  # the first token is never held back
    assert (event_log(app).last_entry(channel) or ("", ""))[1] == "stream.completed"


@pytest.mark.parametrize("app_overrides", [{"SSE_COALESCE_MS": 50}], indirect=True)
def test_a_stalled_upstream_does_not_hold_back_what_already_arrived(app: Any) -> None:
    sink, channel = _sink(app)
    parts = ["one", " two", " three", " four"]
    for index, text in enumerate(parts):
        sink.token(text, index)
    # No further token, no finish: the timer alone must deliver the merged tail.
    events = wait_until(
        lambda: (lambda ev: ev if sum(e["count"] for e in ev) == 4 else None)(_tokens(app, channel))
    )
    _assert_exact(events, parts)
    _finish(sink, 4)
    _assert_exact(_tokens(app, channel), parts)  # finishing adds nothing twice


@pytest.mark.parametrize(
    "app_overrides", [{"SSE_COALESCE_MS": 60_000, "SSE_COALESCE_BYTES": 64}], indirect=True
)
def test_the_size_bound_flushes_a_long_burst(app: Any) -> None:
    sink, channel = _sink(app)
    parts = [f" w{i:03d}\u00e9" for i in range(200)]  # 7 bytes each in UTF-8
    for index, text in enumerate(parts):
        sink.token(text, index)
    _finish(sink, len(parts))
    events = _tokens(app, channel)
    _assert_exact(events, parts)
    assert events[0]["count"] == 1
    for e in events[1:-1]:
        assert 64 <= len(e["text"].encode()) < 64 + 7


@pytest.mark.parametrize("app_overrides", [{"SSE_COALESCE_MS": 0}], indirect=True)
def test_a_zero_window_sends_every_token_as_its_own_event(app: Any) -> None:
    sink, channel = _sink(app)
    parts = ["a", "b", "c", "d", "e"]
    for index, text in enumerate(parts):
        sink.token(text, index)
    _finish(sink, 5)
    events = _tokens(app, channel)
    assert [e["count"] for e in events] == [1] * 5
    _assert_exact(events, parts)


def test_lifecycle_events_also_reach_the_users_channel(app: Any) -> None:
    sink, channel = _sink(app)
    sink.token("x", 0)
    _finish(sink, 1)
    # The run waits for its own terminal event; the lifecycle copies follow on the log writer.
    rows = wait_until(
        lambda: (found := event_log(app).replay("users/usr_x", None)) and len(found) >= 2 and found
    )
    assert [event for _, event, _ in rows] == ["stream.started", "stream.completed"]
    started = json.loads(rows[0][2])
    assert (
        started["channel"] == channel and started["events_url"] == "/v1/events?channel=" + channel
    )
    done = json.loads(rows[1][2])
    assert done["status"] == "completed" and done["stream_id"] == channel.split("/")[1]


@pytest.mark.parametrize(
    "app_overrides", [{"SSE_COALESCE_MS": 50, "REDIS_RETRY_S": 0.5}], indirect=True
)
def test_flushes_while_every_pooled_connection_is_busy_lose_nothing(app: Any, redis: Any) -> None:
    # The bench's text mismatches under load: a flush waited for the worker's shared
    # pool, gave up, and its merged tokens were gone while the stream went on to complete.
    sink, channel = _sink(app)
    pool = app.extensions["streamgate.redis"].connection_pool
    held = [pool.get_connection() for _ in range(pool.max_connections)]
    try:
        sink.token("one", 0)  # the first token goes out at once
        sink.token(" two", 1)
        sink.token(" three", 2)  # merged with " two" (or alone): a timer flushes the tail
        wait_until(
            lambda: (
                "".join(
                    json.loads(f["d"]).get("text", "") for _, f in redis.xrange(log_key(channel))
                )
                == "one two three"
            ),
            timeout=8,
        )
    finally:
        for connection in held:
            pool.release(connection)
    _finish(sink, 3)
    _assert_exact(_tokens(app, channel), ["one", " two", " three"])
