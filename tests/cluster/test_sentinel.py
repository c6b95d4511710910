"""Redis Sentinel: the app finds its master through a real local sentinel (``REDIS_SENTINELS``).

Debian's redis-server runs as the sentinel (``--sentinel``) watching a redis-server on another
port; ``REDIS_URL`` names a port where nothing listens, so every client that works went through
the sentinel: the request pools, the log writer and the hub reader's pub/sub. Then a failover:
the master is SIGKILLed with a revocation and a log entry its replica never received, the
sentinel promotes the replica, and every client follows it while the revocation comes back from
SQL and the log writer appends the entry again under its id.
"""

from __future__ import annotations

import signal
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
from tests.support.tokens import claims_of
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


def start_sentinel(tmp_path: Path, master: RedisServer) -> tuple[subprocess.Popen[bytes], int]:
    """A sentinel watching ``master`` as ``mymaster`` (quorum 1, down after 1 s); (proc, port)."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # the sentinel rewrites its file: one of its own
    conf.write_text(
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
    )
    argv = redis_argv(port, tmp_path)
    proc = subprocess.Popen(
        [argv[0], str(conf), "--sentinel", *argv[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_redis(port)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


@pytest.fixture()
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    """A master and a sentinel watching it as ``mymaster``; (master, sentinel port)."""
    master = start_redis()
    try:
        proc, port = start_sentinel(tmp_path, master)
    except BaseException:
        stop_redis(master)
        raise
    try:
        yield master, port
    finally:
        stop_process(proc)
        stop_redis(master)


def sentinel_app(tmp_path: Path, sentinel_port: int, llm_url: str) -> Any:
    """An app whose every Redis client goes through the sentinel (``REDIS_URL`` is a dead port)."""
    from api import create_app

    config = app_config(
        f"redis://127.0.0.1:{free_port()}/0",
        f"sqlite:///{tmp_path / 'sg.db'}",
        llm_url,
        REDIS_SENTINELS=[("127.0.0.1", sentinel_port)],
        REDIS_SENTINEL_MASTER="mymaster",
    )
    return create_app(config)


def test_every_client_reaches_the_master_through_the_sentinel(
    sentinel: tuple[RedisServer, int], tmp_path: Path, _upstream_server: FakeUpstream
) -> None:
    from core.store import db, get_redis
    from streaming.control import stop_services
    from streaming.log import event_log
    from streaming.services import start_services

    master, port = sentinel
    app = sentinel_app(tmp_path, port, _upstream_server.base_url)
    direct = redis_lib.Redis(port=master.port, decode_responses=True)
    try:
        with app.app_context():
            db.create_all()
            start_services(app)
            get_redis().set("sg:probe", "through the sentinel")
            entry = event_log(app).append("streams/str_probe", "token", '{"text": "x"}', 60)
            readers = hub_readers_on(direct)
            stop_services(app)
        assert direct.get("sg:probe") == "through the sentinel"
        assert direct.xrange("sg:log:{streams/str_probe}")[0][0] == entry
        assert len(readers) == 1  # the hub reader subscribed on the master
    finally:
        direct.close()
        close_app(app)


def hub_readers_on(client: redis_lib.Redis) -> list[str]:
    """The hub readers subscribed on this server (``sg-hub:<pid>``)."""
    pubsub = client.client_list(_type="pubsub")
    return [c["name"] for c in pubsub if c["name"].startswith("sg-hub:")]


def test_a_sentinel_failover_is_followed_and_what_the_master_lost_comes_back(
    tmp_path: Path, _upstream_server: FakeUpstream, make_user: Any
) -> None:
    from auth import revocations
    from auth.tokens import issue_user_tokens
    from core.store import db, get_redis, utcnow
    from streaming.control import stop_services
    from streaming.log import event_log
    from streaming.services import start_services

    master = start_redis()
    replica = start_redis(["--replicaof", "127.0.0.1", str(master.port)])
    watcher, port = start_sentinel(tmp_path, master)
    app = sentinel_app(tmp_path, port, _upstream_server.base_url)
    to_master = redis_lib.Redis(port=master.port, decode_responses=True)
    to_replica = redis_lib.Redis(port=replica.port, decode_responses=True)
    to_sentinel = redis_lib.Redis(port=port, decode_responses=True)
    try:
        wait_until(lambda: to_replica.info("replication")["master_link_status"] == "up")
        # The sentinel must know the replica before the master dies, or it has none to promote.
        wait_until(lambda: to_sentinel.sentinel_slaves("mymaster"), timeout=30)
        with app.app_context():
            db.create_all()
            start_services(app)
            user = make_user()
            tokens = issue_user_tokens(user_id=user.id, tenant_id=user.tenant_id, role=user.role)
            claims = claims_of(tokens["access_token"])
            assert not revocations.is_revoked(claims)  # seeds Redis from SQL
            revocations.reseed_after_failover()  # note the epoch as it is now
            wait_until(lambda: len(hub_readers_on(to_master)) == 1)
            log, key = event_log(app), "sg:log:{streams/str_kept}"
            kept = log.append("streams/str_kept", "token", '{"text": "a"}', 60)
            wait_until(lambda: to_replica.xlen(key) == 1)

            # The replica paused and its link cut: the revocation and a stream's next log entry
            # reach the master alone.
            replica.proc.send_signal(signal.SIGSTOP)
            try:
                to_master.client_kill_filter(_type="replica")
                user.tokens_valid_after = utcnow()  # SQL first, as every revocation
                db.session.commit()
                revocations.revoke_user_tokens(user.id)
                assert revocations.is_revoked(claims)
                lost = log.append("streams/str_kept", "token", '{"text": "b"}', 60)
                master.proc.send_signal(signal.SIGKILL)
                master.proc.wait(10)
            finally:
                replica.proc.send_signal(signal.SIGCONT)

            wait_until(
                lambda: to_sentinel.sentinel_get_master_addr_by_name("mymaster")[1] == replica.port,
                timeout=60,
                interval=0.2,
            )
            wait_until(lambda: to_replica.info("replication")["role"] == "master", timeout=30)
            assert to_replica.get("sg:rv:user:" + user.id) is None  # lost with the master
            # The log writer kept the entry and appends it again, under the id readers saw.
            wait_until(
                lambda: [entry for entry, _ in to_replica.xrange(key)] == [kept, lost], timeout=30
            )

            def followed() -> bool:
                try:
                    get_redis().set("sg:probe", "after the failover")
                    revocations.reseed_after_failover()  # what every keeper asks each tick
                    return revocations.is_revoked(claims)
                except redis_lib.RedisError:  # the pools are still finding the new master
                    return False

            wait_until(followed, timeout=30, interval=0.2)
            assert to_replica.get("sg:probe") == "after the failover"
            entry = wait_until(
                lambda: _append_or_none(log, "streams/str_after", '{"text": "y"}'),
                timeout=30,
                interval=0.2,
            )
            assert to_replica.xrange("sg:log:{streams/str_after}")[0][0] == entry
            # The hub reader re-subscribed on the new master (the control bus works again).
            wait_until(lambda: len(hub_readers_on(to_replica)) == 1, timeout=30)
            stop_services(app)
    finally:
        for client in (to_master, to_replica, to_sentinel):
            client.close()
        close_app(app)
        stop_process(watcher)
        stop_redis(replica)
        stop_redis(master)


def _append_or_none(log: Any, channel: str, data: str) -> str | None:
    try:
        return str(log.append(channel, "token", data, 60))
    except redis_lib.RedisError:
        return None
