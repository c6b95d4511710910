"""What travels inside the event streams, as schemas for the spec.

The hub (``GET /v1/events``) sends named events whose JSON ``data`` repeats the name in ``type``
(``streaming.channel`` and ``streaming.hub`` write them); direct mode sends OpenAI's
``chat.completion.chunk`` objects, then ``data: [DONE]``.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from api.schemas.chat import PassThroughSchema, UsageSchema


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


class ToolCallDeltaFunctionSchema(PassThroughSchema):
    name = fields.String(metadata={"description": "In the call's first piece"})
    arguments = fields.String(metadata={"description": "JSON text: append it to the call's"})


class ToolCallDeltaSchema(PassThroughSchema):
    """A piece of a tool call, as OpenAI streams it in ``delta.tool_calls``."""

    index = fields.Integer(required=True, metadata={"description": "Which call this piece is of"})
    id = fields.String(metadata={"description": "In the call's first piece"})
    type = fields.String(metadata={"description": "`function`, in the call's first piece"})
    function = fields.Nested(ToolCallDeltaFunctionSchema)


class ToolCallEventSchema(Schema):
    """``tool_call``: pieces of the tool calls the model makes (OpenAI's delta list, as is).

    Put them together by ``index``: the first piece of a call has its ``id`` and function
    ``name``; append every piece's ``function.arguments``. ``GET /v1/streams/<id>`` shows them
    assembled.
    """

    type = _type("tool_call")
    tool_calls = fields.List(fields.Nested(ToolCallDeltaSchema), required=True)


class ReasoningEventSchema(Schema):
    """``reasoning``: the model's reasoning text (reasoning models), before or between tokens."""

    type = _type("reasoning")
    text = fields.String(required=True, metadata={"description": "Append this to the reasoning"})


class StreamCompletedEventSchema(_StreamEventSchema):
    """``stream.completed``: the model finished; the server then closes the connection."""

    type = _type("stream.completed")
    finish_reason = fields.String(
        allow_none=True,
        metadata={"description": "`stop`, `length`, `tool_calls` (run them, send the results)"},
    )
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
    """Lifecycle events on ``users/<id>`` and ``tenants/<id>``: one per start and end of each
    stream of the user (of the tenant: its admins' live feed)."""

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
    user_id = fields.String(required=True, metadata={"description": "Whose stream it is"})
    created = fields.Float(required=True, metadata={"description": "Start, Unix time, seconds"})
    by = fields.String(metadata={"description": "Revoked: id of the admin who revoked it"})
    reason = fields.String(metadata={"description": "Revoked or cancelled: why"})
    error_code = fields.String(metadata={"description": "Failed: the error's code"})


# Event name -> payload schema on a ``streams/<id>`` channel, in the order a stream sends them.
STREAM_EVENTS: dict[str, type[Schema]] = {
    "stream.started": StreamStartedEventSchema,
    "token": TokenEventSchema,
    "tool_call": ToolCallEventSchema,
    "reasoning": ReasoningEventSchema,
    "stream.completed": StreamCompletedEventSchema,
    "stream.failed": StreamFailedEventSchema,
    "stream.cancelled": StreamCancelledEventSchema,
    "stream.revoked": StreamRevokedEventSchema,
    "ping": PingEventSchema,
}


class ChunkDeltaSchema(PassThroughSchema):
    """What a chunk adds; the model server's other fields are passed on too."""

    role = fields.String(metadata={"description": "Only in the first chunk: `assistant`"})
    content = fields.String(allow_none=True, metadata={"description": "Text to append"})
    tool_calls = fields.List(fields.Nested(ToolCallDeltaSchema))
    reasoning_content = fields.String(
        allow_none=True, metadata={"description": "Reasoning text (vLLM, DeepSeek and others)"}
    )
    refusal = fields.String(allow_none=True)


class ChunkChoiceSchema(PassThroughSchema):
    index = fields.Integer(required=True, metadata={"description": "Which of the `n` choices"})
    delta = fields.Nested(ChunkDeltaSchema, required=True)
    finish_reason = fields.String(allow_none=True, required=True)
    logprobs = fields.Dict(allow_none=True, metadata={"description": "With `logprobs: true`"})


class ChatCompletionChunkSchema(PassThroughSchema):
    """One ``data:`` line of a direct-mode stream (``stream: true``): the model server's chunk.

    Passed on as the model server sent it, except ``id`` (the stream's) and ``model`` (the name
    the request used).
    """

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["chat.completion.chunk"]))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    system_fingerprint = fields.String(allow_none=True)
    choices = fields.List(
        fields.Nested(ChunkChoiceSchema),
        required=True,
        metadata={"description": "Empty in the final usage chunk"},
    )
    usage = fields.Dict(
        allow_none=True,
        metadata={
            "description": "Only in the last chunk, when `stream_options.include_usage` is "
            "true: `prompt_tokens`, `completion_tokens`, `total_tokens` and the model "
            "server's details"
        },
    )
