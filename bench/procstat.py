"""What the benchmark reads from ``/proc``: CPU seconds, RSS and socket ownership of processes.

Everything here reads files only; nothing signals or changes a process. Linux only.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        raw = handle.read()
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(p) for p in handle.read().split())
        except FileNotFoundError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        if not os.path.exists(f"/proc/{current}"):
            continue
        out.append(current)
        todo.extend(children(current))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (own threads, not reaped children), seconds."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the name: state(0) ppid(1) ... utime is field 14 of the full line -> index 11 here.
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``; idle and iowait excluded)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """Resident set size of one process, KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_KB
    except (FileNotFoundError, ProcessLookupError):
        return 0


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open."""
    found: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def tcp_connections_to(port: int) -> dict[int, int]:
    """Established TCP connections to loopback ``port``: {socket inode: local port}."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                    if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                        out[inode] = int(local.rsplit(":", 1)[1], 16)
        except FileNotFoundError:
            continue
    return out


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections each of ``pids`` holds to ``port``."""
    remote = tcp_connections_to(port)
    return {pid: len(socket_inodes(pid) & remote.keys()) for pid in pids}


@dataclass
class Sampler:
    """Samples the summed RSS of a set of processes every ``interval`` seconds on a thread."""

    pids: list[int]
    interval: float = 0.25
    peak_kb: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(rss_kb(pid) for pid in self.pids)
            self.samples.append((time.monotonic(), total))
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
