"""Shared handles for every layer: the SQLAlchemy ``db``, the app's Redis client, ids and time.

Both handles are unbound at import time; ``api.create_app`` binds them. Nothing here connects.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, cast

import redis
from flask import current_app
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


def get_redis() -> redis.Redis:
    """The app's shared Redis client (one connection pool per process)."""
    return cast(redis.Redis, current_app.extensions[REDIS_EXTENSION])


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
