"""Completion webhooks: the tenant's settings and the deliveries an admin inspects."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from api.schemas.auth import no_control_chars


class WebhookSettingsSchema(Schema):
    origins = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Origins (`https://hooks.example.com`) a webhook_url may use"},
    )
    secret = fields.String(
        allow_none=True,
        metadata={
            "description": "The signing secret (`whsec_<base64>`); verify `Streamgate-Signature` "
            "with it. Null until origins are first set."
        },
    )


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false`` only: ``"yes"`` or ``1`` is a 422, not a rotation."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class WebhookSettingsUpdateSchema(Schema):
    class Meta:
        unknown = RAISE

    origins = fields.List(
        fields.String(validate=[validate.Length(min=1, max=300), no_control_chars]),
        required=True,
        validate=validate.Length(max=50),
        metadata={"description": "Replaces the allow-list; `[]` turns webhooks off"},
    )
    rotate_secret = StrictBoolean(
        load_default=False, metadata={"description": "Issue a new signing secret"}
    )


class WebhookAttemptSchema(Schema):
    at = fields.String(metadata={"description": "When the attempt started (ISO 8601)"})
    ok = fields.Boolean()
    status = fields.Integer(allow_none=True, metadata={"description": "The receiver's HTTP status"})
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer()


class WebhookDeliverySchema(Schema):
    id = fields.String(metadata={"description": "`Streamgate-Id`: the same on every attempt"})
    stream_id = fields.String()
    url = fields.String()
    event = fields.String()
    status = fields.String(metadata={"description": "pending, delivered or failed"})
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)
    attempts = fields.List(fields.Nested(WebhookAttemptSchema))


class WebhookDeliveryQuerySchema(Schema):
    stream_id = fields.String(validate=validate.Length(max=64))
    status = fields.String(validate=validate.OneOf(["pending", "delivered", "failed"]))
