"""The log writer's repair of a stream log that lost its tail, on one real Redis.

A promoted replica holds a prefix of what its master acknowledged: the log and its dedupe key as
they were a few appends ago. That state is made here by hand (the log rebuilt from its first
entries, the dedupe key put back), so the append path's part of the repair is checked without a
cluster: the next append finds its predecessor missing and the writer first appends the lost
entries again, with their ids. (``tests/cluster/test_lost_log_tail.py`` loses a tail for real
and checks the other part: a stream with nothing more to append, repaired after the failover.)
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from streaming.log import EventLog, log_key, topic
from tests.support.waiting import wait_until


def _texts(redis: Any, key: str) -> list[tuple[str, str]]:
    """Each entry's id and token text (``redis`` decodes responses)."""
    return [(entry_id, json.loads(fields["d"])["text"]) for entry_id, fields in redis.xrange(key)]


def _lose_tail(redis: Any, channel: str, keep: int, dedupe_then: Any) -> None:
    """Put ``channel``'s log back as a replica would have it: its first ``keep`` entries (their
    ids, a stream that never generated the later ones) and the dedupe key of that moment."""
    key = log_key(channel)
    rows = redis.xrange(key)[:keep]
    redis.delete(key)
    for entry_id, fields in rows:
        redis.xadd(key, fields, id=entry_id)
    redis.set("sg:logdd:{" + channel + "}", dedupe_then)


@pytest.mark.parametrize("repair_s", [60.0, 0.0], ids=["repaired", "not-repaired"])
def test_the_next_append_after_a_lost_tail_first_appends_the_lost_entries_again(
    redis: Any, repair_s: float
) -> None:
    repairs: list[int] = []  # what streamgate_log_repairs_total counts in an app
    log = EventLog(redis, 1000, retry_s=2.0, repair_s=repair_s, on_repair=repairs.append)
    channel = "streams/str_lost_tail"
    key = log_key(channel)
    announced = redis.pubsub()
    announced.subscribe(topic(channel))
    heard: list[str] = []

    def heard_until(entry: str) -> bool:
        message = announced.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            heard.append(message["data"].split("\n", 1)[0])
        return bool(heard) and heard[-1] == entry

    try:
        wait_until(lambda: (announced.get_message(timeout=0.2) or {}).get("type") == "subscribe")
        first = [log.append(channel, "token", json.dumps({"text": t}), 60) for t in "abc"]
        dedupe_then = redis.get("sg:logdd:{" + channel + "}")
        lost = [log.append(channel, "token", json.dumps({"text": t}), 60) for t in "de"]
        _lose_tail(redis, channel, 3, dedupe_then)
        last = log.append(channel, "token", json.dumps({"text": "f"}), 60)
        wait_until(lambda: heard_until(last), interval=0)
    finally:
        announced.close()
        log.close()
    texts = _texts(redis, key)
    if repair_s == 0.0:  # Redis's ids, nothing kept: the log goes on without what it lost
        assert [text for _, text in texts] == ["a", "b", "c", "f"]
        assert repairs == []
        return
    assert texts == list(zip([*first, *lost, last], "abcdef", strict=True))
    assert repairs == [2]
    # Announced again with their ids: a live subscriber skips them, one that came since gets them.
    assert heard == [*first, *lost, *lost, last]


def test_the_writer_keeps_only_the_last_window_of_a_long_stream(redis: Any) -> None:
    # A failover loses only what the master had not yet sent (the last milliseconds): what the
    # writer keeps is the append rate times the window, however long a stream runs.
    log = EventLog(redis, 1000, retry_s=2.0, repair_s=0.5)
    channel = "streams/str_long"
    try:
        for text in "abc":
            log.append(channel, "token", json.dumps({"text": text}), 60)
        time.sleep(0.6)  # older than the window from here on, however slow the machine
        last = log.append(channel, "token", json.dumps({"text": "d"}), 60)
        writer: Any = log._writer  # noqa: SLF001 - what it holds is the point
        kept = [args[9] for _, args in writer.kept[channel].entries]
    finally:
        log.close()
    assert kept == [last]
