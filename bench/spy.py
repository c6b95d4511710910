"""``--spy``: py-spy on every gateway worker for the whole of each selected scenario.

The ``profile.*`` scenarios profile one fixed load; ``--spy`` profiles whatever a scenario does
(the fan-out, idle subscribers, saturation), so a change is made where the profile of that very
load points. py-spy only reads the workers' memory (``--nonblocking``: it never pauses them); it
is stopped with SIGINT, which makes it write what it sampled. Its output and a summary (shares by
library, top self and inclusive frames, per thread) go into the scenario's result as ``py_spy``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Any


class Spy:
    """py-spy ``record`` on ``pids`` until ``stop``; a no-op without py-spy."""

    def __init__(self, py_spy: str | None, pids: list[int], out_dir: Path, tag: str) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        if not py_spy:
            return
        for pid in pids:
            path = out_dir / f"spy-{tag}-{pid}.txt"
            argv = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
            argv += ["--nonblocking", "--threads", "--output", str(path)]
            popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append((popen, path))

    def stop(self) -> dict[str, Any]:
        """Stop every recorder (SIGINT: py-spy writes its samples) and summarize them."""
        from bench.scenarios import summarize_collapsed

        lines: list[str] = []
        errors: list[str] = []
        for popen, path in self.procs:
            if popen.poll() is None:
                popen.send_signal(signal.SIGINT)
            try:
                _, err = popen.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                _, err = popen.communicate(timeout=5)
            with contextlib.suppress(FileNotFoundError):
                lines.extend(path.read_text().splitlines())
            if not path.exists():
                errors.append(err.decode(errors="replace")[-300:])
        if not lines:
            return {"status": "skipped", "reason": "no samples: " + " | ".join(errors)}
        summary = summarize_collapsed(lines)
        summary["threads_pct"] = _threads(lines)
        return {"status": "ok", **summary}


def _threads(lines: list[str]) -> dict[str, float]:
    """Share of samples per thread (py-spy's ``--threads`` puts the thread first in a stack)."""
    counts: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count_s = line.rstrip().rpartition(" ")
        if not count_s.isdigit():
            continue
        head = stack.split(";", 1)[0]
        counts[head] = counts.get(head, 0) + int(count_s)
        total += int(count_s)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
    return {name: round(100 * n / total, 1) for name, n in top} if total else {}
