"""Shared handles for every layer: the SQLAlchemy ``db``, the app's Redis client, ids and time.

Both handles are unbound at import time; ``api.create_app`` binds them. Nothing here connects.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, cast

import redis
from flask import current_app, g, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

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


class BoundedPool(redis.BlockingConnectionPool):
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


def redis_client(url: str, size: int, wait_s: float) -> redis.Redis:
    """A client on a ``BoundedPool`` of ``size`` connections; callers wait up to ``wait_s``.

    Under gevent a burst of greenlets waits for one of a bounded set of connections instead of
    opening one each (the default pool grows per concurrent caller, then fails past its limit).
    """
    return redis.Redis(
        connection_pool=BoundedPool.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
            max_connections=size,
            timeout=wait_s,
        )
    )


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
