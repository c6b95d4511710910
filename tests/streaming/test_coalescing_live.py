"""Coalescing under gunicorn's gevent worker: the timer that flushes a merged tail runs in the
event loop's own callback (``greenlets.in_loop_later``), so it is tested where that loop runs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream, expected_text
from tests.support.hub import Event, read_hub, start_stream, text_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {"SSE_COALESCE_MS": "300"}


def test_tokens_merged_before_a_stall_reach_subscribers_while_the_model_server_stalls(
    live: Any, live_user: Any, fake_upstream: FakeUpstream
) -> None:
    _, headers = live_user()
    with live.client() as client:
        # Three tokens within a millisecond or two, then the model server stalls for two minutes:
        # the first goes out at once, the next two wait in the merge window until its timer.
        started = start_stream(
            client, headers, tokens=6, delay_ms=1, stall_after=3, stall_ms=120_000, stamp=True
        )
        seen: list[Event] = []

        def three_tokens(event: Event) -> bool:
            seen.append(event)
            return text_of(seen) == expected_text(3)

        reading = read_hub(client, started["channel"], headers, stop_when=three_tokens)
        assert reading.status == 200 and text_of(seen) == expected_text(3)
        # The model server has written the three tokens and no more: nothing but the timer can
        # have sent the two that were waiting.
        assert len(fake_upstream.stats.stamps) == 3
        assert [e.data["count"] for e in seen if e.event == "token"] == [1, 2]

        assert client.delete(f"/v1/streams/{started['id']}", headers=headers).status_code in (
            200,
            202,
            204,
        )
        wait_until(lambda: fake_upstream.snapshot()["active"] == 0, timeout=30)
