"""Starting a worker's background services: the dispatcher (control bus + hub fan-out), the
keeper (leases, flags, maximum duration, the reaper) and the owner of idle hub connections.

The top of ``streaming``: it wires the keeper's op table into the dispatcher and the channel
sink into the reaper, so neither module imports the other's neighbours. Called from gunicorn's
``post_worker_init`` and from test fixtures, never from a request.
"""

from __future__ import annotations

import threading

from flask import Flask

from streaming import control, keeper, takeover, webhooks
from streaming.channel import TerminalSink
from streaming.control import Dispatcher, Services
from streaming.runner import registry

_start_lock = threading.Lock()


def start_services(app: Flask) -> Services:
    """Start this process's services for ``app`` (once per process; idempotent)."""
    with _start_lock:
        current = control.services_of(app)
        if current is not None:
            return current
        dispatcher = Dispatcher(app)
        dispatcher.ops.update(keeper.control_ops(registry(app), dispatcher))
        current = Services(app, dispatcher)
        control.install(app, current)
        stopping = current.stopping
        current.start(lambda: keeper.keep(app, dispatcher, stopping, TerminalSink))
        webhooks.start_sweeper(app, stopping)  # deliveries whose worker stopped
        takeover.start_owner(app, stopping)  # idle hub connections (under gevent)
        return current
