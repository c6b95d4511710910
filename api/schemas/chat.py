"""Chat request and response schemas (OpenAI's chat completions shape)."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from core.errors import ApiError
from core.store import setting

# A refused body names at most this many fields; the rest are counted, not listed.
MAX_FIELD_ERRORS = 20

NO_CONTROL = validate.Regexp(r"\A[^\x00-\x1f\x7f]*\Z", error="Control characters are not allowed.")


class StopField(fields.Field[list[str]]):
    """``stop``: a string or a list of up to 4 strings, as OpenAI accepts."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise ValidationError("Must be a non-empty string or a list of non-empty strings.")
        if len(items) > 4:
            raise ValidationError("At most 4 stop sequences.")
        return items


class MessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    role = fields.String(required=True, validate=validate.OneOf(["system", "user", "assistant"]))
    content = fields.String(
        required=True,
        error_messages={
            "invalid": "Must be a string (content parts and images are not supported)."
        },
    )
    name = fields.String(validate=[validate.Length(max=64), NO_CONTROL])


class StreamOptionsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    include_usage = fields.Boolean(load_default=False)


class ChatRequestSchema(Schema):
    """A chat completion request; unknown fields are ignored, as OpenAI does."""

    class Meta:
        unknown = EXCLUDE

    model = fields.String(required=True, validate=[validate.Length(min=1, max=200), NO_CONTROL])
    messages = fields.List(
        fields.Nested(MessageSchema),
        required=True,
        validate=validate.Length(min=1, error="At least one message is required."),
    )
    max_tokens = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))
    max_completion_tokens = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=1)
    )
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1))
    stop = StopField(allow_none=True)
    stream = fields.Boolean(load_default=False)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    user = fields.String(validate=[validate.Length(max=256), NO_CONTROL])

    @pre_load
    def _count_messages_first(self, data: Any, **_: Any) -> Any:
        # Before any message is validated: 32,000 bad messages must cost one len(), not seconds
        # of validation and a megabytes-long list of errors.
        limit = setting("MAX_MESSAGES")
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            if len(data["messages"]) > limit:
                raise ApiError(
                    400,
                    f"Too many messages: at most {limit}.",
                    param="messages",
                    code="too_many_messages",
                    errors={"messages": ["Too many messages."]},
                )
        return data

    @validates_schema
    def _one_limit(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("max_tokens") and data.get("max_completion_tokens"):
            raise ValidationError(
                "Give max_tokens or max_completion_tokens, not both.", "max_tokens"
            )

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        """Name each bad field by its path (``messages[2].role``), as a client would write it."""
        if not isinstance(data, dict):
            kind = _JSON_KINDS.get(type(data), "something else")
            raise ValidationError({"body": [f"The body must be a JSON object, not {kind}."]})
        flat = flatten_errors(error.normalized_messages())  # type: ignore[no-untyped-call]
        if len(flat) > MAX_FIELD_ERRORS:
            more = len(flat) - MAX_FIELD_ERRORS
            flat = dict(list(flat.items())[:MAX_FIELD_ERRORS])
            flat["_more"] = [f"{more} more invalid fields not listed."]
        raise ValidationError(flat)


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def flatten_errors(messages: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """``{"messages": {0: {"role": [...]}}}`` -> ``{"messages[0].role": [...]}``."""
    flat: dict[str, Any] = {}
    for key, value in messages.items():
        if key == "_schema":
            path = prefix or "_schema"
            value = ["Must be an object."] if value == ["Invalid input type."] else value
        elif isinstance(key, int):
            path = f"{prefix}[{key}]"
        else:
            path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_errors(value, path))
        else:
            flat[path] = value
    return flat


class UsageSchema(Schema):
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class ChatMessageOutSchema(Schema):
    role = fields.String()
    content = fields.String()


class ChoiceSchema(Schema):
    index = fields.Integer()
    message = fields.Nested(ChatMessageOutSchema)
    finish_reason = fields.String(allow_none=True)


class ChatCompletionSchema(Schema):
    """A ``chat.completion`` (``stream: false``)."""

    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    model = fields.String()
    choices = fields.List(fields.Nested(ChoiceSchema))
    usage = fields.Nested(UsageSchema)


class ModelSchema(Schema):
    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    owned_by = fields.String()


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))
