"""Channel mode carries tool calls and reasoning as events of their own (issue 15).

A tool-calling generation started with ``POST /v1/streams`` is read with httpx-sse from real
gunicorn workers, the connection dropped after the first ``tool_call`` event and resumed with
``Last-Event-ID``: the two readings together give the whole calls, the reasoning text and
``finish_reason: tool_calls``; ``GET /v1/streams/<id>`` shows the calls assembled.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.fake_upstream import TOOL_ARGUMENTS, FakeUpstream, reasoning_text, tool_call_id
from tests.support.hub import Event, prompt, read_hub

pytestmark = pytest.mark.live

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ARGUMENTS = "".join(TOOL_ARGUMENTS)


def assemble(events: list[Event]) -> dict[int, dict[str, Any]]:
    """Tool calls from ``tool_call`` events, put together by ``index`` as a client does."""
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.event != "tool_call":
            continue
        assert event.data["type"] == "tool_call"
        for piece in event.data["tool_calls"]:
            call = calls.setdefault(piece["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.get("id") or call["id"]
            function = piece.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""
    return calls


def test_a_tool_calling_stream_read_and_resumed_yields_the_whole_calls(
    live: Any, live_user: Any, fake_upstream: FakeUpstream
) -> None:
    _, headers = live_user()
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": prompt(reasoning=3, tool_calls=2, delay_ms=20)}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
    }
    with live.client() as client:
        started = client.post("/v1/streams", json=body, headers=headers)
        assert started.status_code == 202, started.text
        stream_id, channel = started.json()["id"], started.json()["channel"]

        first = read_hub(client, channel, headers, stop_when=lambda e: e.event == "tool_call")
        assert first.names[-1] == "tool_call"
        rest = read_hub(client, channel, headers, last_event_id=first.last_id)
        assert rest.eof
        events = first.events + rest.events
        assert len({e.id for e in events}) == len(events)  # no event twice

        names = [e.event for e in events]
        assert names[0] == "stream.started" and names[-1] == "stream.completed"
        reasoning = "".join(e.data["text"] for e in events if e.event == "reasoning")
        assert reasoning == reasoning_text(3)
        assert names.index("reasoning") < names.index("tool_call")
        assert assemble(events) == {
            0: {"id": tool_call_id(0), "name": "get_weather", "arguments": ARGUMENTS},
            1: {"id": tool_call_id(1), "name": "get_weather", "arguments": ARGUMENTS},
        }
        completed = events[-1].data
        assert completed["finish_reason"] == "tool_calls"
        assert completed["usage"]["completion_tokens"] > 0

        sent = fake_upstream.stats.last_body
        assert (sent["tools"], sent["tool_choice"]) == ([WEATHER_TOOL], "required")

        shown = client.get(f"/v1/streams/{stream_id}", headers=headers).json()
    assert (shown["status"], shown["finish_reason"]) == ("completed", "tool_calls")
    assert shown["tool_calls"] == [
        {
            "id": tool_call_id(i),
            "type": "function",
            "function": {"name": "get_weather", "arguments": ARGUMENTS},
        }
        for i in (0, 1)
    ]
    assert json.loads(shown["tool_calls"][0]["function"]["arguments"])["city"] == "Paris"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "logprobs")],
)
def test_a_field_channel_mode_cannot_honour_is_refused_naming_it(
    live: Any, live_user: Any, fake_upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    _, headers = live_user()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra}
    with live.client() as client:
        refused = client.post("/v1/streams", json=body, headers=headers)
        listed = client.get("/v1/streams", headers=headers).json()
    assert refused.status_code == 400, refused.text
    assert param in refused.json()["errors"]
    assert param in refused.json()["message"]
    assert listed == [] and fake_upstream.snapshot()["requests"] == 0
