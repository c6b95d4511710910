"""Direct mode is a faithful OpenAI pass-through, seen through the clients apps use (issue 15).

Every field an app sends reaches the model server (the fake upstream records the body it got),
every field the model server streams reaches the app, except ``id`` and ``model``; a model
server's refusal (a 4xx) reaches the app with its status and message and is not retried.
Real gunicorn workers, the real openai SDK and ``ChatOpenAI``; the fake upstream is the model.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from bench.fake_upstream import (
    FINGERPRINT,
    TOOL_ARGUMENTS,
    FakeUpstream,
    expected_text,
    reasoning_text,
    tool_call_id,
)
from tests.api.chat_helpers import PROMPT, finished_record, live_ids, token_of
from tests.support.clients import chat_openai, openai_client
from tests.support.live import LiveServer

pytestmark = pytest.mark.live

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ARGUMENTS = "".join(TOOL_ARGUMENTS)


@pytest.fixture()
def sdk(live: LiveServer, headers: dict[str, str]) -> Iterator[openai.OpenAI]:
    # Retries on: a refusal that is retried would show as a second upstream request.
    with openai_client(live.url, token_of(headers), max_retries=2) as client:
        yield client


def ask(directive: str, text: str = PROMPT) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{text} [[fake {directive}]]"}]


def assembled_tool_calls(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Streamed ``delta.tool_calls`` pieces put back together, as an app does."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function is not None:
                    call["name"] += piece.function.name or ""
                    call["arguments"] += piece.function.arguments or ""
    return calls


# --- tools --------------------------------------------------------------------------------------


def test_a_tool_calling_round_trip_streams_the_call_and_sends_the_result_back(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    question = ask("tool_calls=1", "What is the weather in Paris?")
    chunks = list(
        sdk.chat.completions.create(
            model="fake-model",
            messages=question,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="auto",
            parallel_tool_calls=False,
            stream=True,
        )
    )
    sent = fake_upstream.stats.last_body
    assert sent["tools"] == [WEATHER_TOOL]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("auto", False)

    calls = assembled_tool_calls(chunks)
    assert calls == {0: {"id": tool_call_id(0), "name": "get_weather", "arguments": ARGUMENTS}}
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c\u00e9lsius"}
    reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert reasons == ["tool_calls"]

    # The app runs the tool and sends the call and its result back: the model answers.
    conversation = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"celsius": 18}'},
    ]
    answer = sdk.chat.completions.create(
        model="fake-model",
        messages=conversation,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text == expected_text(8)
    assert fake_upstream.stats.last_body["messages"] == conversation


def test_a_tool_call_without_streaming_is_the_upstreams_message(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    completion = sdk.chat.completions.create(
        model="fake-model",
        messages=ask("tool_calls=2"),  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [  # type: ignore[union-attr]
        (tool_call_id(0), "get_weather", ARGUMENTS),
        (tool_call_id(1), "get_weather", ARGUMENTS),
    ]
    assert fake_upstream.stats.last_body["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }


def test_chatopenai_bind_tools_streams_the_tool_call(
    live: LiveServer, headers: dict[str, str]
) -> None:
    llm = chat_openai(live.url, token_of(headers))
    pieces = list(llm.bind_tools([WEATHER_TOOL]).stream("Weather in Paris? [[fake tool_calls=1]]"))
    message = pieces[0]
    for piece in pieces[1:]:
        message += piece  # type: ignore[assignment]
    assert message.tool_calls == [  # type: ignore[attr-defined]
        {
            "name": "get_weather",
            "args": {"city": "Paris", "unit": "c\u00e9lsius"},
            "id": tool_call_id(0),
            "type": "tool_call",
        }
    ]
    assert message.response_metadata["finish_reason"] == "tool_calls"


# --- fields sent ---------------------------------------------------------------------------------

EXTRAS: dict[str, Any] = {
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "weather",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"celsius": {"type": "number"}},
                "required": ["celsius"],
                "additionalProperties": False,
            },
        },
    },
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "logit_bias": {"50256": -100},
    "metadata": {"app": "weather-bot"},
    "user": "end-user-42",
}
VLLM_EXTRAS: dict[str, Any] = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "chat_template_kwargs": {"enable_thinking": False},
    "guided_json": {"type": "object"},
    "future_option": [1, {"nested": None}],
}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "not streaming"])
def test_response_format_penalties_and_unknown_extras_reach_the_model_server(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream, stream: bool
) -> None:
    response = sdk.chat.completions.create(
        model="fake-model",
        messages=ask("tokens=3"),  # type: ignore[arg-type]
        stream=stream,
        extra_body=VLLM_EXTRAS,
        **EXTRAS,
    )
    if stream:
        list(response)  # type: ignore[call-overload]
    sent = fake_upstream.stats.last_body
    assert {key: sent.get(key) for key in EXTRAS} == EXTRAS
    assert {key: sent.get(key) for key in VLLM_EXTRAS} == VLLM_EXTRAS


def test_every_message_shape_reaches_the_model_server_and_an_image_byte_for_byte(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    image = "data:image/png;base64," + base64.b64encode(os.urandom(3000)).decode()
    audio = base64.b64encode(os.urandom(600)).decode()
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "system", "content": [{"type": "text", "text": "You see images."}]},
        {"role": "user", "content": "Earlier question", "name": "ann"},
        {"role": "assistant", "content": None, "refusal": "I cannot help with that."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-abc123"}},
                {"type": "text", "text": "[[fake tokens=4]]"},
            ],
        },
    ]
    for stream in (True, False):
        response = sdk.chat.completions.create(
            model="fake-model",
            messages=messages,  # type: ignore[arg-type]
            stream=stream,
        )
        text = (
            "".join(c.choices[0].delta.content or "" for c in response if c.choices)  # type: ignore[union-attr]
            if stream
            else response.choices[0].message.content  # type: ignore[union-attr]
        )
        assert text == expected_text(4)
        assert fake_upstream.stats.last_body["messages"] == messages
        assert f'"url": "{image}"'.encode() in fake_upstream.stats.last_raw.replace(
            b'"url":"', b'"url": "'
        )


# --- fields received ---------------------------------------------------------------------------


def test_reasoning_logprobs_and_the_system_fingerprint_reach_the_app(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="fake-model",
            messages=ask("reasoning=5 tokens=6"),  # type: ignore[arg-type]
            stream=True,
            logprobs=True,
            top_logprobs=0,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == reasoning_text(5)
    text = "".join(d.content or "" for d in deltas)
    assert text == expected_text(6)
    tokens = [
        entry.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for entry in c.choices[0].logprobs.content or []
    ]
    assert "".join(tokens) == text
    assert {c.system_fingerprint for c in chunks} == {FINGERPRINT}
    assert {c.model for c in chunks} == {"fake-model"} and len({c.id for c in chunks}) == 1

    completion = sdk.chat.completions.create(
        model="fake-model",
        messages=ask("reasoning=5 tokens=6"),  # type: ignore[arg-type]
        logprobs=True,
    )
    message = completion.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") == reasoning_text(5)
    assert message.content == expected_text(6)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and len(logprobs.content or []) == 6
    assert completion.system_fingerprint == FINGERPRINT
    assert completion.id.startswith("chatcmpl-") and completion.id != "chatcmpl-fake"


def test_n_choices_are_kept_apart(sdk: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="fake-model",
            messages=ask("tokens=12"),  # type: ignore[arg-type]
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    reasons: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert texts == {0: expected_text(12), 1: expected_text(12, choice=1)}
    assert reasons == {0: "stop", 1: "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
    assert fake_upstream.stats.last_body["n"] == 2

    completion = sdk.chat.completions.create(
        model="fake-model",
        messages=ask("tokens=5"),  # type: ignore[arg-type]
        n=2,
    )
    assert [c.message.content for c in completion.choices] == [
        expected_text(5),
        expected_text(5, choice=1),
    ]


# --- the model server refuses ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "not streaming"])
def test_an_upstream_400_is_the_apps_bad_request_with_its_message_and_is_not_retried(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream, redis: Any, stream: bool
) -> None:
    message = "This model's maximum context length is 2048 tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.with_raw_response.create(
            model="fake-model",
            messages=ask(f"status=400 error_message={message.replace(' ', '_')}"),  # type: ignore[arg-type]
            stream=stream,
        )
    error = caught.value
    assert error.status_code == 400 and message in error.message
    assert isinstance(error.body, dict) and error.body["message"] == message
    assert (error.code, error.param, error.type) == ("400", "messages", "invalid_request_error")
    assert fake_upstream.snapshot()["requests"] == 1  # neither Streamgate nor the SDK retried

    record = finished_record(error.response.headers["X-Stream-Id"])
    assert (record.status, record.error_code, record.error_message) == ("failed", "400", message)
    assert live_ids(redis) == []
