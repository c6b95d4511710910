"""End to end against the embedded model: SmolLM2-135M-Instruct served by llama-cpp-python.

The model server is the one ``make run`` starts, once per session (``tests.support.smollm2``).
Real tokens are streamed with ``ChatOpenAI`` straight from it,
and with the openai SDK through Streamgate's own ``POST /v1/chat/completions`` on gunicorn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.accounts import tenant_member
from tests.support.live import LiveServer
from tests.support.smollm2 import MODEL, ModelServer

pytestmark = pytest.mark.e2e

PROMPT = "Name three colours of the rainbow."


def test_smollm2_serves_its_model_id(smollm2: ModelServer) -> None:
    models = httpx.get(smollm2.base_url + "/models", timeout=5).json()
    assert [model["id"] for model in models["data"]] == [MODEL]


def test_chatopenai_streams_real_tokens_from_smollm2(smollm2: ModelServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=smollm2.base_url,
        api_key="not-needed",
        model=MODEL,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        timeout=60,
        max_retries=0,
    )
    chunks = list(llm.stream(PROMPT))
    text = "".join(chunk.content for chunk in chunks if isinstance(chunk.content, str))
    finish = [
        chunk.response_metadata["finish_reason"]
        for chunk in chunks
        if chunk.response_metadata.get("finish_reason")
    ]
    assert len(chunks) > 2, "expected a stream of several chunks"
    assert text.strip(), "the model produced no text"
    assert finish and finish[-1] in {"stop", "length"}


@pytest.fixture()
def live_overrides(smollm2: ModelServer) -> dict[str, str]:
    """The live Streamgate server talks to SmolLM2 instead of the fake upstream."""
    return {"LLM_BASE_URL": smollm2.base_url, "LLM_MODELS": MODEL}


member_of = pytest.fixture(tenant_member, name="member_of")


@pytest.fixture()
def headers(live: LiveServer, member_of: Callable[..., dict[str, str]]) -> dict[str, str]:
    """The bearer headers of a member of a tenant allowed the model."""
    return member_of(models=[MODEL])


@pytest.fixture()
def sdk(live: LiveServer, headers: dict[str, str]) -> Iterator[Any]:
    """An openai SDK client of Streamgate's ``/v1``, signed in as that member (no retries)."""
    import openai

    token = headers["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=token, timeout=60, max_retries=0)
    yield client
    client.close()


def test_openai_sdk_streams_smollm2_through_streamgate(live: LiveServer, sdk: Any) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        max_tokens=24,
        temperature=0,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage: list[Any] = []
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                finish.append(choice.finish_reason)
        if chunk.usage is not None:
            usage.append(chunk.usage)
    assert "".join(pieces).strip(), "no text came through Streamgate\n" + live.log()[-3000:]
    assert finish and finish[-1] in {"stop", "length"}
    assert usage and usage[-1].completion_tokens > 0


# A user pastes a long document into the playground: about 10,000 characters, more tokens than
# SmolLM2's 2,048-token context.
LONG_PROMPT = "Summarise this report. " + " ".join(
    f"Section {i}: the quarterly figures rose, fell and rose again." for i in range(170)
)


def test_a_prompt_longer_than_the_context_is_the_model_servers_400_in_direct_mode(
    sdk: Any,
) -> None:
    import openai

    assert 9_000 < len(LONG_PROMPT) < 11_000
    for stream in (True, False):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": LONG_PROMPT}],
                stream=stream,
                max_tokens=24,
            )
        assert caught.value.code == "context_length_exceeded", caught.value.body
        assert "maximum context length is 2048 tokens" in caught.value.message


def test_a_prompt_longer_than_the_context_fails_the_channel_stream_saying_so(
    live: LiveServer, headers: dict[str, str]
) -> None:
    from tests.support.hub import read_hub

    body = {
        "model": MODEL,
        "max_tokens": 24,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
    }
    with live.client(timeout=60) as client:
        started = client.post("/v1/streams", json=body, headers=headers)
        assert started.status_code == 202, started.text
        reading = read_hub(client, started.json()["channel"], headers)
    assert reading.names[-1] == "stream.failed", reading.names
    error = reading.events[-1].data["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]
