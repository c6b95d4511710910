"""The test harness's guards against time windows: a test never straddles a minute or a UTC day
that its assertions count in."""

from __future__ import annotations

import pytest

from tests.support import waiting


@pytest.mark.parametrize(
    ("now", "need", "slept"),
    [
        (86400 * 20_000 - 30.0, 120, 30.05),  # 30 s before midnight: wait past it
        (86400 * 20_000 + 5.0, 120, None),  # just after: go on
        (86400 * 20_000 - 300.0, 120, None),  # five minutes before: go on
    ],
)
def test_fresh_day_waits_only_when_too_little_of_the_day_is_left(
    monkeypatch: pytest.MonkeyPatch, now: float, need: float, slept: float | None
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(waiting.time, "time", lambda: now)
    monkeypatch.setattr(waiting.time, "sleep", sleeps.append)
    waiting.fresh_day(need)
    assert sleeps == ([] if slept is None else [pytest.approx(slept)])


def test_fresh_minute_waits_for_the_next_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(waiting.time, "time", lambda: 60 * 1_000_000 - 0.5)
    monkeypatch.setattr(waiting.time, "sleep", sleeps.append)
    waiting.fresh_minute(2)
    assert sleeps == [pytest.approx(0.55)]
