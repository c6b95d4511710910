"""Is this worker at capacity? The door's question, answered without touching Redis.

The signal is the event loop's lag: how late a timer that should fire every ``interval`` actually
fires, smoothed. Every greenlet of a gevent worker (runs, subscribers, requests) shares that one
loop, so its lag is the delay every admitted stream already suffers: it rises when the worker's
CPU is saturated (its own work, or another process taking the core), when garbage collection
stalls it, or when greenlets queue for a pool. A fixed count of running generations would be a
proxy that is wrong both ways (a slow model's streams cost little; a fast one's cost much).

Lag alone reacts too late to a burst: 800 requests arrive within a second, long before the
streams they start make the loop late. So the lag also teaches the door how many generations
this worker carries well (additive increase, multiplicative decrease, as TCP does with its
window): while the loop is late the learned capacity drops to 90% of what is running (at most
twice a second); while it is on time (under half the limit) the capacity grows by one a sample.
A burst is then refused past what the worker was last seen to sustain.

New generations are refused (``503 overloaded``, ``Retry-After``) while the smoothed lag is
past ``OVERLOAD_LAG_MS`` or the running count is at the learned capacity (or at the optional
hard cap ``OVERLOAD_MAX_RUNS``); new hub connections only on the lag. What is already admitted
keeps going, only slower.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from streaming.runner import registry

_MONITOR = "streamgate.load"


@dataclass
class Refusal:
    reason: str  # "event_loop_lag" | "capacity" | "max_runs": the metric's label


class LoadMonitor:
    """Samples this process's event-loop lag in the background; ``refusal()`` is the verdict."""

    MIN_CAPACITY = 8  # never learn to refuse everything
    DECREASE_EVERY_S = 0.5

    def __init__(
        self,
        lag_limit_s: float,
        max_runs: int,
        running: Callable[[], int] = lambda: 0,
        interval_s: float = 0.05,
        smoothing: float = 0.2,
        report: Callable[[float, float], None] = lambda lag, capacity: None,
    ) -> None:
        self.report = report
        self.lag_limit_s = lag_limit_s
        self.max_runs = max_runs
        self.running = running
        self.interval_s = interval_s
        self.smoothing = smoothing
        self.lag_s = 0.0
        self.capacity = math.inf  # learned: generations this worker carries on time
        self._decreased_at = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="streamgate-load")
        self.thread.start()

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            if self.stopping.wait(self.interval_s):
                return
            now = time.monotonic()
            late = max(0.0, now - before - self.interval_s)
            self.lag_s += self.smoothing * (late - self.lag_s)
            self._learn(now)
            self.report(self.lag_s, self.capacity)

    def _learn(self, now: float) -> None:
        if self.lag_limit_s <= 0:
            return
        if self.lag_s > self.lag_limit_s:
            if now - self._decreased_at >= self.DECREASE_EVERY_S:
                self._decreased_at = now
                carried = min(self.capacity, float(self.running()))
                self.capacity = max(float(self.MIN_CAPACITY), carried * 0.9)
        elif self.lag_s < self.lag_limit_s / 2 and self.capacity != math.inf:
            self.capacity += 1.0

    def refusal(self, running: int | None = None) -> Refusal | None:
        """Why a new piece of work should be refused now, or None to admit it.

        ``running``: the worker's generations (for a new generation); None for a hub connection,
        which only the lag refuses.
        """
        if self.lag_limit_s > 0 and self.lag_s > self.lag_limit_s:
            return Refusal("event_loop_lag")
        if running is not None and running >= self.capacity:
            return Refusal("capacity")
        if running is not None and self.max_runs > 0 and running >= self.max_runs:
            return Refusal("max_runs")
        return None

    def stop(self) -> None:
        self.stopping.set()


def load_monitor(app: Flask) -> LoadMonitor:
    """This process's monitor (started on first use, so after gunicorn forks the worker)."""
    current: LoadMonitor | None = app.extensions.get(_MONITOR)
    if current is None or not current.thread.is_alive():
        cfg = app.config
        runs = registry(app)
        current = LoadMonitor(
            cfg["OVERLOAD_LAG_MS"] / 1000.0,
            cfg["OVERLOAD_MAX_RUNS"],
            lambda: len(runs.runs),
            smoothing=cfg["OVERLOAD_LAG_SMOOTHING"],
            report=app.extensions["streamgate.metrics"].report_load,
        )
        app.extensions[_MONITOR] = current
    return current


def stop_load_monitor(app: Flask) -> None:
    current: LoadMonitor | None = app.extensions.pop(_MONITOR, None)
    if current is not None:
        current.stop()
