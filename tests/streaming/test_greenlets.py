"""``streaming.greenlets.spawn`` under gevent (a gevent-patched process, as a gunicorn worker):
the caller goes on at once, the new greenlet starts on the loop's next turn.

A request that starts a generation (``POST /v1/streams``, ``POST /v1/chat/completions``) answers
only once ``spawn`` returns: a monkey-patched ``threading.Thread.start()`` yielded to the event
loop and waited for the new greenlet to run until it first waited.
"""

from __future__ import annotations

from tests.support.gevent_probe import run_patched

PROBE = """
import gevent

from streaming.greenlets import spawn

order = []
gevent.spawn(order.append, "greenlet made ready before")
spawn(order.append, "spawned", name="probe")
order.append("caller went on")
gevent.sleep(0.05)
print(json.dumps({"order": order}))
"""


def test_spawn_returns_before_the_event_loop_turns() -> None:
    found = run_patched(PROBE)
    assert found["order"] == ["caller went on", "greenlet made ready before", "spawned"]
