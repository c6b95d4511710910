"""The log writer's round trips, on one real Redis: one per batch of appends, and a Redis that
lost its scripts (restarted, or a replica just promoted) still gets every append, once."""

from __future__ import annotations

import json
from typing import Any

from streaming.log import EventLog, log_key


def _calls(redis: Any, command: str) -> int:
    return int(redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_each_batch_of_appends_is_one_round_trip_without_asking_for_the_script(
    redis: Any,
) -> None:
    log = EventLog(redis, 1000, retry_s=2.0)
    channel = "streams/str_round_trips"
    try:
        log.append(channel, "token", json.dumps({"text": "warm"}), 60)  # the script is loaded
        redis.config_resetstat()
        for i in range(20):  # each waits for its own batch
            log.append(channel, "token", json.dumps({"text": str(i)}), 60)
        assert _calls(redis, "evalsha") == 20
        # redis-py's pipeline would have sent SCRIPT EXISTS before each of the 20 batches.
        assert _calls(redis, "script|exists") == 0
    finally:
        log.close()


def test_a_redis_that_lost_its_scripts_still_gets_every_append_once(redis: Any) -> None:
    log = EventLog(redis, 1000, retry_s=5.0)
    channel = "streams/str_noscript"
    try:
        log.append(channel, "token", json.dumps({"text": "a"}), 60)
        redis.script_flush()  # what a restart or a promoted replica without the script is
        log.append(channel, "token", json.dumps({"text": "b"}), 60)
        log.append_later(channel, "token", json.dumps({"text": "c"}), 60)
        log.wait_written()
        texts = [json.loads(f["d"])["text"] for _, f in redis.xrange(log_key(channel))]
        assert texts == ["a", "b", "c"]
    finally:
        log.close()
