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
    left = 60.0 - time.time() % 60.0
    if left < need_s:
        time.sleep(left + 0.05)
