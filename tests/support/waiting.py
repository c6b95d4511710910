"""Waiting for a state, never for a time: tests poll what they need, with a generous bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (or fail the test)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def fresh_minute(need_s: float) -> None:
    """Let at least ``need_s`` of the current UTC minute remain before going on.

    Tokens per minute are counted in fixed UTC-minute windows: requests that must share one
    window (a burst against ``tpm``, a refusal after a reservation) must not straddle the minute's
    end, or the second half is counted in a window of its own.
    """
    _fresh_window(60.0, need_s)


def fresh_day(need_s: float) -> None:
    """Let at least ``need_s`` of the current UTC day remain before going on: tokens per day,
    ``today``'s usage and the usage by day are counted by UTC day."""
    _fresh_window(86400.0, need_s)


def _fresh_window(period_s: float, need_s: float) -> None:
    left = period_s - time.time() % period_s
    if left < need_s:
        time.sleep(left + 0.05)
