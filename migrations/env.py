"""Alembic environment for Flask-Migrate: the app's engine and every model's metadata.

Run through ``flask --app api:create_app db ...`` (or ``flask_migrate.upgrade()`` in an app
context); the database URL is the app's ``DATABASE_URL``.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from flask import current_app

# Every module that defines tables, imported so autogenerate sees all of them. A new models
# module must be added here, or its tables look "removed" to `flask db migrate`.
import api.models  # noqa: F401
import auth.models
import streaming.models  # noqa: F401
from core.store import db

config = context.config

# Configure logging from alembic.ini only for the `flask db` command line: inside a running app
# or a test session the root logger is already set up and must be left alone.
if config.config_file_name is not None and not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our column types as plain SQLAlchemy types, so revisions never import app code."""
    if type_ == "type" and isinstance(obj, auth.models.UTCDateTime):
        return "sa.DateTime()"
    return False


def options() -> dict[str, Any]:
    """Settings shared by offline and online runs (a copy: never mutate Flask-Migrate's dict)."""
    opts: dict[str, Any] = dict(current_app.extensions["migrate"].configure_args)
    opts.setdefault("render_as_batch", True)  # SQLite can only ALTER through table copies
    opts.setdefault("compare_type", True)
    opts.setdefault("compare_server_default", True)
    opts.setdefault("render_item", render_item)
    return opts


def process_revision_directives(ctx: Any, revision: Any, directives: list[Any]) -> None:
    """Write no empty revision when autogenerate finds nothing to do."""
    if getattr(config.cmd_opts, "autogenerate", False):
        script = directives[0]
        if script.upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")


def run_migrations_offline() -> None:
    """Emit SQL for ``flask db upgrade --sql`` without connecting."""
    url = db.engine.url.render_as_string(hide_password=False)
    context.configure(url=url, target_metadata=db.metadata, literal_binds=True, **options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through a connection from the app's engine."""
    opts = options()
    opts.setdefault("process_revision_directives", process_revision_directives)
    with db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=db.metadata, **opts)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
