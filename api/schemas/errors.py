"""The two error shapes, as schemas for the spec (``api.errors.error_response`` renders them)."""

from __future__ import annotations

from marshmallow import Schema, fields


class ErrorSchema(Schema):
    """Every error outside the OpenAI-compatible routes."""

    code = fields.Integer(
        required=True, metadata={"description": "HTTP status code", "example": 422}
    )
    status = fields.String(
        required=True,
        metadata={"description": "HTTP status phrase", "example": "Unprocessable Entity"},
    )
    message = fields.String(required=True, metadata={"description": "What is wrong, for a person"})
    errors = fields.Dict(
        metadata={"description": 'Per-field messages, e.g. {"messages": ["Missing data."]}'}
    )
    error_code = fields.String(
        metadata={"description": "Stable machine-readable reason, e.g. `stream_not_found`"}
    )


class OpenAIErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(
        required=True,
        metadata={
            "description": "e.g. `invalid_request_error`, `authentication_error`, "
            "`rate_limit_error`, `api_error`"
        },
    )
    param = fields.String(allow_none=True, metadata={"description": "The offending field, if any"})
    code = fields.String(
        allow_none=True, metadata={"description": "Stable machine-readable reason"}
    )


class OpenAIErrorSchema(Schema):
    """OpenAI's error shape, used on ``/v1/chat/completions`` and ``/v1/models`` (SDKs parse it)."""

    error = fields.Nested(OpenAIErrorDetailSchema, required=True)
