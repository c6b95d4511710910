"""Channel mode: a run's events go to the stream's log through the hub's ``publish``.

Events on ``streams/<id>``: ``stream.started``, ``token`` (coalesced), and one terminal event
(``stream.completed`` / ``stream.failed`` / ``stream.cancelled`` / ``stream.revoked``).
Lifecycle events of every stream also go to ``users/<user id>`` so a second device can attach.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask

from streaming.runner import Generation, Outcome, dumps

TERMINAL_EVENTS = frozenset(
    {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}
)


def stream_channel(stream_id: str) -> str:
    return "streams/" + stream_id


def user_channel(user_id: str) -> str:
    return "users/" + user_id


def _publish(app: Flask, channel: str, event: str, payload: dict[str, Any], ttl_s: int) -> str:
    from streaming.hub import hub

    return hub.publish_to(app, channel, event, {"type": event, **payload}, ttl_s)


def _lifecycle(app: Flask, gen: Generation, event: str, extra: dict[str, Any]) -> None:
    cfg = app.config
    _publish(
        app,
        user_channel(gen.user_id),
        event,
        {
            "stream_id": gen.stream_id,
            "channel": stream_channel(gen.stream_id),
            "events_url": "/v1/events?channel=" + stream_channel(gen.stream_id),
            "mode": gen.mode,
            "model": gen.model,
            **extra,
        },
        int(cfg["STREAM_LOG_TTL_S"]),
    )


def terminal_event(
    outcome: Outcome, prompt_tokens: int, completion_tokens: int
) -> tuple[str, dict[str, Any]]:
    """The terminal event name and payload for an outcome."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if outcome.status == "completed":
        return "stream.completed", {"finish_reason": outcome.finish_reason, "usage": usage}
    if outcome.status == "revoked":
        return "stream.revoked", {
            "by": outcome.revoked_by,
            "reason": outcome.reason,
            "usage": usage,
        }
    if outcome.status == "cancelled":
        return "stream.cancelled", {"reason": outcome.reason, "usage": usage}
    return "stream.failed", {
        "error": {"code": outcome.error_code, "message": outcome.error_message},
        "usage": usage,
    }


def publish_terminal(
    app: Flask, gen: Generation, outcome: Outcome, prompt_tokens: int, completion_tokens: int
) -> None:
    """Close the stream's log with its terminal event and tell the user's channel."""
    ttl = int(app.config["STREAM_LOG_TTL_S"])
    event, payload = terminal_event(outcome, prompt_tokens, completion_tokens)
    _publish(
        app, stream_channel(gen.stream_id), event, {"stream_id": gen.stream_id, **payload}, ttl
    )
    _lifecycle(app, gen, event, {"status": outcome.status})


class LogSink:
    """Coalesces tokens and appends them to the stream's log (channel mode).

    The first token goes out at once; later ones are merged while they arrive within
    ``SSE_COALESCE_MS`` of the last flush, or until ``SSE_COALESCE_BYTES``; a timer flushes a
    tail that would otherwise wait for a stalled upstream.
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

    def text(self) -> str:
        return "".join(self.parts)

    def started(self) -> None:
        gen = self.gen
        _publish(
            self.app,
            self.channel,
            "stream.started",
            {
                "stream_id": gen.stream_id,
                "model": gen.model,
                "mode": gen.mode,
                "created": gen.created,
            },
            self.running_ttl,
        )
        _lifecycle(self.app, gen, "stream.started", {"status": "running"})

    def accepted(self) -> None:
        return None

    def token(self, text: str, index: int) -> None:
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
                call_later(self.last_flush + self.window - now, self._timer_flush)

    def _timer_flush(self) -> None:
        with self.lock:
            self.timer_armed = False
            if self.buffer:
                self._flush_locked(time.monotonic())

    def _flush_locked(self, now: float) -> None:
        text = "".join(self.buffer)
        payload = {
            "type": "token",
            "text": text,
            "index": self.buffer_index,
            "count": len(self.buffer),
        }
        self.buffer.clear()
        self.buffer_bytes = 0
        self.last_flush = now
        from streaming.hub import hub

        hub.publish_to(
            self.app, self.channel, "token", payload, self.running_ttl, encoded=dumps(payload)
        )

    def finished(self, outcome: Outcome, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            if self.buffer:
                self._flush_locked(time.monotonic())
        publish_terminal(self.app, self.gen, outcome, prompt_tokens, completion_tokens)


def call_later(delay: float, fn: Any) -> None:
    """Call ``fn`` after ``delay`` seconds: a gevent timer when monkey-patched, else a thread."""
    try:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            import gevent

            gevent.spawn_later(max(0.0, delay), fn)
            return
    except ImportError:  # pragma: no cover
        pass
    timer = threading.Timer(max(0.0, delay), fn)
    timer.daemon = True
    timer.start()
