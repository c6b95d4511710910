"""Server-Sent Events framing: pure functions, exact to the WHATWG rules.

- every field is written ``name: value`` (with the space, so a value's own leading space survives);
- ``data`` is split only on CRLF, CR or LF, one ``data:`` line each, so text round-trips byte for
  byte (U+2028, NEL and friends are not line breaks in SSE and are left alone);
- ``event`` and ``id`` may never contain CR, LF or NUL (``id``) — refused, never silently cleaned;
- a frame ends with one blank line.

JSON payloads (``dumps`` / ``json_frame``) additionally escape U+2028, U+2029 and NEL: they are not
SSE line breaks, but clients that read lines with ``str.splitlines`` (httpx's ``iter_lines``, many
hand-written readers) would cut a data line there. Escaped, the JSON decodes to the same text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")
_UNICODE_BREAKS = re.compile("[\u2028\u2029\x85]")

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


_DONE = b"data: [DONE]\n\n"


class FramingError(ValueError):
    """A field value that would break the event stream (CR, LF or NUL in ``event``/``id``)."""


def _field(name: str, value: str) -> str:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise FramingError(f"SSE {name} may not contain CR, LF or NUL")
    return f"{name}: {value}\n"


def frame(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002 - the SSE field
    retry: int | None = None,
) -> bytes:
    """One complete event as UTF-8 bytes."""
    parts: list[str] = []
    if event is not None:
        parts.append(_field("event", event))
    if id is not None:
        parts.append(_field("id", id))
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def dumps(payload: Any) -> str:
    """Compact UTF-8 JSON with no character any line reader splits on (same value when parsed).

    orjson writes the same compact JSON as ``json.dumps(ensure_ascii=False, separators=(",",
    ":"))`` at a fifth of the cost (one encode per channel-mode event); what it refuses (integers
    beyond 64 bits, keys that are not strings, lone surrogates) goes to the standard library.
    """
    try:
        text = orjson.dumps(payload).decode()
    except TypeError:  # orjson.JSONEncodeError
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return _UNICODE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_frame(
    payload: Any,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002
) -> bytes:
    """An event whose data is one line of compact JSON (see ``dumps``)."""
    return frame(dumps(payload), event=event, id=id)


def json_frame_template(
    payload: Any,
    slot: str,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002
) -> Callable[[Any], bytes]:
    """A fast ``json_frame`` for many events whose JSON differs in one value.

    ``payload`` holds the string ``slot`` exactly once where the value goes; the rest of the
    frame is rendered once, here, so each call costs one ``dumps`` of the value and one join.
    ``template(value) == json_frame(payload with slot replaced by value, event=..., id=...)``.
    """
    before, marker, after = dumps(payload).partition(dumps(slot))
    if not marker or marker in after:
        raise ValueError("the slot must appear exactly once in the payload's JSON")
    # JSON from ``dumps`` is one line: the frame is the fields, ``data: <json>`` and a blank line.
    head = frame("", event=event, id=id).decode().removesuffix("\n\n") + before
    tail = after + "\n\n"

    def render(value: Any) -> bytes:
        return (head + dumps(value) + tail).encode()

    return render


def json_frames_by_id(payload: Any, *, event: str) -> Callable[[str | None], bytes]:
    """A fast ``json_frame`` for many events that differ only in their ``id`` (the hub's pings).

    ``render(i) == json_frame(payload, event=event, id=i)``; the JSON is encoded once, here.
    """
    head = _field("event", event)
    body = frame(dumps(payload))

    def render(id: str | None) -> bytes:  # noqa: A002 - the SSE field
        return (head if id is None else head + _field("id", id)).encode() + body

    return render


def http_chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk: its length in hex, CRLF, the bytes, CRLF (RFC 9112 7.1;
    what the server writes for one body item of a chunked response)."""
    return b"%X\r\n%s\r\n" % (len(frame), frame)


END_OF_CHUNKS = b"0\r\n\r\n"  # the last chunk: ends a chunked response (RFC 9112 7.1)


def done() -> bytes:
    """``data: [DONE]``: the event that ends an OpenAI-compatible stream."""
    return _DONE


def comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, keeps proxies from timing the connection out."""
    if _FORBIDDEN_IN_FIELD.search(text):
        raise FramingError("SSE comments may not contain CR, LF or NUL")
    return f": {text}\n\n".encode() if text else b":\n\n"


def retry_hint(milliseconds: int) -> bytes:
    """A frame carrying only the reconnection delay."""
    return f"retry: {int(milliseconds)}\n\n".encode()


_BREAKS_UTF8 = (b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xc2\x85")


def json_bytes_frame(data: bytes) -> bytes:
    """A ``data`` event around JSON that is already encoded (one line; the pass-through path).

    orjson writes U+2028, U+2029 and NEL as raw UTF-8; they are escaped here for the same
    line readers ``dumps`` protects. Inside JSON they can only occur in strings, so the escape
    decodes to the same text. The ``in`` checks cost far less than a regex on every chunk.
    """
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        for raw in _BREAKS_UTF8:
            if raw in data:
                data = data.replace(raw, b"\\u%04x" % ord(raw.decode()))
    return b"data: " + data + b"\n\n"
