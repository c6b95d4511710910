"""The gunicorn worker takes the connections waiting for it in batches, not one a loop turn.

gunicorn's gevent worker accepts one connection a turn of its event loop when it runs with
several workers; a busy worker's turn is every stream it serves, so a burst of new streams
queued in the kernel for seconds (docs/performance.md). These tests run gunicorn's own
``GeventWorker.run`` (through ``streaming.worker.GeventWorker``) in a gevent process of their
own and count the loop turns a backlog of connections takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streaming.worker import ACCEPT_BATCH, accept_batch
from tests.support.config import live_env
from tests.support.live import refused_start

ROOT = Path(__file__).resolve().parents[2]

_WORKER = """
from gevent import monkey
monkey.patch_all()

import os, socket, sys, time
import gevent
from gevent.monkey import get_original
from gunicorn.config import Config
from streaming.worker import GeventWorker

waiting = int(sys.argv[1])
cfg = Config()
cfg.set("workers", 2)  # gunicorn's worker sets max_accept = 1 when there are several
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(256)
clients = []
for _ in range(waiting):  # connected by the kernel, waiting in the accept queue
    client = get_original("socket", "socket")(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    clients.append(client)

loop = gevent.get_hub().loop
turns = []
worker = GeventWorker(1, os.getpid(), [listener], None, 30, cfg, None)
def handle(listener, conn, addr):
    turns.append(loop.iteration)
    conn.close()
worker.handle = handle
gevent.spawn(worker.run)
deadline = time.monotonic() + 60
while len(turns) < waiting and time.monotonic() < deadline:
    gevent.sleep(0.01)
print(len(turns), max(turns) - min(turns) + 1 if turns else 0, flush=True)
os._exit(0)
"""


def _accept(waiting: int, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(connections accepted, loop turns they took)."""
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(waiting)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    accepted, turns = out.stdout.split()
    return int(accepted), int(turns)


def test_a_backlog_of_connections_is_accepted_eight_a_turn_of_the_loop() -> None:
    accepted, turns = _accept(20)
    assert accepted == 20
    assert turns == 3  # 8 + 8 + 4; gunicorn's own gevent worker: 20 turns, one connection each


def test_the_batch_is_set_by_worker_accept_batch() -> None:
    env = {**os.environ, "WORKER_ACCEPT_BATCH": "5"}
    accepted, turns = _accept(20, env)
    assert accepted == 20
    assert turns == 4


@pytest.mark.parametrize("raw", ["0", "-3", "many", "2.5"])
def test_a_batch_that_is_not_a_positive_whole_number_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="WORKER_ACCEPT_BATCH"):
        accept_batch({"WORKER_ACCEPT_BATCH": raw})


def test_the_batch_defaults_to_8() -> None:
    assert accept_batch({}) == ACCEPT_BATCH == 8
    assert accept_batch({"WORKER_ACCEPT_BATCH": " 7 "}) == 7


@pytest.mark.live
def test_gunicorn_refuses_to_start_with_a_bad_batch_and_says_which(
    redis_server: Any, tmp_path: Path
) -> None:
    env = live_env(redis_server.url, f"sqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9/v1")
    log = refused_start({**env, "WORKER_ACCEPT_BATCH": "0"}, tmp_path)
    assert "WORKER_ACCEPT_BATCH must be a whole number of at least 1, not '0'" in log
