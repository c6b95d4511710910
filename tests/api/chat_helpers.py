"""Helpers shared by the chat-completions tests (in-process and live)."""

from __future__ import annotations

import json
from typing import Any

PROMPT = "Say something."


def chat_body(directive: str = "", **extra: Any) -> dict[str, Any]:
    """A valid request; ``directive`` steers the fake upstream, e.g. ``"tokens=40 delay_ms=5"``."""
    content = PROMPT + (f" [[fake {directive}]]" if directive else "")
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def token_of(response_headers: dict[str, str]) -> str:
    return response_headers["Authorization"].removeprefix("Bearer ")


def data_events(raw: str) -> list[str]:
    """The ``data`` of every event in a complete SSE body (lines split per the WHATWG rules)."""
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    lines, decoder = SSELineDecoder(), SSEDecoder()
    out: list[str] = []
    for line in [*lines.decode(raw), *lines.flush(), ""]:
        event = decoder.decode(line)
        if event is not None:
            out.append(event.data)
    return out


def chunk_text(datas: list[str]) -> str:
    """The completion text carried by a list of ``chat.completion.chunk`` data strings."""
    text = ""
    for data in datas:
        if data == "[DONE]":
            continue
        payload = json.loads(data)
        for choice in payload.get("choices", []):
            text += choice["delta"].get("content") or ""
    return text


def record_of(stream_id: str) -> Any:
    """The stream record, read fresh from the database (current app context)."""
    from core.store import db
    from streaming.models import StreamRecord

    db.session.expire_all()
    return db.session.get(StreamRecord, stream_id)


def finished_record(stream_id: str) -> Any:
    """The record once its run settled (the response may end a moment before the write)."""
    from tests.support.waiting import wait_until

    return wait_until(
        lambda: (r := record_of(stream_id)) is not None and r.status != "running" and r
    )


def live_ids(redis: Any) -> list[str]:
    """Streams in the live registry (``sg:live``)."""
    return [m.decode() if isinstance(m, bytes) else m for m in redis.zrange("sg:live", 0, -1)]
