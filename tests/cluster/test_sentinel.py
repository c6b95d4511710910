"""Redis Sentinel: the app finds its master through a real local sentinel (``REDIS_SENTINELS``).

Debian's redis-server runs as the sentinel (``--sentinel``) watching a redis-server on another
port; ``REDIS_URL`` names a port where nothing listens, so every client that works went through
the sentinel: the request pools, the log writer and the hub reader's pub/sub.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from bench.fake_upstream import FakeUpstream
from bench.stack import redis_argv, wait_for_redis
from tests.support.config import app_config
from tests.support.live import close_app
from tests.support.processes import RedisServer, free_port, start_redis, stop_process, stop_redis

pytestmark = pytest.mark.cluster


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    """A master and a sentinel watching it as ``mymaster``; (master, sentinel port)."""
    master = start_redis()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # the sentinel rewrites its file: one of its own
    conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    argv = redis_argv(port, tmp_path)
    proc = subprocess.Popen(
        [argv[0], str(conf), "--sentinel", *argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_redis(port)
        yield master, port
    finally:
        stop_process(proc)
        stop_redis(master)


def test_every_client_reaches_the_master_through_the_sentinel(
    sentinel: tuple[RedisServer, int], tmp_path: Path, _upstream_server: FakeUpstream
) -> None:
    from api import create_app
    from core.store import db, get_redis
    from streaming.control import stop_services
    from streaming.log import event_log
    from streaming.services import start_services

    master, port = sentinel
    nowhere = free_port()
    config = app_config(
        f"redis://127.0.0.1:{nowhere}/0",
        f"sqlite:///{tmp_path / 'sg.db'}",
        _upstream_server.base_url,
        REDIS_SENTINELS=[("127.0.0.1", port)],
        REDIS_SENTINEL_MASTER="mymaster",
    )
    app: Any = create_app(config)
    direct = redis_lib.Redis(port=master.port, decode_responses=True)
    try:
        with app.app_context():
            db.create_all()
            start_services(app)
            get_redis().set("sg:probe", "through the sentinel")
            entry = event_log(app).append("streams/str_probe", "token", '{"text": "x"}', 60)
            readers = [
                c for c in direct.client_list(_type="pubsub") if c["name"].startswith("sg-hub:")
            ]
            stop_services(app)
        assert direct.get("sg:probe") == "through the sentinel"
        assert direct.xrange("sg:log:{streams/str_probe}")[0][0] == entry
        assert len(readers) == 1  # the hub reader subscribed on the master
    finally:
        direct.close()
        close_app(app)
