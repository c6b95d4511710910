"""Channel mode's model client: ChatOpenAI's chunks as ChatOpenAI builds them, from the SDK's
stream as Streamgate parses it (against the fake upstream, a real HTTP server)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from bench.fake_upstream import FakeUpstream, expected_text
from streaming.providers import Provider, _text_only, build_provider

CONFIG = {
    "LLM_API_KEY": "test-key",
    "LLM_MODELS": ["fake-model"],
    "LLM_CONNECT_TIMEOUT_S": 5.0,
    "LLM_READ_TIMEOUT_S": 30.0,
    "LLM_MAX_RETRIES": 0,
    "LLM_CONTINUOUS_USAGE_STATS": False,
}


def _chunk(delta: dict[str, Any], **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None, **choice}],
    }


TEXT_CHUNKS = [
    _chunk({"content": "Hello"}),
    _chunk({"role": "assistant", "content": " world"}),
    _chunk({"content": ""}),
    # vLLM and llama.cpp name the fields they do not use, empty.
    _chunk({"content": "x", "reasoning_content": None, "tool_calls": [], "function_call": None}),
    _chunk({"content": "é 🙂", "refusal": None}, logprobs=None),
]
OTHER_CHUNKS = [
    _chunk({"content": "end"}, finish_reason="stop"),
    _chunk({"content": "a", "reasoning_content": "thinking"}),
    _chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
    _chunk({"content": "a"}, logprobs={"content": [{"token": "a", "logprob": -0.1}]}),
    _chunk({"refusal": "no"}),
    _chunk({"role": "tool", "content": "x"}),
    {**_chunk({"content": "u"}), "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    {"id": "c", "choices": [_chunk({"content": "a"})["choices"][0]] * 2},
]


@pytest.fixture(scope="module")
def provider(_upstream_server: FakeUpstream) -> Any:
    made = build_provider(CONFIG, base_url=_upstream_server.base_url)
    yield made
    made.close()


@pytest.mark.parametrize("chunk", TEXT_CHUNKS)
def test_a_text_chunk_is_built_as_chatopenai_builds_it(provider: Provider, chunk: Any) -> None:
    assert _text_only(chunk) is not None  # the quick path takes it
    ours = provider.llm._convert_chunk_to_generation_chunk(chunk, AIMessageChunk, None)
    theirs = ChatOpenAI._convert_chunk_to_generation_chunk(
        provider.llm, chunk, AIMessageChunk, None
    )
    assert type(ours) is type(theirs) and type(ours.message) is type(theirs.message)
    assert ours.model_dump() == theirs.model_dump()
    assert ours.text == theirs.text == chunk["choices"][0]["delta"]["content"]
    assert ours.message.tool_calls == [] and ours.message.tool_call_chunks == []
    # What BaseChatModel.stream does next with each chunk works on it as on theirs.
    assert (ours + theirs).model_dump() == (theirs + theirs).model_dump()


@pytest.mark.parametrize("chunk", OTHER_CHUNKS)
def test_every_other_chunk_takes_chatopenais_own_path(provider: Provider, chunk: Any) -> None:
    assert _text_only(chunk) is None


def test_a_first_chunk_with_response_headers_takes_chatopenais_own_path(
    provider: Provider,
) -> None:
    info = {"headers": {"x-request-id": "r1"}}
    made = provider.llm._convert_chunk_to_generation_chunk(TEXT_CHUNKS[0], AIMessageChunk, info)
    assert made.generation_info == info


def _run(provider: Provider, prompt: str) -> tuple[str, list[Any]]:
    request = {"model": "fake-model", "messages": [{"role": "user", "content": prompt}]}
    chunks = list(provider.stream(request))
    return "".join(c.text for c in chunks), chunks


def test_a_stream_through_chatopenai_yields_the_whole_text_and_its_usage(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    before = fake_upstream.snapshot()
    for _ in range(3):
        text, chunks = _run(provider, "[[fake tokens=12]]")
        assert text == expected_text(12)
        assert sum(c.tokens for c in chunks) == 12
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
        assert [c.completion_tokens for c in chunks if c.completion_tokens] == [12]
    after = fake_upstream.snapshot()
    # The body is read past [DONE]: back-to-back generations share one connection.
    assert after["requests"] - before["requests"] == 3
    assert after["connections"] - before["connections"] == 1


def test_an_in_band_error_is_raised_as_the_sdk_raises_it_after_the_text_before_it(
    provider: Provider, fake_upstream: FakeUpstream
) -> None:
    request = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "[[fake tokens=9 error_after=3]]"}],
    }
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in provider.stream(request):
            text += chunk.text
    assert text == expected_text(3)
    assert not isinstance(caught.value, openai.APIStatusError) and caught.value.message
