"""Processes the tests start (and end by their PID), and what ``/proc`` says about them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis as redis_lib

from bench import procstat
from bench.stack import free_port, redis_argv, wait_for_redis

__all__ = [
    "RedisServer",
    "connections_to",
    "cpu_hog",
    "free_port",
    "start_redis",
    "stop_process",
    "stop_redis",
    "worker_pids",
]


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
    sig: int = signal.SIGTERM,
    timeout: float = 10,
) -> None:
    """End a process this test session started, by its PID."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


@contextmanager
def cpu_hog(seconds: float, core: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """A process spinning on one core (``core``) for at most ``seconds``, ended by its PID.

    Another job on a shared machine, made reproducible: whatever else runs gets the other core
    and a share of this one.
    """
    proc = subprocess.Popen([sys.executable, "-c", _HOG, str(core), str(seconds)])
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGKILL)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis(port=self.port, decode_responses=True)


def start_redis(
    extra: list[str] | None = None, port: int | None = None, workdir: str | None = None
) -> RedisServer:
    """Debian's redis-server on loopback; a free port is picked again if another took it."""
    workdir = workdir or tempfile.mkdtemp(prefix="sg-redis-")
    for attempt in range(5):
        chosen = port or free_port()
        proc = subprocess.Popen(
            redis_argv(chosen, workdir, "--maxclients", "20000", *(extra or [])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_redis(chosen)
        except RuntimeError:
            lost_race = proc.poll() is not None and port is None  # the port was taken meanwhile
            stop_process(proc)
            if lost_race and attempt < 4:
                continue
            raise
        return RedisServer(chosen, proc, workdir)
    raise AssertionError("unreachable")


def stop_redis(server: RedisServer) -> None:
    stop_process(server.proc)
    shutil.rmtree(server.workdir, ignore_errors=True)


def worker_pids(master: int) -> list[int]:
    """The direct children of ``master`` (a gunicorn master's workers), from ``/proc``."""
    return sorted(procstat.children(master))


def _established_to(port: int, end: int = 2) -> set[int]:
    """Inodes of established TCP connections (IPv4 and IPv6) whose remote end (``end=2``; the
    local end with ``end=1``) is ``port``."""
    suffix = f":{port:04X}"
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except FileNotFoundError:
            continue
        inodes |= {int(cols[9]) for cols in rows if cols[end].endswith(suffix) and cols[3] == "01"}
    return inodes


def connections_to(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections each of ``pids`` holds to ``port``."""
    return procstat.connections_per_process(pids, port)


def process_talking_to(pids: list[int], port: int) -> int | None:
    """The first of ``pids`` holding an established connection to ``port``, if any."""
    remote = _established_to(port)
    for pid in pids:
        if procstat.socket_inodes(pid) & remote:
            return pid
    return None


def connections_on(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections each of ``pids`` holds on its local ``port`` (the
    clients a server listening there is serving right now)."""
    local = _established_to(port, end=1)
    return {pid: len(procstat.socket_inodes(pid) & local) for pid in pids}
