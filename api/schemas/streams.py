"""Channel-mode schemas: streams and event tickets."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate, validates_schema

from api.schemas.chat import ChatRequestSchema, ToolCallSchema, UsageSchema
from core.errors import ApiError


class StreamCreateSchema(ChatRequestSchema):
    """The same request as chat completions; ``stream`` is implied.

    A field whose result channel events cannot carry is refused, never dropped.
    """

    webhook_url = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=2048),
        metadata={
            "description": "POST the terminal event here when the stream ends (signed; on the "
            "tenant's allow-list of webhook origins; see GET /v1/admin/webhooks)"
        },
    )

    @validates_schema
    def _channel_can_honour(self, data: dict[str, Any], **_: Any) -> None:
        # A 400 (not the 422 of a malformed field): the request is valid, this mode cannot
        # serve it, and direct mode can.
        if (data.get("n") or 1) > 1:
            raise _unsupported("n", "Channel mode streams one choice")
        if data.get("logprobs") or data.get("top_logprobs") is not None:
            raise _unsupported("logprobs", "Channel events carry no log probabilities")


def _unsupported(param: str, why: str) -> ApiError:
    message = f"{param}: {why}; ask POST /v1/chat/completions for it."
    return ApiError.for_param(400, message, param, "unsupported_in_channel_mode", message)


class StreamAcceptedSchema(Schema):
    id = fields.String(required=True)
    channel = fields.String(required=True)
    events_url = fields.String(required=True)
    status = fields.String(required=True)


class StreamErrorSchema(Schema):
    code = fields.String(allow_none=True)
    message = fields.String(allow_none=True)


def _channel_only(kind: type[fields.Field[Any]], description: str, *args: Any) -> fields.Field[Any]:
    """What only a channel-mode stream keeps (null for a direct-mode one)."""
    return kind(*args, allow_none=True, metadata={"description": f"{description} (channel mode)"})


class StreamSchema(Schema):
    id = fields.String(required=True)
    channel = fields.String()
    events_url = fields.String()
    user_id = fields.String()
    mode = fields.String()
    model = fields.String()
    status = fields.String()
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    finish_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema)
    error = fields.Nested(StreamErrorSchema, allow_none=True)
    text = fields.String(allow_none=True)
    tool_calls = _channel_only(
        fields.List, "The tool calls the model made, assembled", fields.Nested(ToolCallSchema)
    )
    messages = _channel_only(
        fields.List, "The messages the generation was asked for", fields.Dict()
    )
    settings = _channel_only(
        fields.Dict, "Its sampling settings as sent: max_tokens, temperature, top_p, stop, seed"
    )


class StreamListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.String(
        validate=validate.OneOf(["running", "completed", "failed", "cancelled", "revoked"])
    )


class TicketRequestSchema(Schema):
    channel = fields.String(required=True, validate=validate.Length(min=1, max=200))


class TicketSchema(Schema):
    ticket = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    channel = fields.String(required=True)
    events_url = fields.String(required=True)
