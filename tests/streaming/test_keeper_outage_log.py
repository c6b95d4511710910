"""While Redis or the database is down the keeper fails every tick: the log says so once with a
traceback, then a line a minute, and says when it works again (not a traceback per tick)."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streaming import keeper


def test_an_outage_is_logged_once_then_reminded_then_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    outage = keeper.Outage("keeper tick", remind_s=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="streamgate.keeper")

    error = RedisConnectionError("Connection refused")
    for _ in range(240):  # two minutes of failed ticks, every half second
        outage.failed(error)
        now[0] += 0.5
    outage.succeeded()
    outage.succeeded()  # the next good tick says nothing

    messages = [r.getMessage() for r in caplog.records]
    assert [bool(r.exc_info) for r in caplog.records] == [True, False, False]
    assert messages == [
        "keeper tick failed",
        "keeper tick still failing: 121 times in 60 s, last: ConnectionError: Connection refused",
        "keeper tick works again after 240 failures in 120 s",
    ]
