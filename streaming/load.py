"""Is this worker at capacity? The door's question, answered without touching Redis.

The signal is the event loop's lag: how late a timer that should fire every ``interval`` actually
fires, smoothed. Every greenlet of a gevent worker (runs, subscribers, requests) shares that one
loop, so its lag is the delay every admitted stream already suffers: it rises when the worker's
CPU is saturated (its own work, or another process taking the core), when garbage collection
stalls it, or when greenlets queue for a pool. A count of running generations would be a proxy
that is wrong both ways (a slow model's streams cost little; a fast one's cost much), so it is
offered only as an optional hard cap (``OVERLOAD_MAX_RUNS``).

When the smoothed lag passes ``OVERLOAD_LAG_MS``, new generations and new hub connections are
refused with ``503 overloaded`` and ``Retry-After``; what is already admitted keeps going, only
slower. The smoothing (``OVERLOAD_LAG_SMOOTHING``) keeps one slow tick from refusing anybody.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import Flask

_MONITOR = "streamgate.load"


@dataclass
class Refusal:
    reason: str  # "event_loop_lag" | "max_runs"
    detail: str


class LoadMonitor:
    """Samples this process's event-loop lag in the background; ``refusal()`` is the verdict."""

    def __init__(
        self,
        lag_limit_s: float,
        max_runs: int,
        interval_s: float = 0.05,
        smoothing: float = 0.2,
    ) -> None:
        self.lag_limit_s = lag_limit_s
        self.max_runs = max_runs
        self.interval_s = interval_s
        self.smoothing = smoothing
        self.lag_s = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="streamgate-load")
        self.thread.start()

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            if self.stopping.wait(self.interval_s):
                return
            late = max(0.0, time.monotonic() - before - self.interval_s)
            self.lag_s += self.smoothing * (late - self.lag_s)

    def refusal(self, running: int) -> Refusal | None:
        """Why a new piece of work should be refused now, or None to admit it."""
        if self.lag_limit_s > 0 and self.lag_s > self.lag_limit_s:
            return Refusal(
                "event_loop_lag",
                f"event loop {self.lag_s * 1000:.0f} ms late (limit {self.lag_limit_s * 1000:.0f})",
            )
        if self.max_runs > 0 and running >= self.max_runs:
            return Refusal("max_runs", f"{running} generations running (limit {self.max_runs})")
        return None

    def stop(self) -> None:
        self.stopping.set()


def load_monitor(app: Flask) -> LoadMonitor:
    """This process's monitor (started on first use, so after gunicorn forks the worker)."""
    current: LoadMonitor | None = app.extensions.get(_MONITOR)
    if current is None or not current.thread.is_alive():
        cfg = app.config
        current = LoadMonitor(
            cfg["OVERLOAD_LAG_MS"] / 1000.0,
            cfg["OVERLOAD_MAX_RUNS"],
            smoothing=cfg["OVERLOAD_LAG_SMOOTHING"],
        )
        app.extensions[_MONITOR] = current
    return current


def stop_load_monitor(app: Flask) -> None:
    current: LoadMonitor | None = app.extensions.pop(_MONITOR, None)
    if current is not None:
        current.stop()
