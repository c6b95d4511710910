"""The benchmark harness still runs end to end (tiny profile), so ``make bench`` cannot rot.

Asserts shape and that tokens flowed; never a timing threshold (timing belongs in ``bench/``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

TARGETS = ("floor", "direct", "channel")  # what the latency and cpu scenarios measure


def test_smoke_run_writes_results_with_tokens(tmp_path: Path) -> None:
    # Popen, not run(timeout=): on a timeout the harness gets SIGTERM and stops what it started.
    with subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-peer", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            stdout, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.terminate()
            stdout, _ = proc.communicate(timeout=45)
            pytest.fail("bench smoke run timed out:\n" + stdout[-4000:])
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [result_file] = tmp_path.glob("*-smoke.json")
    results = json.loads(result_file.read_text())

    assert {"schema", "meta", "scenarios", "targets"} <= results.keys()
    assert results["meta"]["gateway"]["workers"] == 2
    scenarios = results["scenarios"]
    expected = {f"{kind}.{target}" for kind in ("latency", "cpu") for target in TARGETS} | {
        "latency.peer",
        "channel.idle",
        "channel.fanout",
        "channel.revoke",
    }
    assert expected <= scenarios.keys()
    assert not [name for name, r in scenarios.items() if r["status"] == "error"]
    assert scenarios["latency.peer"]["status"] == "skipped"

    for name in (f"latency.{target}" for target in TARGETS):
        assert scenarios[name]["status"] == "ok", name
        for level in scenarios[name]["levels"].values():
            assert level["ok"] == level["streams"] > 0, (name, level["errors"])
            assert level["tokens"] > 0
            assert level["text_mismatches"] == 0
            assert {
                "ttft_ms",
                "gap_ms",
                "total_s",
                "tokens_per_s",
                "cpu",
                "rss_peak_mb",
                "client",
            } <= level.keys()
    for name in ("cpu.direct", "cpu.channel"):
        assert all(run["tokens"] > 0 for run in scenarios[name]["runs"].values())

    idle = scenarios["channel.idle"]
    assert all(level["open"] == level["requested"] for level in idle["levels"].values())
    # The most connections a worker can open is what the Redis target is judged against.
    assert all(
        max(level["redis"]["per_worker"]) <= idle["redis_cap_per_worker"]
        for level in idle["levels"].values()
    )
    fanout = scenarios["channel.fanout"]
    assert fanout["subscribers"] > 0 and fanout["completed"] == fanout["subscribers"]
    assert fanout["lag_ms"]["n"] > 0

    revoke = scenarios["channel.revoke"]
    if revoke["status"] == "ok":  # skipped only while the admin API is absent
        for mode in ("channel", "direct"):
            assert revoke[mode]["closed_ms"]["n"] > 0, json.dumps(revoke["missed"])

    assert [p.name for p in tmp_path.glob("*.png")], "plots were not written"
    assert "targets" in done.stdout
