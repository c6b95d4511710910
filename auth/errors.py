"""The one exception every layer raises for a client-visible error.

``api.errors`` renders it as the JSON envelope (or OpenAI's ``{"error": ...}`` shape on the
OpenAI-compatible routes). Keeping it here, in the lowest layer, lets ``auth`` and ``streaming``
raise it without importing upward.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import Response, jsonify, request
from werkzeug.exceptions import HTTPException

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


class ApiError(HTTPException):
    """A client-visible error with a status, a message and optional details."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.message = message
        self.errors = errors
        self.extra_headers = dict(headers or {})
        self.error_code = code
        self.param = param


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
        body: dict[str, Any] = {
            "error": {
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
