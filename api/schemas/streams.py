"""Channel-mode schemas: streams and event tickets."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from api.schemas.chat import ChatRequestSchema, UsageSchema


class StreamCreateSchema(ChatRequestSchema):
    """The same request as chat completions; ``stream`` is implied."""

    webhook_url = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=2048),
        metadata={
            "description": "POST the terminal event here when the stream ends (signed; on the "
            "tenant's allow-list of webhook origins; see GET /v1/admin/webhooks)"
        },
    )


class StreamAcceptedSchema(Schema):
    id = fields.String(required=True)
    channel = fields.String(required=True)
    events_url = fields.String(required=True)
    status = fields.String(required=True)


class StreamErrorSchema(Schema):
    code = fields.String(allow_none=True)
    message = fields.String(allow_none=True)


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
