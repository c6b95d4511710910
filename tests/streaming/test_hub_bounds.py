"""What one subscriber may cost (issue 18, finding 7): replay in pages, connects counted, user
logs bounded.

Before, ``GET /v1/events`` read a channel's whole log (up to ``STREAM_LOG_MAXLEN`` entries) into
memory before its first byte, any number of times a minute, and a ``users/<id>`` log, appended to
for as long as its user works, was kept whole as long as anything was appended.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from streaming.generation import user_channel
from streaming.log import REPLAY_PAGE, EventLog, event_log, log_key
from tests.support.accounts import member_channel
from tests.support.hub import open_hub

pytestmark = pytest.mark.usefixtures("app_services")

member = pytest.fixture(member_channel, name="member")

ENTRIES = 3 * REPLAY_PAGE


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"USER_LOG_MAXLEN": 5000, "SSE_CONNECTS_PER_MINUTE": 5}


def _fill(app: Any, channel: str, count: int) -> None:
    log = event_log(app)
    for i in range(count):
        log.append_later(channel, "note", json.dumps({"type": "note", "n": i}), 600)
    log.wait_written()


def test_a_long_log_is_replayed_page_by_page(
    app: Any,
    client: Any,
    member: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel, headers = member
    _fill(app, channel, ENTRIES)
    read: list[int] = []
    original, first_page = EventLog.read_after, EventLog.first_page

    def counting(self: EventLog, ch: str, after: str | None, count: int = 1000) -> Any:
        rows = original(self, ch, after, count)
        if ch == channel:
            read.append(len(rows))
        return rows

    def counting_first(self: EventLog, ch: str, after: str | None, count: int) -> Any:
        rows, lost = first_page(self, ch, after, count)
        if ch == channel:
            read.append(len(rows))
        return rows, lost

    monkeypatch.setattr(EventLog, "read_after", counting)
    monkeypatch.setattr(EventLog, "first_page", counting_first)
    reader = open_hub(client, channel, headers)
    read_at_first_event: list[int] = []

    def last_one(event: Any) -> bool:
        if not read_at_first_event:
            read_at_first_event.append(sum(read))
        return bool(event.data.get("n") == ENTRIES - 1)

    try:
        events = reader.read(until=last_one)
    finally:
        reader.close()
    # The first bytes went out after one page was read, not the whole log.
    assert read_at_first_event == [REPLAY_PAGE], read
    assert [e.data["n"] for e in events] == list(range(ENTRIES))  # all of it, in order
    assert max(read) <= REPLAY_PAGE


def test_connects_past_the_rate_are_refused_until_the_minute_turns(
    client: Any, member: tuple[str, dict[str, str]]
) -> None:
    channel, headers = member
    accepted = 0
    refusal = None
    for _ in range(2 * 5 + 1):  # bounded; the minute may turn once along the way
        reader = open_hub(client, channel, headers)
        reader.close()
        if reader.status == 429:
            refusal = reader.response
            break
        assert reader.status == 200
        accepted += 1
    assert refusal is not None and accepted >= 5
    body = json.loads(refusal.get_data())
    assert body["error_code"] == "too_many_connects"
    assert 1 <= int(refusal.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    "app_overrides", [{"USER_LOG_MAXLEN": 10, "STREAM_LOG_TTL_S": 1}], indirect=False
)
def test_a_users_log_keeps_at_most_its_count_and_nothing_older_than_its_age(
    app: Any, redis: Any, app_overrides: dict[str, Any]
) -> None:
    channel = user_channel("usr_" + "q" * 20)
    _fill(app, channel, 25)
    assert redis.xlen(log_key(channel)) == 10  # exactly, not about
    time.sleep(1.1)  # every entry is now older than the log's age limit (1 s)
    _fill(app, channel, 1)
    assert redis.xlen(log_key(channel)) == 1
