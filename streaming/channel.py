"""Channel mode: a run's events go to the stream's log through the hub's ``publish``.

Events on ``streams/<id>``: ``stream.started``, ``token`` (coalesced), and one terminal event
(``stream.completed`` / ``stream.failed`` / ``stream.cancelled`` / ``stream.revoked``).
Lifecycle events of every stream also go to ``users/<user id>`` so a second device can attach,
and to ``tenants/<tenant id>``, the admins' live feed (an operator's streams excepted); a
direct-mode stream's go to the tenant's channel only (``DirectSink``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask

from streaming import sse
from streaming.generation import (
    Generation,
    Outcome,
    stream_channel,
    tenant_channel,
    terminal_event,
    user_channel,
)
from streaming.greenlets import in_loop_later
from streaming.hub import hub
from streaming.log import event_log
from streaming.runner import QueueSink

log = logging.getLogger("streamgate.channel")


def _publish(channel: str, event: str, payload: dict[str, Any], ttl_s: int) -> str:
    return hub.publish({"type": event, **payload}, type=event, channel=channel, ttl_s=ttl_s)


def _lifecycle(
    app: Flask, gen: Generation, event: str, extra: dict[str, Any], *, user: bool = True
) -> None:
    """A stream's lifecycle event on its user's channel (``user``) and its tenant's admin
    channel (queued: nobody waits for it)."""
    payload = {
        "type": event,
        "stream_id": gen.stream_id,
        "channel": stream_channel(gen.stream_id),
        "events_url": "/v1/events?channel=" + stream_channel(gen.stream_id),
        "mode": gen.mode,
        "model": gen.model,
        "user_id": gen.user_id,
        "created": gen.created,
        **extra,
    }
    ttl = int(app.config["STREAM_LOG_TTL_S"])
    encoded = sse.dumps(payload)  # once for both channels
    if user:
        hub.publish_later(encoded, type=event, channel=user_channel(gen.user_id), ttl_s=ttl)
    if not gen.operator_owned:
        hub.publish_later(encoded, type=event, channel=tenant_channel(gen.tenant_id), ttl_s=ttl)


def publish_terminal(
    app: Flask, gen: Generation, outcome: Outcome, prompt_tokens: int, completion_tokens: int
) -> None:
    """Close the stream's log with its terminal event and tell the user's channel."""
    ttl = int(app.config["STREAM_LOG_TTL_S"])
    event, payload = terminal_event(outcome, prompt_tokens, completion_tokens)
    _publish(stream_channel(gen.stream_id), event, {"stream_id": gen.stream_id, **payload}, ttl)
    _announce_end(app, gen, outcome)


def _announce_end(app: Flask, gen: Generation, outcome: Outcome, *, user: bool = True) -> None:
    """A stream's terminal lifecycle event: how it ended (a revoke's by whom and why)."""
    event, _payload = terminal_event(outcome, 0, 0)
    ended: dict[str, str | None] = {"status": outcome.status}
    if outcome.status in ("revoked", "cancelled"):
        ended.update(by=outcome.revoked_by, reason=outcome.reason)
    elif outcome.status == "failed":
        ended["error_code"] = outcome.error_code
    extra = {k: v for k, v in ended.items() if v is not None}
    _lifecycle(app, gen, event, extra, user=user)


class DirectSink(QueueSink):
    """Direct mode's sink: the response's queue, and the stream's start and end on the tenant's
    admin channel, so an admin's live list hears of it (a direct stream belongs to its one
    connection: nothing goes to the user's channel, where other devices would try to attach)."""

    def __init__(self, app: Flask, gen: Generation) -> None:
        super().__init__()
        self.app = app
        self.gen = gen

    def started(self) -> None:
        _lifecycle(self.app, self.gen, "stream.started", {"status": "running"}, user=False)

    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None:
        super().finished(outcome, prompt_tokens, completion_tokens)
        try:  # the client has its end; an announcement that fails must not send it twice
            _announce_end(self.app, self.gen, outcome, user=False)
        except Exception:  # noqa: BLE001
            log.warning("could not announce the end of %s", self.gen.stream_id, exc_info=True)


def assemble_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Merge OpenAI ``delta.tool_calls`` pieces into whole calls, by their ``index``."""
    for delta in deltas:
        index = delta.get("index") or 0
        call = calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


class TerminalSink:
    """The sink of a run its worker lost: the reaper settles it, subscribers get the end."""

    def __init__(self, app: Flask, gen: Generation) -> None:
        self.app = app
        self.gen = gen

    def started(self) -> None:
        return None

    def accepted(self) -> None:
        return None

    def token(self, text: str, index: int) -> None:
        return None

    def frame(self, data: bytes) -> None:
        return None

    def tool_calls(self, calls: list[dict[str, Any]]) -> None:
        return None

    def reasoning(self, text: str) -> None:
        return None

    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None:
        if self.gen.mode == "channel":
            publish_terminal(self.app, self.gen, outcome, prompt_tokens, completion_tokens)
        else:  # the client went with its worker; the admins' list still hears of the end
            _announce_end(self.app, self.gen, outcome, user=False)


class LogSink:
    """Coalesces tokens and queues them for the stream's log (channel mode).

    The first token goes out at once; later ones are merged while they arrive within
    ``SSE_COALESCE_MS`` of the last flush, or until ``SSE_COALESCE_BYTES``; a timer flushes a
    tail that would otherwise wait for a stalled upstream. Each flush is one
    ``hub.publish_later`` of the already-encoded event: one JSON encode, no Redis wait (the
    worker's log writer batches the appends of all its runs). Only the terminal event is waited
    for, and it is written after every event queued before it.

    If the writer cannot reach Redis for ``REDIS_RETRY_S``, the run fails at its next token
    (``AppendFailed``): a stream never completes with events missing.
    """

    def __init__(self, app: Flask, gen: Generation) -> None:
        cfg = app.config
        self.app = app
        self.gen = gen
        self.channel = stream_channel(gen.stream_id)
        self.window = cfg["SSE_COALESCE_MS"] / 1000.0
        self.max_bytes = cfg["SSE_COALESCE_BYTES"]
        self.running_ttl = int(cfg["STREAM_MAX_DURATION_S"] + cfg["STREAM_LOG_TTL_S"])
        self.parts: list[str] = []
        self.buffer: list[str] = []
        self.buffer_bytes = 0
        self.buffer_index = 0
        self.last_flush = 0.0
        self.timer_armed = False
        self.lock = threading.Lock()
        self.failed: BaseException | None = None
        self.calls: dict[int, dict[str, Any]] = {}

    def text(self) -> str:
        return "".join(self.parts)

    def _lost(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc

    def _queue(self, event: str, data: str | dict[str, Any]) -> None:
        """Queue one of the stream's events for the log writer (a failure fails the run)."""
        hub.publish_later(
            data,
            type=event,
            channel=self.channel,
            ttl_s=self.running_ttl,
            on_error=self._lost,
            app=self.app,
        )

    def started(self) -> None:
        gen = self.gen
        self._queue(
            "stream.started",
            {
                "type": "stream.started",
                "stream_id": gen.stream_id,
                "model": gen.model,
                "mode": gen.mode,
                "created": gen.created,
            },
        )
        _lifecycle(self.app, gen, "stream.started", {"status": "running"})

    def accepted(self) -> None:
        return None

    def token(self, text: str, index: int) -> None:
        if self.failed is not None:
            raise self.failed
        self.parts.append(text)
        with self.lock:
            if not self.buffer:
                self.buffer_index = index
            self.buffer.append(text)
            self.buffer_bytes += len(text.encode())
            now = time.monotonic()
            if now - self.last_flush >= self.window or self.buffer_bytes >= self.max_bytes:
                self._flush_locked(now)
            elif not self.timer_armed:
                self.timer_armed = True
                in_loop_later(self.last_flush + self.window - now, self._timer_flush)

    def _timer_flush(self) -> None:
        # Under gevent this runs in the event loop's own callback, where nothing may wait: the
        # run takes the lock only between two of its steps, never across a wait, so it is free
        # here. In-process (a thread) it can be busy: the run is mid-token; try again soon.
        if not self.lock.acquire(blocking=False):
            in_loop_later(0.001, self._timer_flush)
            return
        try:
            self.timer_armed = False
            if self.buffer:
                self._flush_locked(time.monotonic())
        finally:
            self.lock.release()

    def _flush_locked(self, now: float) -> None:
        payload = {
            "type": "token",
            "text": "".join(self.buffer),
            "index": self.buffer_index,
            "count": len(self.buffer),
        }
        self.buffer.clear()
        self.buffer_bytes = 0
        self.last_flush = now
        self._queue("token", sse.dumps(payload))

    # --- tool calls and reasoning: events of their own, after the tokens that came before ---

    def frame(self, data: bytes) -> None:
        return None  # direct mode's pass-through frames never reach a channel

    def tool_calls(self, calls: list[dict[str, Any]]) -> None:
        """Publish a ``tool_call`` event (OpenAI's delta list as is) and assemble the calls."""
        assemble_tool_calls(self.calls, calls)
        self._publish_now("tool_call", {"type": "tool_call", "tool_calls": calls})

    def reasoning(self, text: str) -> None:
        """Publish a ``reasoning`` event with the model's reasoning text."""
        self._publish_now("reasoning", {"type": "reasoning", "text": text})

    def assembled_tool_calls(self) -> list[dict[str, Any]] | None:
        """The tool calls streamed so far, whole (for the stream record)."""
        return [self.calls[i] for i in sorted(self.calls)] or None

    def _publish_now(self, event: str, payload: dict[str, Any]) -> None:
        if self.failed is not None:
            raise self.failed
        with self.lock:
            if self.buffer:  # tokens that came first are queued first
                self._flush_locked(time.monotonic())
            self._queue(event, sse.dumps(payload))

    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            if self.buffer:
                self._flush_locked(time.monotonic())
        if outcome.status == "completed":
            event_log(self.app).wait_written()
            if self.failed is not None:  # the log misses events: the stream did not complete
                outcome.status = "failed"
                outcome.finish_reason = None
                outcome.error_code = "event_log_unavailable"
                outcome.error_message = (
                    "Redis could not be written; the stream's events are incomplete."
                )
        publish_terminal(self.app, self.gen, outcome, prompt_tokens, completion_tokens)
