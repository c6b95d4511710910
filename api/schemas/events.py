"""What travels inside the event streams, as schemas for the spec.

The hub (``GET /v1/events``) sends named events whose JSON ``data`` repeats the name in ``type``
(``streaming.channel`` and ``streaming.hub`` write them); direct mode sends OpenAI's
``chat.completion.chunk`` objects, then ``data: [DONE]``.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from api.schemas.chat import UsageSchema


def _type(name: str) -> fields.String:
    return fields.String(
        required=True,
        validate=validate.OneOf([name]),
        metadata={"description": "The event's name, repeated"},
    )


class _StreamEventSchema(Schema):
    stream_id = fields.String(required=True)


class StreamStartedEventSchema(_StreamEventSchema):
    """``stream.started`` on ``streams/<id>``: the generation began."""

    type = _type("stream.started")
    model = fields.String(required=True)
    mode = fields.String(required=True, validate=validate.OneOf(["channel", "direct"]))
    created = fields.Float(required=True, metadata={"description": "Unix time, seconds"})


class TokenEventSchema(Schema):
    """``token``: text from the model; several tokens may be coalesced into one event."""

    type = _type("token")
    text = fields.String(required=True, metadata={"description": "Append this to the text so far"})
    index = fields.Integer(
        required=True, metadata={"description": "Index of the first token in `text`"}
    )
    count = fields.Integer(metadata={"description": "How many tokens were coalesced into `text`"})


class StreamCompletedEventSchema(_StreamEventSchema):
    """``stream.completed``: the model finished; the server then closes the connection."""

    type = _type("stream.completed")
    finish_reason = fields.String(allow_none=True, metadata={"description": "`stop` or `length`"})
    usage = fields.Nested(UsageSchema, required=True)


class StreamErrorDetailSchema(Schema):
    code = fields.String(allow_none=True)
    message = fields.String(allow_none=True)


class StreamFailedEventSchema(_StreamEventSchema):
    """``stream.failed``: the upstream failed or the stream ran too long."""

    type = _type("stream.failed")
    error = fields.Nested(StreamErrorDetailSchema, required=True)
    usage = fields.Nested(UsageSchema, required=True)


class StreamCancelledEventSchema(_StreamEventSchema):
    """``stream.cancelled``: its owner cancelled it (``DELETE /v1/streams/<id>``)."""

    type = _type("stream.cancelled")
    reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema, required=True)


class StreamRevokedEventSchema(_StreamEventSchema):
    """``stream.revoked``: an admin revoked it; do not reconnect (a reconnect answers 410)."""

    type = _type("stream.revoked")
    by = fields.String(allow_none=True, metadata={"description": "Id of the admin who revoked it"})
    reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema, required=True)


class PingEventSchema(Schema):
    """``ping``: sent every ``SSE_HEARTBEAT_S`` on an idle connection."""

    type = _type("ping")
    time = fields.Float(required=True, metadata={"description": "Server Unix time, seconds"})


class UserStreamEventSchema(_StreamEventSchema):
    """Lifecycle events on ``users/<id>``: one per start and end of each of the user's streams."""

    type = fields.String(
        required=True,
        validate=validate.OneOf(
            [
                "stream.started",
                "stream.completed",
                "stream.failed",
                "stream.cancelled",
                "stream.revoked",
            ]
        ),
    )
    channel = fields.String(
        required=True, metadata={"description": "`streams/<id>`: subscribe to it"}
    )
    events_url = fields.String(required=True)
    mode = fields.String(required=True, validate=validate.OneOf(["channel", "direct"]))
    model = fields.String(required=True)
    status = fields.String(
        required=True,
        validate=validate.OneOf(["running", "completed", "failed", "cancelled", "revoked"]),
    )


# Event name -> payload schema on a ``streams/<id>`` channel, in the order a stream sends them.
STREAM_EVENTS: dict[str, type[Schema]] = {
    "stream.started": StreamStartedEventSchema,
    "token": TokenEventSchema,
    "stream.completed": StreamCompletedEventSchema,
    "stream.failed": StreamFailedEventSchema,
    "stream.cancelled": StreamCancelledEventSchema,
    "stream.revoked": StreamRevokedEventSchema,
    "ping": PingEventSchema,
}


class ChunkDeltaSchema(Schema):
    role = fields.String(metadata={"description": "Only in the first chunk: `assistant`"})
    content = fields.String(metadata={"description": "Text to append"})


class ChunkChoiceSchema(Schema):
    index = fields.Integer(required=True)
    delta = fields.Nested(ChunkDeltaSchema, required=True)
    finish_reason = fields.String(allow_none=True, required=True)


class ChatCompletionChunkSchema(Schema):
    """One ``data:`` line of a direct-mode stream (``stream: true``)."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["chat.completion.chunk"]))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(
        fields.Nested(ChunkChoiceSchema),
        required=True,
        metadata={"description": "Empty in the final usage chunk"},
    )
    usage = fields.Nested(
        UsageSchema,
        metadata={
            "description": "Only in the last chunk, when `stream_options.include_usage` is true"
        },
    )
