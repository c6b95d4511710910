"""Under gunicorn each worker freezes the heap it built at boot (full collections no longer walk
the ~220,000 objects of its imports and app, which stopped the event loop for 50-220 ms) and
reports every collection's pause on /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream, expected_text
from tests.support.hub import read_hub, start_stream, text_of
from tests.support.live import metric_sum
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live


def test_every_worker_froze_its_boot_heap_and_its_collections_are_on_metrics(
    live: Any, live_user: Any, fake_upstream: FakeUpstream
) -> None:
    # The smallest count among the live workers: one that has not frozen its heap shows 0. The
    # server answers once one worker does; the other may still be booting, so wait for it.
    assert len(live.workers()) == 2
    wait_until(lambda: metric_sum(live.url, "streamgate_gc_frozen_objects") > 50_000, timeout=30)

    _, headers = live_user()
    with live.client() as client:
        # Streams allocate: the collector runs (a worker's young generation every 10,000
        # allocations), the load monitor reports it.
        for _ in range(10):
            started = start_stream(client, headers, tokens=20, delay_ms=1)
            reading = read_hub(client, started["channel"], headers)
            assert text_of(reading.events) == expected_text(20)
    wait_until(lambda: metric_sum(live.url, "streamgate_gc_pause_seconds_count") > 0, timeout=30)
    assert metric_sum(live.url, "streamgate_gc_pause_seconds_sum") > 0
