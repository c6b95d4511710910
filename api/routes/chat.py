"""Direct mode: ``POST /v1/chat/completions``, OpenAI-compatible, the response is the generation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, stream_with_context
from flask_smorest import Blueprint

from api.generations import start_generation
from api.schemas.chat import ChatCompletionSchema, ChatRequestSchema
from auth.access import current_identity, require
from auth.errors import ApiError
from auth.store import db
from streaming import sse
from streaming.control import services
from streaming.runner import Outcome, QueueSink, RunHandle, run_generation, spawn, stopped_outcome

bp = Blueprint("chat", __name__, url_prefix="/v1", description="OpenAI-compatible chat completions")

@bp.post("/chat/completions")
@require("chat")
@bp.arguments(ChatRequestSchema)
@bp.response(200, ChatCompletionSchema)
def create_chat_completion(body: dict[str, Any]) -> Any:
    """Generate a chat completion; with `stream: true`, stream it as Server-Sent Events."""
    ident = current_identity()
    gen, admission = start_generation(ident, body, mode="direct")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    handle, sink = RunHandle(gen), QueueSink()
    db.session.remove()  # nothing below needs the request's database session
    services(app)  # this worker's control listener and keeper: the run must be revocable
    spawn(run_generation, app, handle, sink)
    headers = {"X-Stream-Id": gen.stream_id, **admission.headers}
    heartbeat = app.config["SSE_HEARTBEAT_S"]
    early = sink.wait_accepted(heartbeat)
    if early is not None and early.http_status is not None:
        raise ApiError(early.http_status, early.error_message or "Upstream failure",
                       code=early.error_code, headers=headers)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if not body["stream"]:
        return _completion(gen.stream_id, gen.model, sink, heartbeat), 200, headers
    chunks = _Chunks(gen.stream_id, gen.model)
    response = Response(
        stream_with_context(_stream(chunks, handle, sink, heartbeat, include_usage)),
        headers={**sse.HEADERS, **headers},
    )
    return response


class _Chunks:
    """Pre-rendered pieces of ``chat.completion.chunk`` frames: one string join per token."""

    def __init__(self, stream_id: str, model: str) -> None:
        self.id = "chatcmpl-" + stream_id.removeprefix("str_")
        self.created = int(time.time())
        self.model = model
        head = json.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": model}, ensure_ascii=False, separators=(",", ":"))[:-1]
        self._token_prefix = "data: " + head + ',"choices":[{"index":0,"delta":{"content":'
        self._token_suffix = '},"finish_reason":null}]}\n\n'

    def token(self, text: str) -> bytes:
        return (self._token_prefix + json.dumps(text, ensure_ascii=False) + self._token_suffix).encode()

    def event(self, **fields: Any) -> bytes:
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model, **fields}
        return sse.json_frame(payload)

    def role(self) -> bytes:
        return self.event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}])


def _in_band_error(outcome: Outcome) -> bytes:
    return sse.json_frame({"error": {
        "message": outcome.error_message or "The stream ended abnormally.",
        "type": "server_error" if outcome.status == "failed" else "stream_" + outcome.status,
        "param": None,
        "code": outcome.error_code or outcome.status,
    }})


def _stream(chunks: _Chunks, handle: RunHandle, sink: QueueSink, heartbeat: float, include_usage: bool) -> Iterator[bytes]:
    finished = False
    try:
        yield sse.comment("stream " + handle.gen.stream_id)  # flush headers at once
        yield chunks.role()
        for item in sink.drain(heartbeat):
            if item is None:
                yield sse.comment("keep-alive")
            elif isinstance(item, str):
                yield chunks.token(item)
            else:
                outcome, prompt_tokens, completion_tokens = item
                finished = True
                if outcome.status != "completed":
                    yield _in_band_error(outcome)
                    return
                yield chunks.event(choices=[{"index": 0, "delta": {}, "finish_reason": outcome.finish_reason}])
                if include_usage:
                    yield chunks.event(choices=[], usage={
                        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens})
                yield b"data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop the generation and close the upstream
            handle.stop(stopped_outcome("cancelled", reason="client_disconnected"))


def _completion(stream_id: str, model: str, sink: QueueSink, heartbeat: float) -> dict[str, Any]:
    parts: list[str] = []
    for item in sink.drain(heartbeat):
        if isinstance(item, str):
            parts.append(item)
        elif item is not None:
            outcome, prompt_tokens, completion_tokens = item
            if outcome.status != "completed":
                raise ApiError(outcome.http_status or 502, outcome.error_message or "Generation failed",
                               code=outcome.error_code)
            return {
                "id": "chatcmpl-" + stream_id.removeprefix("str_"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "finish_reason": outcome.finish_reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }
    raise ApiError(502, "The generation ended without a result.")  # pragma: no cover
