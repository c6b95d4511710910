"""Fixtures of the Redis Cluster tests: a real local 6-node cluster, two gunicorn masters on it.

The cluster (``scripts.redis_cluster``) and the two masters are started once per test process
and shared by the tests here; each test starts on an emptied cluster (``FLUSHALL`` on every
master) and empty tables, after the previous one left nothing running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from bench.fake_upstream import FakeUpstream
from scripts.redis_cluster import LocalCluster, start_cluster
from tests.support.cluster import ClusterLive, ClusterRedis
from tests.support.config import app_config
from tests.support.live import close_app
from tests.support.multinode import Nodes

OVERRIDES = {"SSE_HEARTBEAT_S": "1", "SSE_MAX_SUBSCRIPTIONS_PER_USER": "3"}


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def cluster_live(
    local_cluster: LocalCluster,
    _upstream_server: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClusterLive]:
    live = ClusterLive(
        OVERRIDES,
        ClusterRedis(local_cluster),
        _upstream_server.base_url,
        tmp_path_factory.mktemp("cluster-live"),
    )
    live.add_node()
    yield live
    live.stop()


@pytest.fixture()
def cluster_redis(local_cluster: LocalCluster) -> Iterator[RedisCluster]:
    """A client of the cluster, emptied first (every master)."""
    with ClusterRedis(local_cluster).client() as client:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield client


@pytest.fixture()
def nodes(
    cluster_live: ClusterLive, cluster_redis: RedisCluster, fake_upstream: FakeUpstream
) -> Iterator[Nodes]:
    """Node A and node B: two gunicorn masters (two gevent workers each) on the cluster."""
    problem = cluster_live.problem(cluster_redis)
    assert problem is None, problem
    app = cluster_live.make_app()
    try:
        cluster_live.empty_tables(app)
        with app.app_context():
            yield Nodes(cluster_live.server(app, 0), cluster_live.server(app, 1))
        idle = cluster_live.wait_idle(
            cluster_redis, lambda: int(fake_upstream.snapshot()["active"])
        )
        assert idle is None, idle
    finally:
        close_app(app)


@pytest.fixture()
def people(nodes: Nodes, make_tenant: Any, make_user: Any) -> dict[str, Any]:
    return nodes.people(make_tenant, make_user)


# --- a cluster of the test's own, for the tests that lose a master for good -------------------


@pytest.fixture()
def cluster() -> Iterator[LocalCluster]:
    """A 6-node cluster of this test alone (it will lose a node), failing over in about 2 s."""
    local = start_cluster(node_timeout_ms=1000)
    yield local
    local.stop()


@pytest.fixture()
def cluster_app(
    cluster: LocalCluster, tmp_path: Path, _upstream_server: FakeUpstream
) -> Iterator[Any]:
    """An in-process app on ``cluster`` (its own SQLite), inside its app context."""
    from api import create_app
    from core.store import db

    config = app_config(
        cluster.url,
        f"sqlite:///{tmp_path / 'sg.db'}",
        _upstream_server.base_url,
        REDIS_CLUSTER=True,
        SSE_HEARTBEAT_S=1,
    )
    app = create_app(config)
    with app.app_context():
        db.create_all()
        yield app
    close_app(app)
