"""The one exception every layer raises for a client-visible error.

``api.errors`` renders it as the JSON envelope (or OpenAI's ``{"error": ...}`` shape on the
OpenAI-compatible routes). It lives in the bottom layer so ``auth`` and ``streaming`` can raise
it without importing upward.
"""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import HTTPException


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
        openai_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.message = message
        self.errors = errors
        self.extra_headers = dict(headers or {})
        self.error_code = code
        self.param = param
        # On the OpenAI routes, an error object answered as is (a model server's own refusal).
        self.openai_error = openai_error

    @classmethod
    def for_param(cls, status: int, message: str, param: str, code: str, detail: str) -> ApiError:
        """An error about one parameter: OpenAI's ``param`` and ``code``, ``detail`` under it."""
        return cls(status, message, param=param, code=code, errors={param: [detail]})
