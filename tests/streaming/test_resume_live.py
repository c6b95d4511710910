"""Resuming with Last-Event-ID on real gunicorn gevent workers: no gap, no duplicate.

A reference subscriber reads a long stream without ever disconnecting. Another hangs up at random
points 100 times and resumes each time from the last id it saw (the header, or the
``last_event_id`` query parameter for clients that cannot set headers); what it reassembles must be
exactly what the reference saw: the same entry ids in the same order, the same text.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from bench.fake_upstream import expected_text
from tests.support.hub import (
    TERMINAL,
    Event,
    Reading,
    assert_continuous,
    read_hub,
    start_stream,
    text_of,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

TOKENS = 400


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {"SSE_COALESCE_MS": "5", "SSE_HEARTBEAT_S": "1"}


def _reference(live: Any, channel: str, headers: dict[str, str], out: list[Reading]) -> None:
    with live.client() as client:
        out.append(read_hub(client, channel, headers))


def _reconnect(client: Any, redis: Any, user_id: str, **kwargs: Any) -> Reading:
    """``read_hub``, once more when refused for the per-user cap: a hang-up counts against it
    until the server has seen the connection close, which a loaded machine delays past the next
    reconnect. It waits for every earlier connection but the reference reader to be released (a
    leaked one never is: the wait fails)."""
    reading = read_hub(client, **kwargs)
    if reading.status == 429 and (reading.body or {}).get("error_code") == "too_many_subscriptions":
        wait_until(lambda: redis.zcard(f"sg:subs:{user_id}") <= 1, timeout=30)
        reading = read_hub(client, **kwargs)
    return reading


@pytest.mark.parametrize("via", ["header", "query"])
def test_hundred_random_disconnects_reassemble_exactly(
    live: Any, live_user: Any, via: str, redis: Any
) -> None:
    user, headers = live_user()
    rng = random.Random(f"resume-{via}")  # reproducible "random" points
    with live.client() as client:
        started = start_stream(client, headers, tokens=TOKENS, delay_ms=8, first_delay_ms=200)
        channel = started["channel"]
        reference: list[Reading] = []
        ref_thread = threading.Thread(target=_reference, args=(live, channel, headers, reference))
        ref_thread.start()

        seen: list[Event] = []
        last: str | None = None
        disconnects = 0
        for _ in range(1000):  # bounded: 100 hang-ups, then read to the end
            stop = rng.choice([0, 1, 1, 2, 3]) if disconnects < 100 else None
            reading = _reconnect(
                client,
                redis,
                user.id,
                channel=channel,
                headers=headers,
                last_event_id=last,
                via=via,
                stop_after=stop,
            )
            disconnects += stop is not None
            assert reading.status == 200, reading.body
            assert "X-Streamgate-History" not in reading.headers
            seen.extend(reading.events)
            last = seen[-1].id if seen else last
            if seen and seen[-1].event in TERMINAL:
                break
        ref_thread.join(60)

    assert disconnects == 100
    (ref,) = reference
    assert ref.eof and ref.names[-1] == "stream.completed"
    assert ref.names[0] == "stream.started"
    assert [e.id for e in seen] == ref.ids  # no gap, no duplicate, same order
    assert text_of(seen) == text_of(ref.events) == expected_text(TOKENS)
    assert_continuous(seen)
    assert seen[-1].data["usage"]["completion_tokens"] == TOKENS


def test_late_subscriber_gets_everything_then_terminal_and_eof(live: Any, live_user: Any) -> None:
    user, headers = live_user()
    with live.client() as client:
        started = start_stream(client, headers, tokens=120, delay_ms=1)
        live_reading = read_hub(client, started["channel"], headers)
        assert live_reading.eof and live_reading.names[-1] == "stream.completed"

        late = read_hub(client, started["channel"], headers)  # after the end
        assert late.status == 200 and late.eof
        assert late.ids == live_reading.ids
        assert late.names[0] == "stream.started" and late.names[-1] == "stream.completed"
        assert text_of(late.events) == expected_text(120)
        assert_continuous(late.events)

        # Resuming after the terminal event: nothing more will come; 204 tells EventSource to stop.
        done = client.get(
            "/v1/events",
            params={"channel": started["channel"]},
            headers={**headers, "Last-Event-ID": late.ids[-1]},
        )
        assert done.status_code == 204
