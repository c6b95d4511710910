"""streaming.sse: framing exact to the WHATWG rules, proven against two independent parsers.

- ``parse`` below is a reference implementation of the WHATWG "event stream interpretation"
  algorithm, written from the specification, working on raw bytes;
- httpx-sse's incremental ``SSELineDecoder`` + ``SSEDecoder`` (what the tests' clients use) is fed
  the same bytes cut at arbitrary points, as a network would deliver them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import sse

# --- a WHATWG reference parser ----------------------------------------------------------------


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


def parse(stream: bytes) -> tuple[list[Event], int | None, list[str]]:
    """Events, the last reconnection time and the comments of a complete event stream.

    https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
    """
    text = stream.decode("utf-8")  # the stream is always UTF-8; a decoding error fails the test
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # what follows the last line break is an incomplete line: never dispatched
    events: list[Event] = []
    comments: list[str] = []
    data, event_type, last_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            events.append(Event(event_type or "message", data.removesuffix("\n"), last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            comments.append(line[1:])
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                retry = int(value)
    return events, retry, comments


def parse_with_httpx_sse(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    """The same stream through httpx-sse, delivered in ``chunks`` (decoded incrementally)."""
    import codecs

    utf8 = codecs.getincrementaldecoder("utf-8")()
    lines, decoder = SSELineDecoder(), SSEDecoder()
    out: list[tuple[str, str, str]] = []

    def feed(text_lines: list[str]) -> None:
        for line in text_lines:
            event = decoder.decode(line)
            if event is not None:
                out.append((event.event, event.data, event.id))

    for chunk in chunks:
        text = utf8.decode(chunk)
        if text:
            feed(lines.decode(text))
    feed(lines.flush())
    return out


def sse_lines(text: str) -> str:
    """What any conformant parser hands back for ``text``: its line breaks become LF."""
    return re.sub(r"\r\n|\r", "\n", text)


# --- the exact bytes --------------------------------------------------------------------------


def test_every_field_is_written_with_a_space_after_the_colon() -> None:
    assert sse.frame("hi", event="token", id="1-0") == b"event: token\nid: 1-0\ndata: hi\n\n"


def test_a_leading_space_in_the_data_survives_the_one_the_parser_strips() -> None:
    raw = sse.frame(" Hello")
    assert raw == b"data:  Hello\n\n"
    assert parse(raw)[0][0].data == " Hello"


def test_a_frame_ends_with_exactly_one_blank_line() -> None:
    assert sse.frame("x").endswith(b"x\n\n") and not sse.frame("x").endswith(b"\n\n\n")


def test_empty_data_is_still_an_event() -> None:
    raw = sse.frame("")
    assert raw == b"data: \n\n"
    assert [e.data for e in parse(raw)[0]] == [""]


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("a\nb", [b"a", b"b"]),
        ("a\r\nb", [b"a", b"b"]),
        ("a\rb", [b"a", b"b"]),
        ("a\n\nb", [b"a", b"", b"b"]),
        ("a\r\rb", [b"a", b"", b"b"]),
        ("a\n\rb", [b"a", b"", b"b"]),  # LF then CR: two breaks, not one
        ("\n", [b"", b""]),
        ("a\n", [b"a", b""]),
        ("\r\n\r\n", [b"", b"", b""]),
    ],
)
def test_data_is_split_on_cr_lf_and_crlf_one_data_line_each(text: str, lines: list[bytes]) -> None:
    assert sse.frame(text) == b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


@pytest.mark.parametrize(
    "separator",
    ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x00", "\t"],
    ids=["LS", "PS", "NEL", "VT", "FF", "FS", "GS", "RS", "NUL", "TAB"],
)
def test_characters_python_calls_line_breaks_stay_inside_one_data_line(separator: str) -> None:
    text = f"before{separator}after"
    raw = sse.frame(text)
    assert raw == b"data: " + text.encode() + b"\n\n"
    assert parse(raw)[0][0].data == text
    assert parse_with_httpx_sse([raw]) == [("message", text, "")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b", "\n", "\r", "\x00"])
@pytest.mark.parametrize("field", ["event", "id"])
def test_cr_lf_or_nul_in_event_or_id_is_refused(field: str, bad: str) -> None:
    with pytest.raises(sse.FramingError, match=field):
        sse.frame("x", **{field: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fine", ["stream.completed", "1712000000000-0", " spaced ", "caf\u00e9", "\u2028"]
)
def test_other_event_and_id_values_are_written_verbatim(fine: str) -> None:
    events, _, _ = parse(sse.frame("x", event=fine, id=fine))
    assert (events[0].type, events[0].last_event_id) == (fine, fine)


def test_an_empty_event_name_is_a_message_and_an_empty_id_resets_the_last_id() -> None:
    events, _, _ = parse(sse.frame("a", id="7") + sse.frame("b", event="", id=""))
    assert [(e.type, e.last_event_id) for e in events] == [("message", "7"), ("message", "")]


def test_retry_is_an_integer_field() -> None:
    assert sse.frame("x", retry=2000) == b"retry: 2000\ndata: x\n\n"
    assert sse.retry_hint(1500) == b"retry: 1500\n\n"
    events, retry, _ = parse(sse.retry_hint(1500))
    assert events == [] and retry == 1500


def test_a_comment_is_a_colon_line_that_no_parser_dispatches() -> None:
    assert sse.comment("keep-alive") == b": keep-alive\n\n"
    assert sse.comment() == b":\n\n"
    events, _, comments = parse(sse.comment("keep-alive") + sse.comment())
    assert events == [] and comments == [" keep-alive", ""]
    assert parse_with_httpx_sse([sse.comment("keep-alive")]) == []


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_a_comment_may_not_break_the_line(bad: str) -> None:
    with pytest.raises(sse.FramingError):
        sse.comment(bad)


def test_json_frames_are_one_compact_line_whatever_the_text() -> None:
    payload = {"text": " a\r\nb\rc\nd\u2028e \U0001f642", "index": 3}
    raw = sse.json_frame(payload, event="token", id="5-0")
    assert raw.count(b"\n") == 4 and b"\r" not in raw  # event, id, data, blank line
    assert json.loads(parse(raw)[0][0].data) == payload


def test_json_frames_escape_what_naive_line_readers_split_on() -> None:
    """U+2028/U+2029/NEL are fine in SSE, but ``str.splitlines`` readers would cut the line."""
    payload = {"text": "a\u2028b\u2029c\x85d"}
    raw = sse.json_frame(payload)
    assert raw == b'data: {"text":"a\\u2028b\\u2029c\\u0085d"}\n\n'
    assert raw.decode().splitlines() == [raw.decode().rstrip("\n"), ""]
    assert json.loads(parse(raw)[0][0].data) == payload


def test_done_is_the_openai_stream_terminator() -> None:
    assert sse.done() == b"data: [DONE]\n\n" == sse.frame("[DONE]")
    assert [e.data for e in parse(sse.done())[0]] == ["[DONE]"]


SLOT = "\x00slot"


def test_a_json_frame_template_renders_what_json_frame_would() -> None:
    payload = {"id": "c-1", "choices": [{"delta": {"content": SLOT}, "finish_reason": None}]}
    token = sse.json_frame_template(payload, SLOT)
    assert token(" Hello") == (
        b'data: {"id":"c-1","choices":[{"delta":{"content":" Hello"},"finish_reason":null}]}\n\n'
    )
    assert token("a\r\nb\u2028") == sse.json_frame(
        {"id": "c-1", "choices": [{"delta": {"content": "a\r\nb\u2028"}, "finish_reason": None}]}
    )


def test_a_json_frame_template_keeps_event_and_id() -> None:
    token = sse.json_frame_template({"text": SLOT, "index": 1}, SLOT, event="token", id="5-0")
    assert token("hi") == b'event: token\nid: 5-0\ndata: {"text":"hi","index":1}\n\n'
    with pytest.raises(sse.FramingError):
        sse.json_frame_template({"text": SLOT}, SLOT, id="a\nb")


@pytest.mark.parametrize("payload", [{"text": "none"}, {"a": SLOT, "b": SLOT}])
def test_a_json_frame_template_needs_its_slot_exactly_once(payload: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        sse.json_frame_template(payload, SLOT)


def test_every_frame_is_utf8() -> None:
    assert sse.frame("caf\u00e9 \U0001f642") == "data: caf\u00e9 \U0001f642\n\n".encode()


def test_the_stream_headers_disable_caching_and_proxy_buffering() -> None:
    assert sse.HEADERS["Content-Type"].startswith("text/event-stream")
    assert sse.HEADERS["Cache-Control"] == "no-cache"
    assert sse.HEADERS["X-Accel-Buffering"] == "no"


# --- round trips with random text -------------------------------------------------------------

# Any Unicode scalar value (no lone surrogates: they cannot be UTF-8), weighted towards the
# characters that break naive framing.
TRICKY = st.sampled_from(
    [
        "\r",
        "\n",
        "\r\n",
        "\u2028",
        "\u2029",
        "\x85",
        "\x0b",
        "\x0c",
        "\x00",
        " ",
        ":",
        "data: ",
        "id: ",
        "\ufeff",
        "\U0001f642",
    ]
)
TEXT = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=8), TRICKY), max_size=12
).map("".join)
NAME = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=12)


def _cuts(raw: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(raw), *(p % (len(raw) + 1) for p in points)})
    return [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(TEXT, min_size=1, max_size=4),
    names=st.lists(NAME, min_size=4, max_size=4),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
def test_random_text_round_trips_through_both_parsers(
    texts: list[str], names: list[str], points: list[int]
) -> None:
    raw = b"".join(
        sse.frame(t, event=names[i] or None, id=names[-1 - i]) for i, t in enumerate(texts)
    )

    events, _, _ = parse(raw)
    assert [e.data for e in events] == [sse_lines(t) for t in texts]
    assert [e.type for e in events] == [names[i] or "message" for i in range(len(texts))]
    assert [e.last_event_id for e in events] == [names[-1 - i] for i in range(len(texts))]

    # httpx-sse, with the bytes arriving in arbitrary pieces (even mid-character, mid-CRLF)
    expected = [(names[i] or "message", sse_lines(t), names[-1 - i]) for i, t in enumerate(texts)]
    got = parse_with_httpx_sse(_cuts(raw, points))
    assert [(event or "message", data, last) for event, data, last in got] == expected


@settings(max_examples=400, deadline=None)
@given(text=TEXT)
def test_text_without_cr_round_trips_byte_for_byte(text: str) -> None:
    text = text.replace("\r", "")
    (event,), _, _ = parse(sse.frame(text))
    assert event.data.encode() == text.encode()


@settings(max_examples=400, deadline=None)
@given(tokens=st.lists(TEXT, max_size=10))
def test_tokens_as_json_round_trip_byte_for_byte_cr_included(tokens: list[str]) -> None:
    raw = b"".join(sse.json_frame({"text": t}) for t in tokens)
    events, _, _ = parse(raw)
    assert [json.loads(e.data)["text"].encode() for e in events] == [t.encode() for t in tokens]
    # and each event is exactly one line to any reader, even one splitting on Unicode breaks
    assert raw.decode().splitlines() == [
        line for t in tokens for line in (sse.json_frame({"text": t}).decode().split("\n")[:2])
    ]


@settings(max_examples=400, deadline=None)
@given(tokens=st.lists(TEXT, max_size=10), name=NAME)
def test_a_json_frame_template_is_json_frame_byte_for_byte(tokens: list[str], name: str) -> None:
    token = sse.json_frame_template({"head": name, "text": SLOT, "n": 1}, SLOT, event=name)
    for text in tokens:
        assert token(text) == sse.json_frame({"head": name, "text": text, "n": 1}, event=name)
    events, _, _ = parse(b"".join(token(t) for t in tokens))
    assert [json.loads(e.data)["text"].encode() for e in events] == [t.encode() for t in tokens]
