"""Register the one error handler set; the envelope itself is rendered by ``auth.errors``.

``{"code": 422, "status": "Unprocessable Entity", "message": "...", "errors": {...}}`` everywhere,
except on the OpenAI-compatible blueprints, whose clients (the OpenAI SDKs) parse
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging

import redis
import sqlalchemy.exc
from flask import Flask, Response, current_app
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from auth.errors import ApiError, error_response

log = logging.getLogger("streamgate.errors")


def handle_http_exception(exc: HTTPException) -> Response:
    if isinstance(exc, InternalServerError):
        original = getattr(exc, "original_exception", None)
        if original is not None:
            log.error("unhandled error", exc_info=original)
        exc = ApiError(500, "Internal server error; the request id identifies it in the logs.")
    elif isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config["MAX_BODY_BYTES"]
        exc = ApiError(413, f"Request body is too large: at most {limit} bytes.")
    return error_response(exc)


def handle_redis_error(exc: redis.RedisError) -> Response:
    log.error("redis unavailable: %s", exc)
    current_app.extensions["streamgate.metrics"].backend_errors.labels("redis").inc()
    return error_response(
        ApiError(503, "Redis is unavailable; try again shortly.", code="redis_unavailable")
    )


def handle_db_error(exc: sqlalchemy.exc.SQLAlchemyError) -> Response:
    log.error("database error: %s", exc)
    current_app.extensions["streamgate.metrics"].backend_errors.labels("database").inc()
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return error_response(
            ApiError(
                503, "The database is unavailable; try again shortly.", code="database_unavailable"
            )
        )
    return handle_http_exception(InternalServerError(original_exception=exc))


def handle_recursion_error(exc: RecursionError) -> Response:
    # Deeply nested JSON exhausts the parser's recursion; it is the client's input, not our bug.
    return error_response(ApiError(400, "Request body is nested too deeply.", code="invalid_json"))


def register_error_handlers(app: Flask) -> None:
    """Route every error through the envelope."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(redis.RedisError, handle_redis_error)
    app.register_error_handler(sqlalchemy.exc.SQLAlchemyError, handle_db_error)
    app.register_error_handler(RecursionError, handle_recursion_error)
