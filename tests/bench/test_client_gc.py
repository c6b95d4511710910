"""The load client holds its garbage collector while it follows a fan-out (``bench.client``).

A reader stamps a read with the kernel's time of its newest bytes, so a pause of the client made
every event of that pause look late: a full collection of the client's 200,000 receive records
(156-224 ms) was the fan-out's whole lag p99.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bench.client import collection_held


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection that runs while the test does."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)


def _allocate(n: int = 50_000) -> list[list[int]]:
    return [[i] for i in range(n)]  # containers: each counts toward a young collection


def test_nothing_is_collected_inside_and_collection_resumes_after(collections: list[int]) -> None:
    assert gc.isenabled()
    _allocate()
    assert collections, "the allocations alone collect (so the test below can tell)"
    gc.collect()  # from an empty young generation: entering the block cannot trip it
    collections.clear()
    with collection_held():
        kept = _allocate()
        assert collections == []  # checked inside: the first allocation after it collects
    assert gc.isenabled()
    _allocate()
    assert collections, "collection resumes after the block"
    assert len(kept) == 50_000


def test_an_error_inside_still_turns_collection_back_on() -> None:
    with pytest.raises(RuntimeError), collection_held():
        raise RuntimeError("the follow failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collection_held():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
