"""Is anything waiting on a socket? Asked of the operating system, never of gevent's loop.

Under gevent's monkey-patching ``select.poll`` is gevent's cooperative poll: even with a zero
timeout it yields to the event loop and returns one whole loop iteration later. Libraries ask
it on their hot paths (redis-py of each connection it hands out, httpcore of each idle
connection whenever a request starts or a response closes), so each such check made a busy
worker's request wait a turn of its loop. A zero-timeout poll never blocks: the operating
system's own answers at once.
"""

from __future__ import annotations

import select
from typing import Any

try:  # the operating system's poll, even where gevent has patched the select module
    from gevent.monkey import get_original

    _os_poll: Any = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a dependency; plain threads need nothing
    _os_poll = select.poll


def readable_now(sock: Any) -> bool:
    """True if a read on ``sock`` would not wait: data, a hang-up or an error (always
    reported by poll) is there now; or the socket is gone (as a read would then fail at once)."""
    return _readable(_os_poll, sock, 0)


def readable_within(sock: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to be readable, as ``readable_now`` says it.

    With ``select.poll`` as the process has it: gevent's, a cooperative wait, where it patched
    the module; the operating system's in a plain thread.
    """
    return _readable(select.poll, sock, timeout * 1000)


def _readable(make_poll: Any, sock: Any, timeout_ms: float) -> bool:
    fileno = -1 if sock is None else sock.fileno()
    if fileno < 0:
        return True
    poller = make_poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(timeout_ms))
