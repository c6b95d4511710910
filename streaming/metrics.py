"""Prometheus metrics, one registry per app (so test apps never collide).

Under gunicorn with several workers set ``PROMETHEUS_MULTIPROC_DIR`` and the exposition in
``api.routes.health`` aggregates every worker's files.
"""

from __future__ import annotations

import gc
import os
import time
from bisect import bisect_left
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def _mode(mode: str, multiproc: bool) -> dict[str, Any]:
    """How a gauge's per-worker values combine on /metrics (multiprocess mode only)."""
    return {"multiprocess_mode": mode} if multiproc else {}


class Metrics:
    """Every metric Streamgate exports; see docs/operations.md for what each means."""

    def __init__(self) -> None:
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = None if multiproc else CollectorRegistry()
        reg: dict[str, Any] = {"registry": self.registry} if self.registry is not None else {}
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "livesum"} if multiproc else {}

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            """``streamgate_<name>_total``."""
            return Counter(f"streamgate_{name}_total", documentation, labels, **reg)

        def latency(name: str, documentation: str, label: str) -> Histogram:
            """``streamgate_<name>_seconds``, in the latency buckets."""
            name = f"streamgate_{name}_seconds"
            return Histogram(name, documentation, [label], buckets=_LATENCY_BUCKETS, **reg)

        self.active_streams = Gauge(
            "streamgate_active_streams",
            "Generations running in this process",
            ["mode"],
            **reg,
            **gauge_mode,
        )
        self.active_subscribers = Gauge(
            "streamgate_active_subscribers",
            "Open hub (SSE) connections in this process",
            **reg,
            **gauge_mode,
        )
        self.hub_owned_subscribers = Gauge(
            "streamgate_hub_owned_subscribers",
            "Idle hub connections this process's hub holds itself (taken from gunicorn: no "
            "greenlet each); included in streamgate_active_subscribers",
            **reg,
            **gauge_mode,
        )
        self.streams_total = counter(
            "streams",
            "Generations finished, by mode and final status",
            "mode",
            "status",
        )
        self.tokens_out = counter("tokens_out", "Completion tokens delivered", "mode")
        self.ttft = latency("time_to_first_token", "Admission to first token", "mode")
        self.inter_token = latency("inter_token", "Gap between consecutive upstream chunks", "mode")
        self.upstream_errors = counter("upstream_errors", "Model-server failures by kind", "kind")
        self.rate_limited = counter("rate_limited", "Requests refused by a limit", "limit")
        self.revocations = counter("revocations", "Revocations by target kind", "target")
        self.backend_errors = counter("backend_errors", "Redis or database errors", "backend")
        self.overload_refusals = counter(
            "overload_refusals",
            "New work refused at the door with 503 overloaded, by signal",
            "reason",
        )
        self.loop_lag = Gauge(
            "streamgate_event_loop_lag_seconds",
            "Smoothed lateness of the worker's event loop (the load-shedding signal)",
            **reg,
            **_mode("livemax", multiproc),
        )
        self.learned_capacity = Gauge(
            "streamgate_learned_capacity_runs",
            "Generations a worker was last seen to carry on time (+Inf until it was late)",
            **reg,
            **_mode("livemin", multiproc),
        )
        self.log_repairs = counter(
            "log_repairs",
            "Stream-log entries appended again after a Redis failover had lost them",
        )
        self.record_write_failures = counter(
            "record_write_failures", "Stream records that could not be written"
        )

        self.upstream_requests = counter(
            "upstream_requests",
            "Attempts sent to each model server (a failover counts on both)",
            "upstream",
        )
        self.upstream_failures = counter(
            "upstream_failures",
            "Failures of each model server by kind (connect, timeout, status_5xx, rate_limited, "
            "status_401, status_403, status_408, dropped)",
            "upstream",
            "kind",
        )
        self.upstream_failovers = counter(
            "upstream_failovers",
            "Requests moved to the next model server after this one failed before its first chunk",
            "upstream",
        )
        self.upstream_in_flight = Gauge(
            "streamgate_upstream_in_flight",
            "Requests open to each model server from this process",
            ["upstream"],
            **reg,
            **gauge_mode,
        )
        self.upstream_ttft = latency(
            "upstream_time_to_first_token",
            "Run start (failovers included) to the first token, by the model server that sent it",
            "upstream",
        )
        self.gc_pause = Histogram(
            "streamgate_gc_pause_seconds",
            "Garbage collections of a worker (each stops its whole event loop), by generation",
            ["generation"],
            buckets=_GC_BUCKETS,
            **reg,
        )
        self.gc_frozen = Gauge(
            "streamgate_gc_frozen_objects",
            "Objects a worker froze at boot (never scanned by the collector again); the smallest "
            "of the live workers: 0 means one runs without its heap frozen",
            **reg,
            **_mode("livemin", multiproc),
        )
        self.gc_pauses: GcPauses | None = None  # set in a server worker (settle_worker_heap)

    def report_load(self, lag_s: float, capacity: float) -> None:
        """The load monitor's sample (streaming.load), for /metrics; with it, the collector's
        pauses since the last sample."""
        self.loop_lag.set(lag_s)
        self.learned_capacity.set(capacity)
        if self.gc_pauses is not None:
            self.gc_pauses.drain()


class GcPauses:
    """Times each garbage collection of this process (``gc.callbacks``) for a histogram.

    The collector runs wherever an allocation triggers it, possibly inside prometheus-client's
    own lock (not reentrant; a gevent lock under gunicorn): the callback only appends to a
    bounded deque, and ``drain`` (the load monitor's loop) observes what it holds.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.children = {g: histogram.labels(str(g)) for g in range(3)}
        self.done: deque[tuple[int, float]] = deque(maxlen=10_000)
        self.began = 0.0

    def install(self) -> None:
        if self.callback not in gc.callbacks:
            gc.callbacks.append(self.callback)

    def uninstall(self) -> None:
        if self.callback in gc.callbacks:
            gc.callbacks.remove(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began = time.perf_counter()
        else:
            self.done.append((info["generation"], time.perf_counter() - self.began))

    def drain(self) -> None:
        while True:
            try:
                generation, seconds = self.done.popleft()
            except IndexError:
                return
            self.children[generation].observe(seconds)


YOUNG_GC_THRESHOLD = 10_000  # allocations between young collections in a server worker


def settle_worker_heap(metrics: Metrics) -> int:
    """Freeze what a server worker built at boot, time its collections; the frozen count.

    Call once the worker has loaded the app (gunicorn's ``post_worker_init``), never in a
    process that goes on creating apps (tests). The imports and the app (LangChain, the OpenAI
    SDK, pydantic, SQLAlchemy: ~220,000 objects) live as long as the worker, yet every full
    collection walked them all again: 50-220 ms with the event loop stopped, about 10% of a
    busy worker's CPU (gc.callbacks timings, 1-token channel streams). ``gc.freeze`` moves them
    to the permanent generation (CPython's documented use): full collections then take
    under 12 ms.

    The young generation is then collected every ``YOUNG_GC_THRESHOLD`` allocations instead of
    CPython's 700. 400 channel streams of 200 tokens at 20 ms, 200 at a time, on two workers:
    452 collections of 1.8 ms (4.4% of the workers' CPU) before, 15 of 8.6 ms (0.8%) after;
    a token's objects are mostly gone by the next collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    frozen = gc.get_freeze_count()
    metrics.gc_frozen.set(frozen)
    if metrics.gc_pauses is None:
        metrics.gc_pauses = GcPauses(metrics.gc_pause)
        metrics.gc_pauses.install()
    return frozen


class BatchedObserver:
    """One histogram child's observations, counted here and added to it in batches.

    For a per-token series (``inter_token``): in multiprocess mode prometheus-client's
    ``observe`` takes a lock and writes the worker's mmapped file twice a call, ~10 us, which
    was 3.6% of channel mode's CPU at 200 concurrent streams (py-spy). Here an observation is a
    bisect and two additions; every ``every`` observations or ``max_age_s`` seconds, and at
    ``flush``, the counts go into the child's own bucket and sum values, so /metrics shows
    what one ``observe`` each would have shown, at most ``max_age_s`` late. A child without
    those values (another prometheus-client) is observed one value at a time.
    """

    __slots__ = ("child", "bounds", "counts", "total", "n", "every", "max_age_s", "since")

    def __init__(self, child: Any, every: int = 64, max_age_s: float = 1.0) -> None:
        self.child = child
        batched = all(hasattr(child, a) for a in ("_upper_bounds", "_buckets", "_sum"))
        self.bounds: list[float] | None = list(child._upper_bounds) if batched else None
        self.counts = [0] * len(self.bounds or ())
        self.total = 0.0
        self.n = 0
        self.every = every
        self.max_age_s = max_age_s
        self.since = time.monotonic()

    def observe(self, value: float, now: float) -> None:
        """Count ``value`` (``now``: the caller's ``time.monotonic()``)."""
        if self.bounds is None:
            self.child.observe(value)
            return
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1
        if self.n >= self.every or now - self.since >= self.max_age_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Add what was counted to the histogram."""
        self.since = time.monotonic() if now is None else now
        if not self.n:
            return
        self.child._sum.inc(self.total)
        for i, count in enumerate(self.counts):
            if count:
                self.child._buckets[i].inc(count)
                self.counts[i] = 0
        self.total = 0.0
        self.n = 0
