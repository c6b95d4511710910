"""Prometheus metrics, one registry per app (so test apps never collide).

Under gunicorn with several workers set ``PROMETHEUS_MULTIPROC_DIR`` and the exposition in
``api.routes.health`` aggregates every worker's files.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.streams_total = Counter(
            "streamgate_streams_total",
            "Generations finished, by mode and final status",
            ["mode", "status"],
            **reg,
        )
        self.tokens_out = Counter(
            "streamgate_tokens_out_total", "Completion tokens delivered", ["mode"], **reg
        )
        self.ttft = Histogram(
            "streamgate_time_to_first_token_seconds",
            "Admission to first token",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            **reg,
        )
        self.inter_token = Histogram(
            "streamgate_inter_token_seconds",
            "Gap between consecutive upstream chunks",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            **reg,
        )
        self.upstream_errors = Counter(
            "streamgate_upstream_errors_total", "Model-server failures by kind", ["kind"], **reg
        )
        self.rate_limited = Counter(
            "streamgate_rate_limited_total", "Requests refused by a limit", ["limit"], **reg
        )
        self.revocations = Counter(
            "streamgate_revocations_total", "Revocations by target kind", ["target"], **reg
        )
        self.backend_errors = Counter(
            "streamgate_backend_errors_total", "Redis or database errors", ["backend"], **reg
        )
        self.overload_refusals = Counter(
            "streamgate_overload_refusals_total",
            "New work refused at the door with 503 overloaded, by signal",
            ["reason"],
            **reg,
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
        self.record_write_failures = Counter(
            "streamgate_record_write_failures_total",
            "Stream records that could not be written",
            **reg,
        )

        self.upstream_requests = Counter(
            "streamgate_upstream_requests_total",
            "Attempts sent to each model server (a failover counts on both)",
            ["upstream"],
            **reg,
        )
        self.upstream_failures = Counter(
            "streamgate_upstream_failures_total",
            "Failures of each model server by kind (connect, timeout, status_5xx, rate_limited, "
            "status_401, status_403, status_408, dropped)",
            ["upstream", "kind"],
            **reg,
        )
        self.upstream_failovers = Counter(
            "streamgate_upstream_failovers_total",
            "Requests moved to the next model server after this one failed before its first chunk",
            ["upstream"],
            **reg,
        )
        self.upstream_in_flight = Gauge(
            "streamgate_upstream_in_flight",
            "Requests open to each model server from this process",
            ["upstream"],
            **reg,
            **gauge_mode,
        )
        self.upstream_ttft = Histogram(
            "streamgate_upstream_time_to_first_token_seconds",
            "Run start (failovers included) to the first token, by the model server that sent it",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            **reg,
        )

    def report_load(self, lag_s: float, capacity: float) -> None:
        """The load monitor's sample (streaming.load), for /metrics."""
        self.loop_lag.set(lag_s)
        self.learned_capacity.set(capacity)
