"""The one module that imports langchain_openai: builds the app's model client.

One ``ChatOpenAI`` per app (so one HTTP connection pool), pointed at ``LLM_BASE_URL``; the model
name, limits and sampling settings are passed per request. Generations iterate
``ChatOpenAI.stream()``; underneath, the openai SDK hands LangChain each chunk as a plain dict
(``_PlainChunks``) rather than a pydantic model it would dump back to a dict at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI


@dataclass
class Chunk:
    """One piece of an upstream generation, in the shape the runner needs."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Provider:
    """The app's model client and the request defaults it was built with."""

    llm: ChatOpenAI
    base_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    def stream(
        self, model: str, messages: list[dict[str, str]], params: Mapping[str, Any]
    ) -> Iterator[Chunk]:
        """Iterate the upstream generation; closing the iterator closes the upstream request."""
        kwargs = {key: value for key, value in params.items() if value is not None}
        pieces = self.llm.stream(to_langchain(messages), model=model, stream_usage=True, **kwargs)
        for piece in pieces:
            meta = piece.response_metadata or {}
            usage = piece.usage_metadata
            yield Chunk(
                text=piece.content if isinstance(piece.content, str) else "",
                finish_reason=meta.get("finish_reason"),
                prompt_tokens=usage["input_tokens"] if usage else None,
                completion_tokens=usage["output_tokens"] if usage else None,
            )

    def close(self) -> None:
        """Close the pooled connections to the model server (app shutdown, tests)."""
        self.llm.root_client.close()


class _ChatOpenAI(ChatOpenAI):
    """ChatOpenAI that sends the completion cap as ``max_tokens``.

    ChatOpenAI renames it ``max_completion_tokens`` (OpenAI's newer name), which llama.cpp's
    server, llama-cpp-python and older vLLM / Ollama ignore: the cap would silently not apply.
    ``max_tokens`` is understood by every OpenAI-compatible server, OpenAI's chat models included.
    """

    def _get_request_payload(
        self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload and "max_tokens" not in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


class _PlainChunks:
    """``client.chat.completions`` for ChatOpenAI, streaming chunks as plain dicts.

    LangChain accepts dict chunks (it ``model_dump``s the SDK's models first thing). Building a
    pydantic ``ChatCompletionChunk`` per token only to dump it cost about 110 us of CPU a token,
    more than the whole gateway's budget (issue 9); the SDK's low-level ``post`` with
    ``cast_to=object`` keeps everything else of the SDK: base URL, auth, timeouts, retries,
    HTTP errors as ``APIStatusError``, an in-band ``{"error": ...}`` as ``APIError``, and its
    SSE decoder.
    """

    def __init__(self, root: openai.OpenAI) -> None:
        self._root = root
        self._completions = root.chat.completions

    def create(self, **payload: Any) -> Any:
        if not payload.get("stream"):
            return self._completions.create(**payload)
        options: dict[str, Any] = {}
        for key, option in (
            ("extra_headers", "headers"),
            ("extra_query", "params"),
            ("timeout", "timeout"),
        ):
            if payload.get(key) is not None:
                options[option] = payload.pop(key)
        body = {**payload, **(payload.pop("extra_body", None) or {})}
        return self._root.post(
            "/chat/completions",
            body=body,
            options=options,  # type: ignore[call-overload]
            cast_to=object,
            stream=True,
            stream_cls=_ReusingStream,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


class _ReusingStream(openai.Stream[object]):
    """The SDK's stream, reading the body to its end after ``[DONE]``.

    The SDK stops at ``[DONE]`` and closes the response before the chunked body's last bytes are
    read, so httpx drops the connection: every generation opened a new TCP connection to the
    model server (and, under gevent, resolved its host on the thread pool). Reading the few bytes
    that follow ``[DONE]`` returns the connection to the pool for the next generation.
    Subclassing ``Stream[object]`` keeps chunks plain dicts (the SDK reads the chunk type from it).
    """

    def _iter_events(self) -> Iterator[Any]:
        events = super()._iter_events()
        for event in events:
            if event.data.startswith("[DONE]"):
                for _rest in events:  # normally nothing: the body ends right after [DONE]
                    pass
            yield event


def to_langchain(messages: list[dict[str, str]]) -> list[BaseMessage]:
    """OpenAI-style role/content dicts to LangChain messages."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


def build_provider(config: Mapping[str, Any]) -> Provider:
    """One ChatOpenAI for the app; nothing connects until the first request."""
    timeout = httpx.Timeout(
        connect=config["LLM_CONNECT_TIMEOUT_S"],
        read=config["LLM_READ_TIMEOUT_S"],
        write=10.0,
        pool=10.0,
    )
    llm = _ChatOpenAI(
        base_url=config["LLM_BASE_URL"],
        api_key=config["LLM_API_KEY"],
        model=(config["LLM_MODELS"] or ["default"])[0],
        timeout=timeout,
        max_retries=config["LLM_MAX_RETRIES"],
        streaming=True,
        stream_usage=True,
        http_client=httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        ),
    )
    llm.client = _PlainChunks(llm.root_client)
    return Provider(llm=llm, base_url=config["LLM_BASE_URL"])
