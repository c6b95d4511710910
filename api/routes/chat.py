"""Direct mode: ``POST /v1/chat/completions``, OpenAI-compatible, the response is the generation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, request, stream_with_context
from flask_smorest import Blueprint

from api.idempotency import idempotent
from api.schemas.chat import ChatCompletionSchema, ChatRequestSchema
from api.services.generations import start_generation
from auth.access import current_identity, require
from core.errors import ApiError
from core.store import db
from streaming import sse
from streaming.generation import Outcome, stopped_outcome
from streaming.greenlets import spawn, watch_eof
from streaming.runner import QueueSink, RunHandle, run_generation

bp = Blueprint("chat", __name__, url_prefix="/v1", description="OpenAI-compatible chat completions")


@bp.post("/chat/completions")
@require("chat")
@idempotent(refuse_streaming=True)
@bp.arguments(ChatRequestSchema)
@bp.response(200, ChatCompletionSchema)
def create_chat_completion(body: dict[str, Any]) -> Any:
    """Generate a chat completion; with `stream: true`, stream it as Server-Sent Events."""
    ident = current_identity()
    gen, limit_headers = start_generation(ident, body, mode="direct")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    handle, sink = RunHandle(gen), QueueSink()
    db.session.remove()  # nothing below needs the request's database session
    spawn(run_generation, app, handle, sink)
    unwatch = _watch_client(request.environ, handle, app.config["SSE_SEND_TIMEOUT_S"])
    headers = {"X-Stream-Id": gen.stream_id, **limit_headers}
    heartbeat = app.config["SSE_HEARTBEAT_S"]
    try:
        # Up to one heartbeat for the upstream to answer, so that a refusal or an HTTP error
        # before the first token can still be a 5xx; after that the 200 goes out and any
        # failure travels in-band.
        early = sink.wait_accepted(heartbeat)
        if early is not None and early.http_status is not None:
            raise _failure(early, headers)
        if not body["stream"]:
            completion = _completion(gen.stream_id, gen.model, sink, heartbeat, headers)
            # The watcher must let go of the socket before gunicorn reads the next request of
            # this keep-alive connection from it (two waiters on one socket: a 500).
            unwatch()
            return completion, 200, headers
    except BaseException:
        unwatch()
        raise
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = _Chunks(gen.stream_id, gen.model)
    return Response(
        stream_with_context(_stream(chunks, handle, sink, heartbeat, include_usage, unwatch)),
        headers={**sse.HEADERS, **headers},
    )


def _watch_client(
    environ: dict[str, Any],
    handle: RunHandle,
    send_timeout_s: float,
) -> Callable[[], None]:
    """Stop the run as soon as the client closes its connection; returns the watch's stopper.

    Under gunicorn's gevent worker a greenlet blocks on the client socket (a ``MSG_PEEK`` read
    that consumes nothing): EOF means the client left, even while no byte is being written
    (slow first token, ``stream: false``), so the upstream request closes at once instead of at
    the next failed write. Elsewhere (tests in-process) the failed write alone notices.
    """
    return watch_eof(
        environ.get("gunicorn.socket"),
        lambda: handle.stopped is None,
        lambda: handle.stop(stopped_outcome("cancelled", reason="client_disconnected")),
        send_timeout_s,
    )


def _failure(outcome: Outcome, headers: dict[str, str]) -> ApiError:
    """The error answered when a generation ends badly before any byte of the response."""
    if outcome.status == "revoked":
        return ApiError(
            403,
            outcome.error_message or "The stream was revoked.",
            code="stream_revoked",
            headers=headers,
        )
    if outcome.status == "cancelled":
        return ApiError(
            409,
            "The generation was cancelled before it finished.",
            code="stream_cancelled",
            headers=headers,
        )
    return ApiError(
        outcome.http_status or 502,
        outcome.error_message or "The generation failed.",
        code=outcome.error_code or "upstream_error",
        headers=headers,
    )


_TEXT = "\x00text"  # where a token's text goes in its pre-rendered chunk


class _Chunks:
    """``chat.completion.chunk`` frames; a token's is pre-rendered: one string join per token."""

    def __init__(self, stream_id: str, model: str) -> None:
        self.id = "chatcmpl-" + stream_id.removeprefix("str_")
        self.created = int(time.time())
        self.model = model
        # An attribute, not a method: the per-token path is one call.
        self.token: Callable[[str], bytes] = sse.json_frame_template(
            self._payload(
                choices=[{"index": 0, "delta": {"content": _TEXT}, "finish_reason": None}]
            ),
            _TEXT,
        )

    def _payload(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **fields,
        }

    def event(self, **fields: Any) -> bytes:
        return sse.json_frame(self._payload(**fields))

    def role(self) -> bytes:
        return self.event(
            choices=[
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ]
        )


def _in_band_error(outcome: Outcome) -> bytes:
    return sse.json_frame(
        {
            "error": {
                "message": outcome.error_message or "The stream ended abnormally.",
                "type": "server_error"
                if outcome.status == "failed"
                else "stream_" + outcome.status,
                "param": None,
                "code": outcome.error_code or outcome.status,
            }
        }
    )


def _stream(
    chunks: _Chunks,
    handle: RunHandle,
    sink: QueueSink,
    heartbeat: float,
    include_usage: bool,
    unwatch: Callable[[], None],
) -> Iterator[bytes]:
    finished = False
    try:
        yield sse.comment("stream " + handle.gen.stream_id)  # flush headers at once
        yield chunks.role()
        for item in sink.drain_batches(heartbeat):
            if item is None:
                yield sse.comment("keep-alive")
            elif isinstance(item, list):
                yield b"".join(chunks.token(text) for text in item)
            else:
                outcome, prompt_tokens, completion_tokens = item
                finished = True
                if outcome.status != "completed":
                    yield _in_band_error(outcome)
                    return
                yield chunks.event(
                    choices=[{"index": 0, "delta": {}, "finish_reason": outcome.finish_reason}]
                )
                if include_usage:
                    yield chunks.event(
                        choices=[],
                        usage={
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        },
                    )
                yield sse.done()
    finally:
        unwatch()
        if not finished:  # the client went away: stop the generation and close the upstream
            handle.stop(stopped_outcome("cancelled", reason="client_disconnected"))


def _completion(
    stream_id: str,
    model: str,
    sink: QueueSink,
    heartbeat: float,
    headers: dict[str, str],
) -> dict[str, Any]:
    parts: list[str] = []
    for item in sink.drain(heartbeat):
        if isinstance(item, str):
            parts.append(item)
        elif item is not None:
            outcome, prompt_tokens, completion_tokens = item
            if outcome.status != "completed":
                raise _failure(outcome, headers)
            return {
                "id": "chatcmpl-" + stream_id.removeprefix("str_"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": outcome.finish_reason,
                        "message": {"role": "assistant", "content": "".join(parts)},
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
    raise ApiError(502, "The generation ended without a result.")  # pragma: no cover
