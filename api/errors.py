"""The one error envelope: rendering, and the handlers that route every error through it.

``{"code": 422, "status": "Unprocessable Entity", "message": "...", "errors": {...}}`` everywhere,
except on the OpenAI-compatible blueprints, whose clients (the OpenAI SDKs) parse
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
import sqlalchemy.exc
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from core.errors import ApiError
from core.store import PoolExhausted

log = logging.getLogger("streamgate.errors")

# Blueprints whose clients are OpenAI SDKs and so get OpenAI's error shape.
OPENAI_BLUEPRINTS = frozenset({"chat", "models"})

# OpenAI error "type" for each status family, used on the OpenAI-compatible routes.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def wants_openai_shape() -> bool:
    """True on the OpenAI-compatible routes."""
    return request.blueprint in OPENAI_BLUEPRINTS


def _field_errors(exc: HTTPException) -> dict[str, Any] | None:
    if isinstance(exc, ApiError):
        return exc.errors
    data = getattr(exc, "data", None)  # webargs / flask-smorest put validation messages here
    if isinstance(data, dict):
        messages = data.get("messages")
        if isinstance(messages, dict):
            # webargs nests by location ({"json": {...}}); a client cares about the fields.
            if len(messages) == 1 and next(iter(messages)) in {"json", "query", "form", "path"}:
                location, messages = next(iter(messages.items()))
                if isinstance(messages, list):  # a whole-body problem, e.g. "Invalid JSON body."
                    return {"body" if location == "json" else location: messages}
            return messages if isinstance(messages, dict) else None
    return None


def _first_param(errors: dict[str, Any] | None) -> str | None:
    if not errors:
        return None
    key = next(iter(errors))
    return key if key != "_schema" else None


def error_response(exc: HTTPException) -> Response:
    """Render an HTTPException in the envelope that fits the route."""
    status = exc.code or 500
    phrase = HTTPStatus(status).phrase
    errors = _field_errors(exc)
    message = getattr(exc, "message", None) or exc.description or phrase
    if status in (400, 422) and errors and not isinstance(exc, ApiError):
        message = "Request is invalid: " + "; ".join(
            f"{field}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
            for field, msgs in errors.items()
        )
    if wants_openai_shape():
        if status == 422:
            status = 400  # OpenAI answers invalid requests with 400; its SDKs expect that
            phrase = HTTPStatus(status).phrase
        passed_on = getattr(exc, "openai_error", None)
        body: dict[str, Any] = {
            "error": passed_on
            or {
                "message": message,
                "type": OPENAI_TYPES.get(
                    status, "api_error" if status >= 500 else "invalid_request_error"
                ),
                "param": getattr(exc, "param", None) or _first_param(errors),
                "code": getattr(exc, "error_code", None) or phrase.lower().replace(" ", "_"),
            }
        }
    else:
        body = {"code": status, "status": phrase, "message": message}
        if errors:
            body["errors"] = errors
        if isinstance(exc, ApiError) and exc.error_code:
            body["error_code"] = exc.error_code
    response = jsonify(body)
    response.status_code = status
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    if isinstance(exc, ApiError):
        response.headers.update(exc.extra_headers)
    return response


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


def overloaded(reason: str) -> ApiError:
    """``503 overloaded`` with ``Retry-After``, counted; OpenAI's SDKs back off and retry it."""
    current_app.extensions["streamgate.metrics"].overload_refusals.labels(reason).inc()
    return ApiError(
        503,
        "The gateway is at capacity; retry shortly. Streams already running are not affected.",
        code="overloaded",
        headers={"Retry-After": "1"},
    )


def handle_redis_error(exc: redis.RedisError) -> Response:
    if isinstance(exc, PoolExhausted):  # every connection busy: capacity, not an outage
        return error_response(overloaded("redis_pool"))
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
