"""The gunicorn worker: gunicorn's gevent worker, taking waiting connections in batches.

gevent's ``StreamServer`` accepts up to ``max_accept`` connections (100) each time its listening
socket is readable, that is once a turn of the event loop. gunicorn sets it to 1 when it runs
several workers, so that one worker does not take a whole burst while the others sit idle. A
busy worker then takes one new connection a turn, and a turn is every run and subscriber of
the worker served once (a timer fired 50-100 ms late with 100 channel streams a worker at
20 ms a token, two workers on two cores). A burst of streams starting together (every
``POST /v1/streams`` and every hub connection is a new connection) waits in the kernel's
accept queue: at 200 streams
started within a second the ``POST`` was answered after 0.95-1.04 s (p50) of which the
handler took 52 ms, and the first token reached the client after 3.2-3.8 s. Taking up to 8 a
turn: 0.41 s and 1.2 s (4: 0.66 and 1.8; 32: 0.34-0.45 and 1.1-1.2; 100: 0.36 and 0.86; one run
each, two for 32; the bench's total p50 at 200 streams was the same with 8 and 32). The batch is
``WORKER_ACCEPT_BATCH`` (default 8): small enough that one worker's turn takes no large share
of a burst (an idle worker's loop turns at once and takes its share first), and a turn spent
starting new requests holds the tokens of the running streams back for less.
"""

from __future__ import annotations

import os
from typing import Any

import gunicorn.workers.ggevent as ggevent
from gevent.server import StreamServer

ACCEPT_BATCH = 8  # WORKER_ACCEPT_BATCH's default


def accept_batch(environ: Any = os.environ) -> int:
    """``WORKER_ACCEPT_BATCH``: connections a worker accepts a turn of its loop (at least 1)."""
    raw = environ.get("WORKER_ACCEPT_BATCH", "").strip()
    if not raw:
        return ACCEPT_BATCH
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"WORKER_ACCEPT_BATCH must be a whole number of at least 1, not {raw!r}")
    return value


class BatchAcceptServer(StreamServer):  # type: ignore[misc]
    """gevent's ``StreamServer`` accepting at least ``batch`` connections a loop turn.

    ``max_accept`` as gunicorn sets it (1 with several workers) is raised to ``batch``.
    """

    batch = ACCEPT_BATCH

    @property
    def max_accept(self) -> int:
        asked: int = self.__dict__.get("_max_accept", 1)
        return max(asked, self.batch)

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        self.__dict__["_max_accept"] = value


class GeventWorker(ggevent.GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, its servers built as ``BatchAcceptServer``s."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the master, before any worker starts: a bad ``WORKER_ACCEPT_BATCH`` stops it
        (gunicorn prints a ``RuntimeError`` as ``Error: <message>`` and exits 1)."""
        super_check = getattr(super(), "check_config", None)
        if super_check is not None:
            super_check(cfg, log)
        try:
            accept_batch()
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    def run(self) -> None:
        BatchAcceptServer.batch = accept_batch()
        # gunicorn builds each server from its module's ``StreamServer`` (this process only).
        ggevent.StreamServer = BatchAcceptServer
        super().run()
