"""``BatchedObserver``: what /metrics shows equals one ``observe`` per value, at every flush."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streaming.metrics import BatchedObserver

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, batched = CollectorRegistry(), CollectorRegistry()
    a = Histogram("gap_seconds", "gaps", ["mode"], buckets=BUCKETS, registry=one)
    b = Histogram("gap_seconds", "gaps", ["mode"], buckets=BUCKETS, registry=batched)
    return one, a, batched, b


def _exposed(registry: CollectorRegistry) -> list[str]:
    # Everything but the creation time, which differs between the two histograms, and the sum,
    # which is compared on its own (added in another order, its last bits may differ).
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if "_created" not in line and "_sum" not in line
    ]


def _sum(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("gap_seconds_sum", {"mode": "channel"})
    assert value is not None
    return value


def test_batches_expose_what_one_observe_each_would() -> None:
    one, a, batched, b = _pair()
    rng = random.Random(17)
    # Every bound exactly (Histogram puts a value equal to a bound in that bucket), around
    # them, beyond the last finite bound, zero and a negative gap (a clock step).
    values = [*BUCKETS, *(x * 1.0000001 for x in BUCKETS), 0.0, -0.001, 45.0, 1e9]
    values += [rng.expovariate(40.0) for _ in range(500)]
    observer = BatchedObserver(b.labels("channel"), every=64, max_age_s=3600)
    child = a.labels("channel")
    for i, value in enumerate(values):
        child.observe(value)
        observer.observe(value, now=float(i))
        if (i + 1) % 64 == 0:  # a batch just went in: equal now, not only at the end
            assert _exposed(batched) == _exposed(one)
            assert _sum(batched) == pytest.approx(_sum(one), rel=1e-12, abs=1e-12)
    observer.flush()
    assert _exposed(batched) == _exposed(one)
    assert _sum(batched) == pytest.approx(_sum(one), rel=1e-12)
    assert f'gap_seconds_count{{mode="channel"}} {float(len(values))}' in _exposed(batched)


def test_a_slow_stream_reaches_the_histogram_within_max_age() -> None:
    _, _, batched, b = _pair()
    observer = BatchedObserver(b.labels("channel"), every=64, max_age_s=1.0)
    observer.observe(0.02, now=observer.since + 0.5)
    assert 'gap_seconds_count{mode="channel"} 0.0' in _exposed(batched)
    observer.observe(0.02, now=observer.since + 1.5)  # older than max_age_s: added now
    assert 'gap_seconds_count{mode="channel"} 2.0' in _exposed(batched)


def test_a_child_without_bucket_values_is_observed_one_value_at_a_time() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    observer = BatchedObserver(plain)
    observer.observe(0.5, now=0.0)
    observer.flush()
    assert plain.seen == [0.5]
