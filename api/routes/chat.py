"""Direct mode: ``POST /v1/chat/completions``, OpenAI-compatible, the response is the generation."""

from __future__ import annotations

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
from streaming.channel import DirectSink
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
    handle, sink = RunHandle(gen), DirectSink(app, gen)
    db.session.remove()  # nothing below needs the request's database session
    spawn(run_generation, app, handle, sink)
    unwatch = _watch_client(request.environ, handle, app.config["SSE_SEND_TIMEOUT_S"])
    headers = {"X-Stream-Id": gen.stream_id, **limit_headers}
    heartbeat = app.config["SSE_HEARTBEAT_S"]
    try:
        # Up to one heartbeat for the upstream to answer, so that a refusal or an HTTP error
        # before the first chunk keeps its status (the model server's 4xx, our 5xx); after
        # that the 200 goes out and any failure travels in-band.
        early = sink.wait_accepted(heartbeat)
        if early is not None and early.http_status is not None:
            raise _failure(early, headers)
        if not body["stream"]:
            completion = _completion(sink, heartbeat, headers)
            # The watcher must let go of the socket before gunicorn reads the next request of
            # this keep-alive connection from it (two waiters on one socket: a 500).
            unwatch()
            return Response(completion, 200, headers=headers, mimetype="application/json")
    except BaseException:
        unwatch()
        raise
    return Response(
        stream_with_context(_stream(handle, sink, heartbeat, unwatch)),
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


# Refusals that pass by themselves: every server for the model busy, the model server throttling.
RETRY_SOON = frozenset({"upstreams_busy", "upstream_rate_limited"})


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
    if outcome.error_code in RETRY_SOON:
        headers = {**headers, "Retry-After": "1"}  # OpenAI's SDKs wait that long and retry
    return ApiError(
        outcome.http_status or 502,
        outcome.error_message or "The generation failed.",
        code=outcome.error_code or "upstream_error",
        headers=headers,
        openai_error=outcome.error_body,  # the model server's own refusal (a 4xx), kept whole
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
    handle: RunHandle,
    sink: QueueSink,
    heartbeat: float,
    unwatch: Callable[[], None],
) -> Iterator[bytes]:
    """The upstream's chunks as they come (already framed), then ``[DONE]`` or the error."""
    finished = False
    try:
        yield sse.comment("stream " + handle.gen.stream_id)  # flush headers at once
        for item in sink.drain_batches(heartbeat):
            if item is None:
                yield sse.comment("keep-alive")
            elif isinstance(item, list):
                yield item[0] if len(item) == 1 else b"".join(item)
            else:
                outcome = item[0]
                finished = True
                if outcome.status != "completed":
                    yield _in_band_error(outcome)
                    return
                yield sse.done()
    finally:
        unwatch()
        if not finished:  # the client went away: stop the generation and close the upstream
            handle.stop(stopped_outcome("cancelled", reason="client_disconnected"))


def _completion(sink: QueueSink, heartbeat: float, headers: dict[str, str]) -> bytes:
    """The upstream's ``chat.completion`` (our ``id`` and ``model``), once the run settled."""
    body = b""
    for item in sink.drain(heartbeat):
        if isinstance(item, bytes):
            body = item
        elif item is not None:
            outcome = item[0]
            if outcome.status != "completed":
                raise _failure(outcome, headers)
            return body
    raise ApiError(502, "The generation ended without a result.")  # pragma: no cover
