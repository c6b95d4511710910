"""A server worker collects its young generation rarely: a token's objects are mostly garbage
by the next collection, and every collection stops the whole event loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: settle_worker_heap freezes the heap and sets the thresholds of the
# process it runs in, as it does once in each gunicorn worker.
_WORKER = """
import gc
from streaming.metrics import Metrics, settle_worker_heap
settle_worker_heap(Metrics())
young = []
gc.callbacks.append(lambda phase, info: phase == "start" and young.append(info["generation"]))
kept = [[] for _ in range(5_000)]  # as many live containers as a few hundred tokens make
print(len(young))
"""


def test_a_worker_allocating_five_thousand_objects_runs_no_collection() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WORKER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # CPython's default (700) would have collected 7 times.
    assert int(out.stdout.split()[-1]) == 0
