"""Shared handles for every layer: the SQLAlchemy ``db``, the app's Redis client, ids and time.

Both handles are unbound at import time; ``api.create_app`` binds them. Nothing here connects.
Redis is one server, a Redis Cluster or a Sentinel-watched master (``RedisTarget``): every client
(the two bounded pools, the log writer's, the hub reader's) is built here for any of the three.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from flask import current_app, g, has_app_context
from flask_sqlalchemy import SQLAlchemy
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, TryAgainError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool
from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

from core.io import readable_now, readable_within

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)

REDIS_EXTENSION = "streamgate.redis"
RUNS_REDIS_EXTENSION = "streamgate.redis.runs"


class PoolExhausted(redis.ConnectionError):
    """Every connection of a pool stayed busy for the pool's wait: the process is at capacity.

    Redis itself is fine; requests that meet this are refused as ``overloaded``, and a run
    waits it out like any short connection failure.
    """


def _something_waiting(connection: Any) -> bool | None:
    """Is something waiting to be read on ``connection``: a reply its parser buffered, bytes
    TLS decrypted, its socket readable (data, or a hang-up; ``core.io.readable_now``)? None
    when that cannot be told so cheaply (a parser other than hiredis's, no socket)."""
    sock = connection._sock
    reader = getattr(connection._parser, "_reader", None)  # hiredis's (the Python one has none)
    if sock is None or reader is None or not hasattr(reader, "has_data"):
        return None
    if reader.has_data():
        return True
    pending = getattr(sock, "pending", None)  # TLS bytes decrypted above the socket
    return bool(pending is not None and pending()) or readable_now(sock)


class QuickCheckout(redis.ConnectionPool):
    """A pool whose connections tell whether anything waits on them without a turn of the loop.

    redis-py asks a connection ``can_read()`` with ``select.poll``: of each connection it hands
    out (a reply left over, a closed socket?), and of a pub/sub connection before each read
    (once to wait, then once more to tell data from a hang-up). Under gevent that is gevent's
    cooperative poll: even with a zero timeout it yields to the event loop and comes back one
    whole loop iteration later, so every command and pipeline waited a turn of a busy worker's
    loop before it was sent (and the check cost ~28 us instead of ~2), and the hub's reader one
    more before each read. Here "nothing waits" (a command's checkout) and "something waits"
    (a pub/sub read: the read itself tells a hang-up, raising ``ConnectionError``) come from
    the operating system's poll (``core.io``); a pub/sub wait is one cooperative poll; a
    checkout with something waiting goes through redis-py's own check as before.
    """

    def make_connection(self) -> Any:
        connection: Any = super().make_connection()  # type: ignore[no-untyped-call]
        library_check = connection.can_read

        def can_read(timeout: float = 0) -> bool:
            waiting = _something_waiting(connection)
            if waiting is None or (waiting and not timeout):
                return bool(library_check(timeout))
            if waiting or not timeout:
                return waiting
            return readable_within(connection._sock, timeout)

        connection.can_read = can_read  # type: ignore[method-assign]
        return connection


class _QuickSentinelPool(SentinelConnectionPool, QuickCheckout):
    """Sentinel's pool (it asks the sentinels where the master is), ``QuickCheckout``'s checks."""


class BoundedPool(QuickCheckout, redis.BlockingConnectionPool):
    """A blocking pool whose exhaustion is told apart from Redis being unreachable."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if self.pool.empty() and str(exc) == "No connection available.":
                raise PoolExhausted(
                    f"All {self.max_connections} Redis connections of this worker are busy."
                ) from exc
            raise


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one server (``url``), a Cluster (``url`` is any node, the seed) or a
    Sentinel-watched master (``sentinels`` and ``master``; ``url`` then gives only the database,
    password and TLS)."""

    url: str
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RedisTarget:
        """The target named by ``REDIS_URL``, ``REDIS_CLUSTER`` and ``REDIS_SENTINELS``."""
        return cls(
            cfg["REDIS_URL"],
            bool(cfg.get("REDIS_CLUSTER", False)),
            tuple(cfg.get("REDIS_SENTINELS") or ()),
            str(cfg.get("REDIS_SENTINEL_MASTER") or ""),
        )


class _BoundedSentinelPool(SentinelConnectionPool, BoundedPool):
    """Sentinel's pool (it asks the sentinels where the master is) with ``BoundedPool``'s wait."""


def make_client(target: RedisTarget, **kwargs: Any) -> redis.Redis:
    """A client for ``target``; ``kwargs`` go to each connection pool (one per node on a Cluster).

    A Cluster client is typed as ``redis.Redis``: every command Streamgate sends exists on both,
    and each is routed to the node owning its key's slot (scripts and multi-key commands keep
    their keys in one slot, see docs/operations.md).
    """
    if target.cluster:
        client: Any = RedisCluster.from_url(target.url, **kwargs)
        return cast(redis.Redis, client)
    if target.sentinels:
        options = redis.connection.parse_url(target.url)
        options.pop("host", None)
        options.pop("port", None)
        sentinel = Sentinel(
            list(target.sentinels),
            socket_timeout=kwargs.get("socket_timeout", 5),
            socket_connect_timeout=kwargs.get("socket_connect_timeout", 2),
        )
        return cast(redis.Redis, sentinel.master_for(target.master, **{**options, **kwargs}))
    pool_class = kwargs.pop("connection_pool_class", redis.ConnectionPool)
    return redis.Redis(connection_pool=pool_class.from_url(target.url, **kwargs))


def redis_client(target: RedisTarget, size: int, wait_s: float) -> redis.Redis:
    """A client whose pool holds at most ``size`` connections (per node on a Cluster); callers
    wait up to ``wait_s`` for one.

    Under gevent a burst of greenlets waits for one of a bounded set of connections instead of
    opening one each (the default pool grows per concurrent caller, then fails past its limit).
    """
    if target.sentinels:
        pool_class: type[redis.ConnectionPool] = _BoundedSentinelPool
    else:
        pool_class = BoundedPool
    return make_client(
        target,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        max_connections=size,
        timeout=wait_s,
        connection_pool_class=pool_class,
    )


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (or one of its pipelines)."""
    return isinstance(client, RedisCluster)


def fails_over(client: Any) -> bool:
    """True when a replica may be promoted in place of ``client``'s master (a Cluster, or a
    Sentinel-watched master): then a write the master acknowledged can still be lost."""
    pool = getattr(client, "connection_pool", None)
    return is_cluster(client) or isinstance(pool, SentinelConnectionPool)


# Errors a failover or a restart produces for a while, after which the same call succeeds.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    redis.ReadOnlyError,
)


class _AnyNodeConnection(redis.Connection):
    """A connection to whichever node of a Cluster answers first, from its current topology.

    The hub reader's: a plain ``PUBLISH`` reaches every node of a Cluster, so any one hears
    the control bus and every channel; when that node dies, the reconnect finds another.
    """

    def __init__(self, *, cluster: RedisCluster, **kwargs: Any) -> None:
        self.cluster = cluster
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    def _connect(self) -> Any:
        try:
            self.cluster.nodes_manager.initialize()  # the topology now, not at start-up
        except redis.RedisError:
            pass  # the cached one may still name a live node
        nodes = self.cluster.get_nodes()
        random.shuffle(nodes)  # spread the workers' readers over the nodes
        error: OSError = OSError("no Redis Cluster node known")
        for node in nodes:
            self.host, self.port = node.host, node.port
            try:
                return super()._connect()  # type: ignore[no-untyped-call]
            except OSError as exc:
                error = exc
        raise error


def reader_client(target: RedisTarget, client_name: str) -> redis.Redis:
    """The hub reader's client: one pub/sub connection, no read timeout, never retried
    silently (a reconnect must be seen: what was published meanwhile was missed)."""
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": 2,
        "socket_keepalive": True,
        # No error is retryable: redis-py calls a retry's failure handler (for pub/sub, a
        # reconnect and resubscribe) before it counts the retries, so Retry(..., 0) alone
        # still reconnects once, and a connection closed by stop() came back unowned.
        "retry": Retry(NoBackoff(), 0, supported_errors=()),
        "client_name": client_name,
    }
    if target.cluster:
        seed: Any = RedisCluster.from_url(target.url, socket_connect_timeout=2, socket_timeout=5)
        options.update(redis.connection.parse_url(target.url))
        for name in ("host", "port", "db"):
            options.pop(name, None)
        pool = QuickCheckout(connection_class=_AnyNodeConnection, cluster=seed, **options)
        return redis.Redis(connection_pool=pool)
    options["connection_pool_class"] = _QuickSentinelPool if target.sentinels else QuickCheckout
    return make_client(target, **options)


def writer_client(client: redis.Redis) -> redis.Redis:
    """A client to the same Redis as ``client`` on one connection of its own (per node on a
    Cluster) that callers wait for without a bound: the event log's writer."""
    pool: Any = client.connection_pool if not is_cluster(client) else None
    if pool is None:
        cluster: Any = client
        seed = cluster.get_default_node()
        kwargs = dict(cluster.nodes_manager.connection_kwargs)
        for name in ("max_connections", "timeout", "connection_pool_class", "host", "port", "db"):
            kwargs.pop(name, None)
        # Its one thread sends one pipeline at a time to one node: one connection per node.
        return cast(
            redis.Redis,
            RedisCluster(
                url=f"redis://{seed.host}:{seed.port}",
                connection_pool_class=QuickCheckout,
                **kwargs,
            ),
        )
    if isinstance(pool, SentinelConnectionPool):
        return cast(
            redis.Redis,
            pool.sentinel_manager.master_for(
                pool.service_name,
                connection_pool_class=_BoundedSentinelPool,
                max_connections=1,
                timeout=None,
            ),
        )
    return redis.Redis(
        connection_pool=BoundedPool(  # type: ignore[no-untyped-call]
            connection_class=pool.connection_class,
            max_connections=1,
            timeout=None,
            **pool.connection_kwargs,
        )
    )


def topology_epoch(client: redis.Redis) -> str:
    """Changes whenever a replica may have been promoted (its master's unreplicated writes lost):
    a Cluster's current epoch, else the master's replication id (new after a promotion or a
    restart)."""
    if is_cluster(client):
        info: Any = client.execute_command("CLUSTER INFO")
        return f"cluster:{info['cluster_current_epoch']}"
    return "replid:" + str(client.info("replication")["master_replid"])


def get_redis() -> redis.Redis:
    """The Redis client for the work at hand: requests share one pool per process; a
    generation's own context (``use_runs_pool``) has a pool of its own, so a crowd of
    subscribers cannot starve running generations of connections, nor the reverse."""
    client = g.get("sg_redis") if has_app_context() else None
    return cast(redis.Redis, client or current_app.extensions[REDIS_EXTENSION])


def use_runs_pool() -> None:
    """Make this app context's ``get_redis()`` the runs' pool (the runner's and keeper's)."""
    g.sg_redis = current_app.extensions.get(RUNS_REDIS_EXTENSION)


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the models use."""
    return datetime.now(UTC)


def setting(name: str) -> Any:
    """One value of the app's configuration."""
    return current_app.config[name]


def new_id(prefix: str) -> str:
    """A random, URL-safe, prefixed identifier such as ``usr_k3x...``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(20))


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on every database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)
