"""A real local Redis Cluster for the tests, and live gunicorn masters running on it.

``scripts.redis_cluster`` starts the 6 nodes (3 masters, 3 replicas) and stops them by PID;
``ClusterRedis`` gives it the shape of ``tests.support.processes.RedisServer`` (``url``,
``client()``), so ``LiveCluster`` runs gunicorn masters on it unchanged: ``ClusterLive`` adds
``REDIS_CLUSTER=true`` to the servers' environment and to the in-process app.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster

from bench.stack import Stack
from scripts.redis_cluster import LocalCluster, start_cluster
from tests.support.config import app_config
from tests.support.live import LiveCluster

CLUSTER_ENV = {"REDIS_CLUSTER": "true"}


@dataclass
class ClusterRedis:
    """A local cluster seen as one Redis: a seed URL and a cluster client."""

    local: LocalCluster

    @property
    def url(self) -> str:
        return self.local.url

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url, decode_responses=True)


class ClusterLive(LiveCluster):
    """Gunicorn masters and in-process apps on a Redis Cluster."""

    def __init__(
        self,
        overrides: dict[str, str],
        cluster: ClusterRedis,
        llm_url: str,
        directory: Path | None = None,
    ) -> None:
        key = tuple(sorted({**CLUSTER_ENV, **overrides}.items()))
        super().__init__(key, cluster, llm_url, directory)  # type: ignore[arg-type]

    def make_app(self) -> Any:
        from api import create_app

        config = app_config(self.redis_server.url, self.db_url, self.llm_url, REDIS_CLUSTER=True)
        return create_app(config)


def leftovers(redis: Any) -> dict[str, int]:
    """What a finished run must not leave: live generations, leases, open subscriptions."""
    now = time.time()
    leases = sum(
        redis.zcount(key, now * 1000, "+inf") for key in redis.scan_iter("sg:lim:*:leases")
    )
    subscriptions = sum(redis.zcount(key, now, "+inf") for key in redis.scan_iter("sg:subs:*"))
    return {"live": int(redis.zcard("sg:live")), "leases": leases, "subscriptions": subscriptions}


class ClusterStack(Stack):
    """The bench stack (fake upstream, gunicorn) on a local Redis Cluster instead of one Redis.

    The gateway and the in-process app read ``REDIS_CLUSTER=true`` from the environment.
    """

    local: LocalCluster | None = None

    def start_redis(self) -> None:
        self.local = start_cluster(node_timeout_ms=1000)  # a failover in about 2 s
        self.redis_port = self.local.ports[0]

    def redis_client(self) -> Any:
        assert self.local is not None
        port = self.local.alive()[0]  # the seed may be the master that was killed
        return RedisCluster(host="127.0.0.1", port=port, decode_responses=True)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.local is not None:
                self.local.stop()
