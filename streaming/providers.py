"""The model client: the raw pass-through of direct mode and ``ChatOpenAI`` for channel mode.

One openai SDK client per app (so one HTTP connection pool), pointed at ``LLM_BASE_URL``, shared
by both paths:
- direct mode (``Provider.passthrough``) posts the client's request as it came (model and token
  cap already set by the caller) and hands each upstream chunk on with only ``id`` and ``model``
  replaced: one orjson parse and one orjson dump per chunk, nothing rebuilt through LangChain
  (which would drop tool calls, reasoning, logprobs and every choice but the first);
- channel mode (``Provider.stream``) streams through ``ChatOpenAI`` with the same request body
  and reads text, tool-call chunks and reasoning from its message chunks.
This is the one module that imports ``langchain_openai``.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import openai
import orjson
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from core.tls import tls_context
from streaming import sse
from streaming.http_pool import model_server_client


@dataclass
class Chunk:
    """One piece of an upstream generation, in the shape the runner needs."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens: int = 0  # output pieces in this chunk: the count when the upstream reports no usage
    frame: bytes | None = None  # direct mode: the bytes the client gets, ready to write
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's delta ``tool_calls`` list


@dataclass
class Provider:
    """The app's model clients and the request defaults they were built with."""

    llm: ChatOpenAI
    base_url: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: Added to every request's ``stream_options``: ``include_usage`` always (limits need it),
    #: and ``continuous_usage_stats`` where the model server supports it (vLLM), so a run
    #: stopped early still knows its prompt's real size.
    usage_options: dict[str, Any] = field(default_factory=lambda: {"include_usage": True})

    @property
    def root(self) -> openai.OpenAI:
        return self.llm.root_client  # type: ignore[no-any-return]

    # --- direct mode: the raw pass-through ---------------------------------------------------

    def passthrough(
        self,
        request: dict[str, Any],
        chunk_id: str,
        model: str,
        include_usage: bool,
        prompt_estimate: int = 0,
    ) -> Iterator[Chunk]:
        """Forward ``request``; yield each upstream chunk re-framed with our ``id`` and ``model``.

        ``stream: false`` yields one Chunk whose ``frame`` is the ``chat.completion`` JSON.
        Usage is always asked for (limits need it); when the client did not ask, the usage chunk
        and the ``usage`` keys are not passed on; when it asked and the model server sent none
        (llama-cpp-python ignores ``include_usage``), a last chunk carries Streamgate's count.
        Closing the iterator closes the request.
        """
        if not request.get("stream"):
            completion = self.root.post("/chat/completions", body=request, cast_to=object)
            yield _completion_chunk(completion, chunk_id, model)
            return
        options = request.get("stream_options") or {}
        body = {**request, "stream_options": {**options, **self.usage_options}}
        # Usage on every chunk is ours to read, not the client's, unless it asked for it too.
        running_usage = not options.get("continuous_usage_stats")
        stream = self.root.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=_RawStream
        )
        events = iter(stream)
        seen = False
        usage_seen = False
        counted = 0
        created = None
        try:
            for data in events:
                if data == b"[DONE]":
                    for _rest in events:  # read to the end: the connection goes back to the pool
                        pass
                    break
                seen = True
                chunk = _loads(data)
                out = _read_chunk(chunk)
                counted += out.tokens
                created = chunk.get("created", created)
                usage_seen = usage_seen or out.completion_tokens is not None
                if not include_usage:
                    if not chunk.get("choices") and chunk.get("usage") is not None:
                        yield out  # counted, not sent: the client did not ask for usage
                        continue
                    chunk.pop("usage", None)
                elif running_usage and chunk.get("choices"):
                    chunk.pop("usage", None)
                chunk["id"] = chunk_id
                chunk["model"] = model
                out.frame = sse.json_bytes_frame(orjson.dumps(chunk))
                yield out
        finally:
            stream.close()
        if not seen:
            self.explain_empty(request)
        if include_usage and not usage_seen:
            usage = {
                "prompt_tokens": prompt_estimate,
                "completion_tokens": counted,
                "total_tokens": prompt_estimate + counted,
            }
            last: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield Chunk(frame=sse.json_bytes_frame(orjson.dumps(last)))

    def explain_empty(self, request: Mapping[str, Any]) -> None:
        """Raise what an upstream that streamed nothing at all would have said.

        llama-cpp-python answers a streaming request it cannot serve (a prompt longer than its
        context) with a 200 and an empty body, and logs the reason. The same request without
        streaming, capped at one token, gets its 400 and message (or costs at most one token).
        """
        probe = {**request, "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        probe.pop("max_completion_tokens", None)
        # The failed stream may leave its pooled connection reset: one retry on a fresh one.
        self.root.post(
            "/chat/completions",
            body=probe,
            cast_to=object,
            options={"max_retries": 1},  # type: ignore[call-overload]
        )
        raise upstream_error("The model server ended the stream without a response.")

    # --- channel mode: ChatOpenAI ---------------------------------------------------------------

    def stream(self, request: dict[str, Any]) -> Iterator[Chunk]:
        """ChatOpenAI's chunks for ``request``; closing the iterator closes the request.

        Iterates the model's ``_stream``, the method a LangChain chat model implements to
        stream, rather than the public ``stream()`` around it: that wrapper only adds what a
        gateway run does not use (callbacks and tracing, a rate limiter, a last empty chunk) and
        keeps every chunk of the run to merge them at its end (4.2 MB for 2,000 tokens; 7-11%
        of the CPU a token at 200 streams, docs/performance.md).
        """
        seen = False
        generations = cast(
            Generator[ChatGenerationChunk, None, None],
            self.llm._stream([], streamgate_request={**request, "stream": True}),
        )
        try:
            for generation in generations:
                seen = True
                yield _from_langchain(generation)
        finally:
            generations.close()  # a stopped run closes its upstream request now
        if not seen:
            self.explain_empty(request)

    def close(self) -> None:
        """Close the pooled connections to the model server (app shutdown, tests)."""
        self.llm.root_client.close()


def _loads(data: bytes) -> dict[str, Any]:
    """One upstream chunk; an in-band ``{"error": ...}`` is raised as the SDK would."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = json.loads(data)  # what orjson refuses and Python accepts (NaN, lone surrogates)
    if not isinstance(chunk, dict):
        raise upstream_error("The model server sent a chunk that is not an object.")
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        raise upstream_error(
            message if isinstance(message, str) else "An error occurred during streaming", error
        )
    return chunk  # type: ignore[no-any-return]


def _read_chunk(chunk: dict[str, Any]) -> Chunk:
    """What the runner needs from a chunk: usage, finish reason, how many pieces it carries."""
    out = Chunk()
    usage = chunk.get("usage")
    if usage:
        out.prompt_tokens = usage.get("prompt_tokens")
        out.completion_tokens = usage.get("completion_tokens")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if (
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("reasoning_content")
            or delta.get("reasoning")
            or delta.get("refusal")
        ):
            out.tokens += 1
        if choice.get("finish_reason"):
            out.finish_reason = choice["finish_reason"]
    return out


def _completion_chunk(completion: Any, chunk_id: str, model: str) -> Chunk:
    """A non-streamed ``chat.completion`` as one Chunk (its ``frame`` is the JSON body)."""
    if not isinstance(completion, dict):
        raise upstream_error("The model server did not answer with a JSON object.")
    if completion.get("error"):
        error = completion["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise upstream_error(str(message or "The model server reported an error."), error)
    out = Chunk()
    usage = completion.get("usage") or {}
    out.prompt_tokens = usage.get("prompt_tokens")
    out.completion_tokens = usage.get("completion_tokens")
    for choice in completion.get("choices") or ():
        out.tokens += 1
        if choice.get("finish_reason"):
            out.finish_reason = choice["finish_reason"]
    completion["id"] = chunk_id
    completion["model"] = model
    out.frame = orjson.dumps(completion)
    return out


def upstream_error(message: str, body: object = None) -> openai.APIError:
    """An error the model server reported in a 200 response (as the SDK raises it)."""
    return openai.APIError(message, httpx.Request("POST", "/chat/completions"), body=body)  # type: ignore[arg-type]


def _from_langchain(generation: ChatGenerationChunk) -> Chunk:
    piece = cast(AIMessageChunk, generation.message)
    meta = generation.generation_info or {}
    usage = piece.usage_metadata
    text = piece.content if isinstance(piece.content, str) else ""
    reasoning = piece.additional_kwargs.get("reasoning_content") or ""
    calls = [_openai_tool_call(c) for c in piece.tool_call_chunks] or None
    return Chunk(
        text=text,
        finish_reason=meta.get("finish_reason"),
        prompt_tokens=usage["input_tokens"] if usage else None,
        completion_tokens=usage["output_tokens"] if usage else None,
        tokens=1 if (text or reasoning or calls) else 0,
        reasoning=reasoning if isinstance(reasoning, str) else "",
        tool_calls=calls,
    )


def _openai_tool_call(chunk: Mapping[str, Any]) -> dict[str, Any]:
    """A LangChain ``tool_call_chunk`` back in OpenAI's delta shape (only the keys it had)."""
    call: dict[str, Any] = {"index": chunk.get("index")}
    if chunk.get("id") is not None:
        call["id"] = chunk["id"]
        call["type"] = "function"
    function: dict[str, Any] = {}
    if chunk.get("name") is not None:
        function["name"] = chunk["name"]
    if chunk.get("args") is not None:
        function["arguments"] = chunk["args"]
    if function:
        call["function"] = function
    return call


class _ChatOpenAI(ChatOpenAI):
    """ChatOpenAI that sends the client's request as it came and keeps reasoning text.

    Channel mode passes the validated request body (``streamgate_request``): LangChain's
    message conversion and defaults would change it, a ``response_format`` would take the SDK's
    parsing helper and some fields would switch it to the Responses API. The body travels as
    ``extra_body``, which ``_PlainChunks`` sends as the request itself.
    """

    usage_options: dict[str, Any] = {"include_usage": True}  # Provider.usage_options

    def _get_request_payload(
        self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        forward = kwargs.pop("streamgate_request", None)
        if forward is None:
            return super()._get_request_payload(input_, stop=stop, **kwargs)  # type: ignore[no-any-return]
        options = forward.get("stream_options") or {}
        body = {**forward, "stream_options": {**options, **self.usage_options}}
        return {"stream": True, "extra_body": body}

    def _convert_chunk_to_generation_chunk(
        self,
        chunk: dict[str, Any],
        default_chunk_class: type,
        base_generation_info: dict[str, Any] | None,
    ) -> Any:
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info
        )
        choices = chunk.get("choices") or ()
        if generation is not None and choices:
            delta = choices[0].get("delta") or {}
            # vLLM and DeepSeek name it reasoning_content, newer vLLM reasoning.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation


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
            stream_cls=_ChunkStream,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


class _ChunkStream(openai.Stream[object]):
    """The SDK's stream for ChatOpenAI: each chunk a plain dict, parsed as direct mode parses it.

    ``sse_data`` and one orjson parse per chunk replace the SDK's line decoder, its
    ``ServerSentEvent`` objects and ``json.loads`` (2.2 us a chunk instead of 9.5); an in-band
    ``{"error": ...}`` is raised as the SDK raises it. After ``[DONE]`` the body is read to its
    end: the SDK closed the response before the chunked body's last bytes, so httpx dropped the
    connection and every generation opened a new one to the model server.
    """

    def __stream__(self) -> Iterator[Any]:
        events = sse_data(self.response.iter_bytes())
        try:
            for data in events:
                if data.startswith(b"[DONE]"):
                    for _rest in events:  # normally nothing: the body ends right after [DONE]
                        pass
                    return
                yield _loads(data)
        finally:
            self.response.close()


class _RawStream(openai.Stream[bytes]):
    """The SDK's stream yielding each event's ``data`` as bytes, unparsed (direct mode).

    The SDK's own decoder builds a ``ServerSentEvent`` and parses its JSON per chunk; the
    pass-through parses each chunk once itself. Transport errors stay httpx's (the runner
    classifies them).
    """

    def __stream__(self) -> Iterator[bytes]:
        try:
            yield from sse_data(self.response.iter_bytes())
        finally:
            self.response.close()


def sse_data(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The ``data`` of each event in an SSE byte stream (WHATWG line rules; comments skipped)."""
    rest = b""
    data: list[bytes] = []
    skip_lf = False
    for chunk in chunks:
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        skip_lf = False
        buf = rest + chunk if rest else chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # its \n may be in the next chunk
                buf, skip_lf = buf[:-1] + b"\n", True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
    if rest.startswith(b"data:"):
        value = rest[5:]
        data.append(value[1:] if value[:1] == b" " else value)
    if data:
        yield b"\n".join(data)


def build_provider(
    config: Mapping[str, Any], base_url: str | None = None, api_key: str | None = None
) -> Provider:
    """One ChatOpenAI (and its openai SDK client, so one set of pooled connections,
    ``streaming.http_pool``) for one model server, by default ``LLM_BASE_URL``; nothing connects
    until used."""
    base_url = base_url or config["LLM_BASE_URL"]
    timeout = httpx.Timeout(
        connect=config["LLM_CONNECT_TIMEOUT_S"],
        read=config["LLM_READ_TIMEOUT_S"],
        write=10.0,
        pool=10.0,
    )
    llm = _ChatOpenAI(
        base_url=base_url,
        api_key=SecretStr(api_key or config["LLM_API_KEY"]),
        model=(config["LLM_MODELS"] or ["default"])[0],
        timeout=timeout,
        max_retries=config["LLM_MAX_RETRIES"],
        streaming=True,
        stream_usage=True,
        http_client=model_server_client(
            base_url,
            timeout,
            httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            tls_context(),
        ),
        # Never used (a gevent worker streams synchronously); given so it loads no CA bundle.
        http_async_client=httpx.AsyncClient(timeout=timeout, verify=tls_context()),
    )
    usage_options: dict[str, Any] = {"include_usage": True}
    if config["LLM_CONTINUOUS_USAGE_STATS"]:
        usage_options["continuous_usage_stats"] = True
    llm.usage_options = usage_options
    llm.client = _PlainChunks(llm.root_client)
    return Provider(llm=llm, base_url=base_url, usage_options=usage_options)
