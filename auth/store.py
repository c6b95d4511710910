"""Shared handles for the lowest layer: the SQLAlchemy ``db`` and the app's Redis client.

Both are unbound at import time; ``api.create_app`` binds them. Nothing here connects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import redis
from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
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
