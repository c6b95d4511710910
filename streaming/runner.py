"""One generation: upstream chunks -> sink events, with cancellation, leases and a record.

The same runner serves both modes; the upstream call and the sink differ:
- direct mode: the raw pass-through (``Provider.passthrough``) into a ``QueueSink`` that the HTTP
  response drains (the response is the generation): each chunk arrives as a ready frame;
- channel mode: ``ChatOpenAI`` (``Provider.stream``) into a ``LogSink`` that coalesces tokens into
  the stream's Redis log via the hub, with tool-call and reasoning events beside them.

Every resource a run takes (the upstream response, the concurrency lease and token reservation,
its place in the live registry) is released in one ``finally``. A run is stopped by
``RunHandle.stop``: under gevent the runner greenlet is interrupted where it waits (so the upstream
request closes at once); otherwise the runner notices before its next chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx
import openai
import redis
from flask import Flask

from core.store import use_runs_pool
from streaming import failover, greenlets, state, webhooks
from streaming.generation import Generation, Outcome, completion_id
from streaming.limits import admission_control, prompts
from streaming.log import with_redis_retry
from streaming.metrics import BatchedObserver
from streaming.providers import Chunk
from streaming.upstreams import NoUpstream

log = logging.getLogger("streamgate.runner")


class StopRun(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a runner greenlet to stop it (cancel, revoke, client gone, max duration)."""


class Sink(Protocol):
    def started(self) -> None: ...
    def accepted(self) -> None: ...
    def token(self, text: str, index: int) -> None: ...
    def frame(self, data: bytes) -> None: ...
    def tool_calls(self, calls: list[dict[str, Any]]) -> None: ...
    def reasoning(self, text: str) -> None: ...
    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None: ...


# --- upstream failures --------------------------------------------------------------------------


def _failed(code: str, http_status: int, message: str) -> Outcome:
    """A failure the client is told about: its code, its HTTP status, its message."""
    return Outcome("failed", error_code=code, http_status=http_status, error_message=message)


def classify(exc: BaseException) -> Outcome:
    """Map a provider exception to what the client is told (OpenAI-style codes)."""
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return _failed("upstream_timeout", 504, "The model server did not answer in time.")
    if isinstance(exc, openai.APIConnectionError | httpx.ConnectError):
        return _failed("upstream_unavailable", 502, "The model server could not be reached.")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if 400 <= status < 500 and status not in (401, 403, 429):
            return _refused_by_upstream(status, exc)
        if status in (401, 403):
            log.error(
                "the model server refused Streamgate's own credentials (HTTP %s): check "
                "LLM_API_KEY and the key's access to the model",
                status,
            )
        code = "upstream_rate_limited" if status == 429 else "upstream_error"
        return _failed(
            code, 503 if status in (429, 503) else 502, f"The model server answered {status}."
        )
    if isinstance(exc, openai.APIError):
        return _failed(
            "upstream_error", 502, "The model server reported an error: " + str(exc.message)[:300]
        )
    if isinstance(exc, NoUpstream):
        return _failed("upstreams_busy" if exc.busy else "model_unavailable", 503, exc.message)
    if isinstance(exc, redis.RedisError):  # past REDIS_RETRY_S: not a passing pool wait
        return _failed(
            "redis_unavailable", 503, "Redis could not be reached; the generation was stopped."
        )
    if isinstance(exc, httpx.HTTPError):
        return _failed("upstream_disconnected", 502, "The model server dropped the connection.")
    return _failed("internal_error", 500, "The generation failed unexpectedly.")


def _refused_by_upstream(status: int, exc: openai.APIStatusError) -> Outcome:
    """The model server refused the request itself (a 4xx): its status and error object stand.

    The SDK hands over the ``error`` object (vLLM's older bare object too); a body that is not
    an object is wrapped in OpenAI's shape so a client's SDK can still read its message.
    """
    body = exc.body if isinstance(exc.body, dict) else None
    message = body.get("message") if body is not None else None
    if not isinstance(message, str) or not message:
        message = str(exc.body) if exc.body else exc.message
    if body is None:
        body = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    code = body.get("code")
    return Outcome(
        "failed",
        error_code=(code if isinstance(code, str) and code else "upstream_invalid_request")[:64],
        error_message=message,
        http_status=status,
        error_body=body,
    )


# --- the run handle and the per-process registry -------------------------------------------------


class RunHandle:
    """A running generation in this process: who it belongs to and how to stop it."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.stopped: Outcome | None = None
        self.finalizing = False
        self.started = time.monotonic()
        self.tokens = 0
        self._greenlet: Any = None

    def attach_current(self) -> None:
        """Remember the greenlet running this generation, if we run under gevent."""
        self._greenlet = greenlets.current()

    def stop(self, outcome: Outcome) -> None:
        """Stop the run with ``outcome`` (first stop wins)."""
        if self.stopped is not None:
            return
        self.stopped = outcome
        if self._greenlet is not None and not self.finalizing:
            greenlets.interrupt(self._greenlet, StopRun(outcome.status))

    def absorb_pending_stop(self) -> None:
        """Let a stop that was scheduled before finalizing land here, not mid-release.

        ``stop`` schedules the greenlet kill for the hub's next turn; a runner that noticed
        ``stopped`` first and went on to settle would otherwise get ``StopRun`` thrown into a
        release (a lease or token reservation left behind). The kill callback was queued before
        ours, so one trip through the hub delivers it.
        """
        if self._greenlet is None or self.stopped is None:
            return
        try:
            greenlets.yield_now()
        except StopRun:
            pass


class Registry:
    """The runs of this process, indexed for the control bus (stream, user, token)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[str, RunHandle] = {}

    def add(self, handle: RunHandle) -> None:
        with self._lock:
            self.runs[handle.gen.stream_id] = handle

    def remove(self, handle: RunHandle) -> None:
        with self._lock:
            if self.runs.get(handle.gen.stream_id) is handle:
                del self.runs[handle.gen.stream_id]

    def matching(self, predicate: Callable[[Generation], bool]) -> list[RunHandle]:
        with self._lock:
            return [h for h in self.runs.values() if predicate(h.gen)]

    def snapshot(self) -> list[RunHandle]:
        with self._lock:
            return list(self.runs.values())


def registry(app: Flask) -> Registry:
    reg = app.extensions.get("streamgate.runs")
    if reg is None:
        reg = app.extensions["streamgate.runs"] = Registry()
    return reg  # type: ignore[no-any-return]


# --- the run itself ------------------------------------------------------------------------------


def run_generation(app: Flask, handle: RunHandle, sink: Sink) -> Outcome:
    """Drive one generation to its end and release everything it held. Never raises."""
    gen = handle.gen
    metrics = app.extensions["streamgate.metrics"]
    handle.attach_current()
    registry(app).add(handle)
    metrics.active_streams.labels(gen.mode).inc()
    prompt_tokens = gen.prompt_estimate
    completion_tokens = 0
    reported_completion: int | None = None
    reported_prompt: int | None = None
    finish_reason: str | None = None
    outcome: Outcome | None = None
    upstream: Iterator[Chunk] | None = None
    accepted = False
    first_at: float | None = None
    last_at = time.monotonic()
    inter_token = BatchedObserver(metrics.inter_token.labels(gen.mode))  # every token
    with app.app_context():
        use_runs_pool()
        try:
            sink.started()
            if gen.mode == "direct":
                usage = bool((gen.request.get("stream_options") or {}).get("include_usage"))
                chunk_id, estimate = completion_id(gen.stream_id), prompt_tokens
                upstream = failover.open_stream(
                    app,
                    gen,
                    lambda p, req: p.passthrough(req, chunk_id, gen.model, usage, estimate),
                )
            else:
                upstream = failover.open_stream(app, gen, lambda p, req: p.stream(req))
            index = 0
            for chunk in upstream:
                if handle.stopped is not None:
                    break
                if not accepted:
                    accepted = True
                    sink.accepted()
                if chunk.tokens:
                    now = time.monotonic()
                    if first_at is None:
                        first_at = now
                        metrics.ttft.labels(gen.mode).observe(now - handle.started)
                    else:
                        inter_token.observe(now - last_at, now)
                    last_at = now
                    completion_tokens += chunk.tokens
                    handle.tokens = completion_tokens
                if chunk.frame is not None:  # direct mode: the upstream's chunk, passed on
                    sink.frame(chunk.frame)
                else:
                    if chunk.reasoning:
                        sink.reasoning(chunk.reasoning)
                    if chunk.text:
                        sink.token(chunk.text, index)
                        index += 1
                    if chunk.tool_calls:
                        sink.tool_calls(chunk.tool_calls)
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                if chunk.prompt_tokens is not None:
                    reported_prompt = chunk.prompt_tokens
                if chunk.completion_tokens is not None:
                    reported_completion = chunk.completion_tokens
            if handle.stopped is None:
                outcome = Outcome("completed", finish_reason=finish_reason or "stop")
        except StopRun:
            pass
        except Exception as exc:  # noqa: BLE001 - every upstream failure becomes an outcome
            outcome = classify(exc)
            if accepted:
                outcome.http_status = None  # the upstream answered 200: the failure is in-band
                if outcome.error_code == "upstream_unavailable":  # it was reached, then went away
                    outcome.error_code = "upstream_disconnected"
                    outcome.error_message = "The model server dropped the connection."
            metrics.upstream_errors.labels(outcome.error_code or "unknown").inc()
            log.warning(
                "generation %s failed: %s: %s",
                gen.stream_id,
                type(exc).__name__,
                exc,
                extra={"stream_id": gen.stream_id},
            )
        finally:
            inter_token.flush()
            handle.finalizing = True
            handle.absorb_pending_stop()
            if upstream is not None:
                close = getattr(upstream, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        log.debug("closing upstream failed", exc_info=True)
            if outcome is None:
                outcome = handle.stopped or Outcome("cancelled", reason="stopped")
            if reported_completion is not None:
                completion_tokens = reported_completion
            if reported_prompt is not None:
                prompt_tokens = reported_prompt
                if outcome.status == "completed":
                    prompts.learn(gen.model, gen.prompt_estimate, reported_prompt)
            elif accepted or handle.stopped is not None:
                # The model server had the prompt (it answered, or the run was stopped while it
                # worked) but never said its size: charge what a completed run would have been.
                prompt_tokens = prompts.charge(gen.model, gen.prompt_estimate)
            settle(app, gen, outcome, prompt_tokens, completion_tokens, sink)
            registry(app).remove(handle)
            metrics.active_streams.labels(gen.mode).dec()
    return outcome


def settle(
    app: Flask,
    gen: Generation,
    outcome: Outcome,
    prompt_tokens: int,
    completion_tokens: int,
    sink: Sink,
) -> None:
    """The one place a run's resources are released, whoever ends it (its runner or the reaper).

    The admission (lease, token reservation) is settled to the actual usage, the live state marks
    the end, the sink gets the terminal event, the record is completed and the run counted.
    """
    metrics = app.extensions["streamgate.metrics"]
    admission = admission_control(app)
    # The sink goes last: once a client sees the end, its lease and live entry are already gone,
    # so a follow-up request is not refused as one stream too many.
    steps: list[tuple[str, Callable[[], None]]] = [
        (
            "admission",
            lambda: (
                admission.release(gen.admission, prompt_tokens, completion_tokens)
                if gen.admission is not None
                else None
            ),
        ),
        ("live-state", lambda: state.mark_finished(gen, outcome, prompt_tokens, completion_tokens)),
        ("sink", lambda: sink.finished(outcome, prompt_tokens, completion_tokens)),
    ]
    retry_s = app.config["REDIS_RETRY_S"]
    for name, step in steps:
        try:
            with_redis_retry(step, retry_s)  # a Redis restart must not leave the run half-settled
        except Exception:  # noqa: BLE001 - one failed release must not skip the others
            log.exception(
                "releasing %s of %s failed", name, gen.stream_id, extra={"stream_id": gen.stream_id}
            )
    text_of = getattr(sink, "text", None)
    calls_of = getattr(sink, "assembled_tool_calls", None)
    state.write_record(
        app,
        gen,
        outcome,
        prompt_tokens,
        completion_tokens,
        text_of() if text_of else None,
        calls_of() if calls_of else None,
    )
    metrics.streams_total.labels(gen.mode, outcome.status).inc()
    metrics.tokens_out.labels(gen.mode).inc(completion_tokens)
    webhooks.enqueue(app, gen, outcome, prompt_tokens, completion_tokens)  # in the background


# --- direct mode: the response drains a queue -----------------------------------------------------

_DONE = object()
ACCEPTED = object()


class QueueSink:
    """Hands a run's events to the HTTP response that waits on it (direct mode)."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()

    def started(self) -> None:
        return None

    def accepted(self) -> None:
        self.events.put(ACCEPTED)

    def wait_accepted(self, timeout: float) -> Outcome | None:
        """Block until the upstream answered (None) or the run ended first (its outcome).

        After ``timeout`` with no answer, return None too: the response starts and keeps the
        connection alive with comments; a later failure then travels in-band.
        """
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is ACCEPTED:
            return None
        if isinstance(item, tuple) and item and item[0] is _DONE:
            self.events.put(item)  # leave the end for drain()
            outcome: Outcome = item[1]
            return outcome
        self.events.put(item)  # pragma: no cover - tokens always follow ACCEPTED
        return None

    def frame(self, data: bytes) -> None:
        self.events.put(data)

    def token(self, text: str, index: int) -> None:
        return None  # direct mode gets whole frames (``frame``)

    def tool_calls(self, calls: list[dict[str, Any]]) -> None:
        return None

    def reasoning(self, text: str) -> None:
        return None

    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None:
        self.events.put((_DONE, outcome, prompt_tokens, completion_tokens))

    def drain(self, heartbeat_s: float) -> Iterator[bytes | None | tuple[Outcome, int, int]]:
        """Yield frames, ``None`` when ``heartbeat_s`` passes with nothing, then the end."""
        while True:
            try:
                item = self.events.get_nowait()  # no timer to arm when the next one is there
            except queue.Empty:
                try:
                    item = self.events.get(timeout=heartbeat_s)
                except queue.Empty:
                    yield None
                    continue
            if item is ACCEPTED:
                continue
            if isinstance(item, tuple) and item and item[0] is _DONE:
                yield item[1:]
                return
            yield item

    def drain_batches(
        self, heartbeat_s: float, limit: int = 64
    ) -> Iterator[list[bytes] | None | tuple[Outcome, int, int]]:
        """Like ``drain``, but a wake-up takes every frame already queued (up to ``limit``).

        Under load a response writes the frames that piled up while it waited in one go: one
        write and one switch instead of one per token.
        """
        end: tuple[Outcome, int, int] | None = None
        for item in self.drain(heartbeat_s):
            if not isinstance(item, bytes):
                yield item
                continue
            batch = [item]
            while len(batch) < limit:
                try:
                    more = self.events.get_nowait()
                except queue.Empty:
                    break
                if more is ACCEPTED:
                    continue
                if isinstance(more, tuple) and more and more[0] is _DONE:
                    end = more[1:]
                    break
                batch.append(more)
            yield batch
            if end is not None:
                yield end
                return
