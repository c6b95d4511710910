"""Chat request and response schemas (OpenAI's chat completions shape)."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
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
# OpenAI's `user`: the caller's own end user. It is recorded on the stream and is a limits key
# under the principal (streaming.limits.keys), so it is bounded and plain: ids, emails, hashes.
END_USER_MAX = 128
END_USER_CHARS = "letters, digits and . _ ~ @ : + = / | -"


class _EndUserId(validate.Regexp):
    """The plain character set, saying so first when the problem is a control character."""

    def __call__(self, value: Any) -> Any:
        NO_CONTROL(value)
        return super().__call__(value)


END_USER = _EndUserId(
    r"\A[A-Za-z0-9._~@:+=/|-]*\Z", error=f"Use only {END_USER_CHARS} (no spaces)."
)


class StopField(fields.Field[Any]):
    """``stop``: a string or a list of up to 4 strings, as OpenAI accepts (forwarded as given)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
            raise ValidationError("Must be a non-empty string or a list of non-empty strings.")
        if len(items) > 4:
            raise ValidationError("At most 4 stop sequences.")
        return value


# The content part types Streamgate reads (to bound their size); others are forwarded unread.
_PART_FIELDS = {
    "text": ("text",),
    "refusal": ("refusal",),
    "image_url": ("image_url", "url"),
    "input_audio": ("input_audio", "data"),
    "file": ("file",),
}


class ContentField(fields.Field[Any]):
    """``content``: a string, an array of content parts, or null (forwarded as given).

    A part is an object with a string ``type``; the fields Streamgate reads to count a part's
    size (``text``, ``image_url.url``, ``input_audio.data``, ``file``) must have their types.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError("Must be a string, an array of content parts or null.")
        errors: dict[int, list[str]] = {}
        for i, part in enumerate(value):
            problem = _part_problem(part)
            if problem:
                errors[i] = [problem]
        if errors:
            raise ValidationError(errors)  # type: ignore[arg-type]
        return value


def _part_problem(part: Any) -> str | None:
    if not isinstance(part, dict):
        return "Must be an object."
    kind = part.get("type")
    if not isinstance(kind, str) or not kind:
        return "A content part needs a string 'type'."
    path = _PART_FIELDS.get(kind)
    if path is None:
        return None
    value: Any = part
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return f"A '{kind}' part needs '{'.'.join(path)}'."
        value = value[key]
    if kind == "file":
        return None if isinstance(value, dict) else "'file' must be an object."
    if not isinstance(value, str):
        return f"'{'.'.join(path)}' must be a string."
    return None


class PassThroughSchema(Schema):
    """Base of the OpenAI objects: keys Streamgate does not know are kept, not refused."""

    class Meta:
        unknown = INCLUDE


class FunctionCallSchema(PassThroughSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    arguments = fields.String(required=True)


class ToolCallSchema(PassThroughSchema):
    """An assistant message's ``tool_calls`` entry (as the model produced it)."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    type = fields.String(load_default="function")
    function = fields.Nested(FunctionCallSchema, required=True)


ROLES = ["system", "developer", "user", "assistant", "tool"]


class MessageSchema(Schema):
    """A message in any shape OpenAI accepts; fields Streamgate does not read are forwarded."""

    class Meta:
        unknown = INCLUDE
        description = (
            "A message of any OpenAI shape: `system`, `developer`, `user`, `assistant` (with "
            "`tool_calls`, `content: null`, `refusal`), `tool` (with `tool_call_id`). `content` "
            "is a string or an array of parts (`text`, `image_url`, `input_audio`, `file`); "
            "parts, base64 images included, count against `MAX_PROMPT_CHARS`. Other fields are "
            "forwarded to the model server."
        )

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = ContentField(allow_none=True)
    name = fields.String(validate=[validate.Length(max=64), NO_CONTROL])
    tool_calls = fields.List(fields.Nested(ToolCallSchema))
    tool_call_id = fields.String(validate=[validate.Length(min=1, max=256), NO_CONTROL])
    refusal = fields.String(allow_none=True)

    @validates_schema
    def _shape_of_role(self, data: dict[str, Any], **_: Any) -> None:
        role = data.get("role")
        if role == "assistant":
            if data.get("content") is None and not data.get("tool_calls"):
                if not data.get("refusal") and not data.get("function_call"):
                    raise ValidationError(
                        "An assistant message needs content or tool_calls.", "content"
                    )
            return
        if data.get("content") is None:
            raise ValidationError(
                "Missing data for required field." if "content" not in data else "May not be null.",
                "content",
            )
        if data.get("tool_calls") is not None:
            raise ValidationError("Only an assistant message has tool_calls.", "tool_calls")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError(
                "A tool message needs the tool_call_id it answers.", "tool_call_id"
            )


class StreamOptionsSchema(PassThroughSchema):
    include_usage = fields.Boolean(load_default=False)


class ChatRequestSchema(Schema):
    """A chat completion request: what Streamgate enforces is checked, the rest forwarded.

    Other fields (``tools``, ``tool_choice``, ``response_format``, ``seed``, penalties,
    ``logit_bias``, ``logprobs``, ``metadata``, a model server's own extras such as vLLM's
    ``top_k`` or ``guided_json``) are forwarded to the model server unchanged.
    """

    class Meta:
        unknown = INCLUDE
        description = (
            "OpenAI's chat completion request. Streamgate checks the fields listed here (the "
            "model allow-list, the `max_tokens` cap, the number and size of messages, the types "
            "of the fields it reads); other fields are forwarded to the model server unchanged "
            "(`tools`, `tool_choice`, `response_format`, `seed`, penalties, `logit_bias`, "
            "`top_logprobs`, `metadata`, a server's own extras such as vLLM's `top_k`). "
            "`POST /v1/streams` refuses `n` > 1 and `logprobs` with a 400 naming them."
        )

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
    n = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1, max=128))
    stop = StopField(allow_none=True)
    stream = fields.Boolean(load_default=False)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    tools = fields.List(fields.Dict(), allow_none=True)
    logprobs = fields.Boolean(allow_none=True)
    user = fields.String(
        validate=[validate.Length(max=END_USER_MAX), END_USER],
        metadata={
            "description": f"Your own end user (opaque; at most {END_USER_MAX} of "
            f"{END_USER_CHARS}): recorded on the stream, reported by `group_by=end_user`, and "
            "limited separately when the app token has `end_user_limits`; forwarded to the model"
        },
    )

    @pre_load
    def _count_messages_first(self, data: Any, **_: Any) -> Any:
        # Before any message is validated: 32,000 bad messages must cost one len(), not seconds
        # of validation and a megabytes-long list of errors.
        limit = setting("MAX_MESSAGES")
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            if len(data["messages"]) > limit:
                raise ApiError.for_param(
                    400,
                    f"Too many messages: at most {limit}.",
                    "messages",
                    "too_many_messages",
                    "Too many messages.",
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


class TokenCountsSchema(Schema):
    """Prompt, completion and total tokens: OpenAI's ``usage`` and the usage report's totals."""

    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class UsageSchema(PassThroughSchema, TokenCountsSchema):
    """A response's ``usage``, with whatever details the model server adds."""


class ChatMessageOutSchema(PassThroughSchema):
    role = fields.String()
    content = fields.String(allow_none=True)
    tool_calls = fields.List(fields.Nested(ToolCallSchema))
    refusal = fields.String(allow_none=True)
    reasoning_content = fields.String(
        allow_none=True, metadata={"description": "Reasoning text (vLLM, DeepSeek and others)"}
    )


class ChoiceSchema(PassThroughSchema):
    index = fields.Integer()
    message = fields.Nested(ChatMessageOutSchema)
    finish_reason = fields.String(allow_none=True)
    logprobs = fields.Dict(allow_none=True)


class ChatCompletionSchema(PassThroughSchema):
    """A ``chat.completion`` (``stream: false``): the model server's, our ``id`` and ``model``."""

    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    model = fields.String()
    system_fingerprint = fields.String(allow_none=True)
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
