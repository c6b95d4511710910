"""End to end against the embedded model: SmolLM2-135M-Instruct served by llama-cpp-python.

The model server is the one ``make run`` starts (``python -m scripts.llm_server``), here on a free
loopback port, once per session. Real tokens are streamed with ``ChatOpenAI`` straight from it,
and with the openai SDK through Streamgate's own ``POST /v1/chat/completions`` on gunicorn.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import ROOT
from tests.support.live import LiveServer
from tests.support.processes import free_port, stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
PROMPT = "Name three colours of the rainbow."


@dataclass
class ModelServer:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """The embedded SmolLM2 server on a free loopback port (started once, stopped by PID)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[local]'; make test does)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("smollm2") / "llm_server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.llm_server", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ModelServer(f"http://127.0.0.1:{port}/v1", proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail("the SmolLM2 server exited:\n" + server.log())
        try:
            return httpx.get(server.base_url + "/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=120, interval=0.2)
        yield server
    finally:
        stop_process(proc)


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


def test_openai_sdk_streams_smollm2_through_streamgate(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    import openai

    user = make_user(make_tenant(models=[MODEL]))
    token = auth_headers(user)["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=token, timeout=60, max_retries=0)
    try:
        stream = client.chat.completions.create(
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
    finally:
        client.close()
    assert "".join(pieces).strip(), "no text came through Streamgate\n" + live.log()[-3000:]
    assert finish and finish[-1] in {"stop", "length"}
    assert usage and usage[-1].completion_tokens > 0


# A user pastes a long document into the playground: about 10,000 characters, more tokens than
# SmolLM2's 2,048-token context.
LONG_PROMPT = "Summarise this report. " + " ".join(
    f"Section {i}: the quarterly figures rose, fell and rose again." for i in range(170)
)


def test_a_prompt_longer_than_the_context_is_the_model_servers_400_in_direct_mode(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    import openai

    assert 9_000 < len(LONG_PROMPT) < 11_000
    user = make_user(make_tenant(models=[MODEL]))
    token = auth_headers(user)["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=token, timeout=60, max_retries=0)
    try:
        for stream in (True, False):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": LONG_PROMPT}],
                    stream=stream,
                    max_tokens=24,
                )
            assert caught.value.code == "context_length_exceeded", caught.value.body
            assert "maximum context length is 2048 tokens" in caught.value.message
    finally:
        client.close()


def test_a_prompt_longer_than_the_context_fails_the_channel_stream_saying_so(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    from tests.support.hub import read_hub

    headers = auth_headers(make_user(make_tenant(models=[MODEL])))
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
