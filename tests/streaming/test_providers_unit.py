"""Channel mode's model client: ChatOpenAI over the SDK's stream as Streamgate parses it, against
the fake upstream (a real HTTP server)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from api.config import load_config
from bench.fake_upstream import FakeUpstream, expected_text
from streaming.providers import Provider, build_provider

# The deployment's own defaults for the rest (timeouts, usage options): not a copy of them.
CONFIG_ENV = {"LLM_API_KEY": "test-key", "LLM_MODELS": "fake-model", "LLM_MAX_RETRIES": "0"}


@pytest.fixture(scope="module")
def provider(_upstream_server: FakeUpstream) -> Any:
    made = build_provider(load_config(CONFIG_ENV, testing=True), base_url=_upstream_server.base_url)
    yield made
    made.close()


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


def test_a_long_stream_holds_no_more_memory_at_its_end_than_near_its_start(
    provider: Provider,
) -> None:
    # A run hands each chunk on and keeps nothing of it here (its text is the sink's). LangChain's
    # public stream() kept every chunk as a message object until the end, to merge them all:
    # ~2.3 KB a token, 4.2 MB held by 1,800 tokens of one answer, times every concurrent run.
    import tracemalloc

    tokens = 2000
    request = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"[[fake tokens={tokens}]]"}],
    }
    seen = 0
    held: list[int] = []
    tracemalloc.start()
    try:
        for chunk in provider.stream(request):
            seen += chunk.tokens
            if seen in (100, tokens - 100):
                held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert seen == tokens
    early, late = held
    assert late - early < 256 * 1024, f"{(late - early) // 1024} KiB more after 1,800 tokens"
