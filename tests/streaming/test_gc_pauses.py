"""The workers' garbage collector on /metrics: each collection's pause, by generation."""

from __future__ import annotations

import gc

from streaming.metrics import GcPauses, Metrics


def _count(metrics: Metrics, generation: str) -> float:
    assert metrics.registry is not None
    value = metrics.registry.get_sample_value(
        "streamgate_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_collections_are_timed_by_generation_and_observed_only_when_drained() -> None:
    metrics = Metrics()
    pauses = GcPauses(metrics.gc_pause)
    pauses.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.uninstall()
    # The callback itself never touches the histogram (it may run inside its lock)...
    assert _count(metrics, "0") == 0 and _count(metrics, "2") == 0
    assert len(pauses.done) >= 2
    pauses.drain()
    # ...the drain does, once per collection, under the generation that ran.
    assert _count(metrics, "0") >= 1 and _count(metrics, "2") >= 1
    assert not pauses.done
    gc.collect(2)  # uninstalled: no longer timed
    assert not pauses.done


def test_the_load_monitors_report_drains_the_pauses() -> None:
    metrics = Metrics()
    metrics.gc_pauses = pauses = GcPauses(metrics.gc_pause)
    pauses.callback("start", {"generation": 1})
    pauses.callback("stop", {"generation": 1})
    metrics.report_load(0.0, 10.0)
    assert _count(metrics, "1") == 1


def test_pauses_nobody_drains_are_bounded() -> None:
    pauses = GcPauses(Metrics().gc_pause)
    for _ in range(pauses.done.maxlen + 50):  # type: ignore[operator]
        pauses.callback("start", {"generation": 0})
        pauses.callback("stop", {"generation": 0})
    assert len(pauses.done) == pauses.done.maxlen
