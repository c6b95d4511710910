"""The embedded model, SmolLM2-135M-Instruct served by llama-cpp-python, for e2e and browser tests.

The server is the one ``make run`` starts (``python -m scripts.llm_server``), here on a free
loopback port, once per test session (``tests/conftest.py`` registers the fixture).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.config import ROOT
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until

MODEL = "smollm2-135m-instruct"


@dataclass
class ModelServer:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """The embedded SmolLM2 server on a free loopback port (started once, stopped by PID)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[local]'; make test does)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("smollm2") / "llm_server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.llm_server", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ModelServer(f"http://127.0.0.1:{port}/v1", proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail("the SmolLM2 server exited:\n" + server.log())
        try:
            return httpx.get(server.base_url + "/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=120, interval=0.2)
        yield server
    finally:
        stop_process(proc)
