"""Conversation schemas: the chat page's history, one channel-mode stream per reply."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from api.models import DEFAULT_TITLE
from api.schemas.chat import NO_CONTROL, UsageSchema
from api.schemas.streams import StreamAcceptedSchema, StreamErrorSchema

TITLE = [validate.Length(min=1, max=200), NO_CONTROL]
MODEL = [validate.Length(min=1, max=200), NO_CONTROL]


class _SettingsFields(Schema):
    """The settings a conversation's replies are generated with (null: the model's default)."""

    model = fields.String(
        allow_none=True, validate=MODEL, metadata={"example": "smollm2-135m-instruct"}
    )
    system_prompt = fields.String(
        allow_none=True,
        metadata={
            "example": "You answer in one sentence.",
            "description": "At most MAX_PROMPT_CHARS characters (and it counts in every turn's)",
        },
    )
    temperature = fields.Float(
        allow_none=True, validate=validate.Range(min=0, max=2), metadata={"example": 0.7}
    )
    top_p = fields.Float(
        allow_none=True, validate=validate.Range(min=0, max=1), metadata={"example": 1.0}
    )
    max_tokens = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=1), metadata={"example": 256}
    )


class ConversationCreateSchema(_SettingsFields):
    title = fields.String(
        load_default=DEFAULT_TITLE, validate=TITLE, metadata={"example": "Trip to Lisbon"}
    )


class ConversationUpdateSchema(_SettingsFields):
    """Rename a conversation or change its settings: only the fields given change."""

    title = fields.String(validate=TITLE, metadata={"example": "Trip to Lisbon, day 2"})


class TurnCreateSchema(Schema):
    content = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"example": "What should I see first?"},
    )
    model = fields.String(
        validate=MODEL,
        metadata={"description": "Answer with this model (and keep it for the conversation)"},
    )


class ReplySchema(Schema):
    """The reply as its stream describes it (text so far while it runs)."""

    status = fields.String()
    text = fields.String(allow_none=True)
    finish_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema)
    error = fields.Nested(StreamErrorSchema, allow_none=True)


class TurnSchema(Schema):
    id = fields.String(required=True)
    position = fields.Integer()
    content = fields.String(metadata={"description": "The user's message"})
    model = fields.String()
    stream_id = fields.String(allow_none=True)
    created_at = fields.DateTime()
    reply = fields.Nested(ReplySchema, allow_none=True)


class ConversationSchema(_SettingsFields):
    id = fields.String(required=True)
    title = fields.String()
    turn_count = fields.Integer()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ConversationDetailSchema(ConversationSchema):
    turns = fields.List(fields.Nested(TurnSchema))


class TurnAcceptedSchema(Schema):
    turn = fields.Nested(TurnSchema, required=True)
    stream = fields.Nested(StreamAcceptedSchema, required=True)
