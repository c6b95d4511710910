"""Fake model servers as separate processes (``python -m bench.fake_upstream``), for routing tests.

Each is started on a free loopback port, steered and read over HTTP (``/_reset``, ``/_stats``),
and can be killed and restarted on the same port by its PID.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx

from tests.support.config import ROOT
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until


class FakeProcess:
    """One fake upstream in its own process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeProcess:
        argv = [sys.executable, "-m", "bench.fake_upstream", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*argv, "--tokens", "8", "--delay-ms", "0"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, timeout=20, interval=0.05)
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"fake upstream {self.name} exited ({self.proc.returncode})")
        try:
            return httpx.get(self.base_url.removesuffix("/v1") + "/_stats", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: its connections are cut and new ones refused (a host that died)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + "/_stats"
        return httpx.get(url, timeout=5).json()  # type: ignore[no-any-return]

    def reset(self, **knobs: Any) -> None:
        """New default knobs (e.g. ``status=503``) and zeroed counters."""
        url = self.base_url.removesuffix("/v1") + "/_reset"
        httpx.post(url, json=knobs, timeout=5).raise_for_status()


def upstreams_json(*entries: dict[str, Any]) -> str:
    """An ``LLM_UPSTREAMS`` value."""
    return json.dumps(list(entries))
