"""A deterministic OpenAI-compatible model server for tests and benchmarks.

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streaming and not) on loopback with
knobs for fault injection. Defaults are set when the server is built; any request may override
them with a directive anywhere in its last message, e.g. ``[[fake tokens=50 delay_ms=20]]``.

Knobs:
  tokens         completion tokens to produce (``max_tokens`` still caps them; then finish "length")
  delay_ms       pause before every token
  first_delay_ms extra pause before the first token (a slow first token)
  error_after    after k tokens send an in-band ``data: {"error": ...}`` and end
  drop_after     after k tokens drop the TCP connection mid-stream
  stall_after    after k tokens pause ``stall_ms`` (a model server that stalls mid-generation)
  status         answer this HTTP status (e.g. 429, 500) with an OpenAI error body, no stream
  hang           accept the request, then never answer (a timeout upstream)
  infinite       never finish (until the client goes away)
  pad            append this many "x" to every streamed token (bulk, for slow-client tests)
  tool_calls     answer with this many tool calls (arguments streamed in pieces, finish
                 "tool_calls") instead of text; the function is the request's first tool's.
                 Without it, a request with ``tools`` whose last message is not a tool result
                 gets one call, as a model would (then, given the result, it answers in text)
  reasoning      send this many ``reasoning_content`` deltas before the answer
  error_message  the message of the error body ``status`` answers (spaces as ``_``)
  say            answer with this text instead of the vocabulary, percent-encoded (``%20`` a
                 space, ``%5D`` a ``]``), streamed four characters a token
  stamp          remember the wall-clock time each content token was written (``GET /_stamps``:
                 the last stamped request's list; the bench's fan-out lag from the upstream chunk)

The request's own fields are honoured as a model server would: ``n`` choices (choice j's text
is the token sequence shifted by j), ``logprobs`` (one entry per content token),
``stream_options.include_usage``, ``max_tokens``. Every chunk carries a ``system_fingerprint``.

Counters (``stats()`` or ``GET /_stats``): requests, active, peak (most open at once), completed,
disconnects (client went away before the response was complete), models (requests by the model
they named), and the last request body (``stats.last_body``, parsed, and ``stats.last_raw``, its
bytes). ``POST /_reset`` with a JSON object of knobs does ``reset()`` from another process.

Run alone for benchmarks: ``python -m bench.fake_upstream --port 8090 --tokens 200 --delay-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Tokens chosen to catch framing bugs: leading spaces, line breaks of every kind, U+2028, emoji,
# text that looks like SSE fields, and quotes.
VOCAB = (
    " Hello",
    ",",
    " world",
    "\n",
    "  two spaces",
    " caf\u00e9",
    "\u2028",
    " \U0001f642",
    " data: x",
    "\r\n",
    ' "quoted"',
    " id: 7",
    "\r",
    " event: y",
    " \u00fc",
    ".",
)
_DIRECTIVE = re.compile(r"\[\[fake([^\]]*)\]\]")
REASONING = ("Let", " me", " think", ":", " \u00e9", "\n")
TOOL_ARGUMENTS = ('{"city": ', '"Par', 'is", "unit": "c', '\u00e9lsius"}')
FINGERPRINT = "fp_fake_1"


def token_text(index: int) -> str:
    """The text of completion token ``index`` (deterministic)."""
    return VOCAB[index % len(VOCAB)]


def expected_text(count: int, choice: int = 0) -> str:
    """The full completion of ``count`` tokens (of choice ``choice`` when ``n`` > 1)."""
    return "".join(token_text(i + choice) for i in range(count))


def reasoning_text(count: int) -> str:
    """The reasoning sent before the answer with ``reasoning=count``."""
    return "".join(REASONING[i % len(REASONING)] for i in range(count))


def tool_call_id(index: int) -> str:
    return f"call_fake_{index}"


@dataclass
class Knobs:
    tokens: int = 8
    delay_ms: float = 0.0
    first_delay_ms: float = 0.0
    error_after: int = -1
    drop_after: int = -1
    stall_after: int = -1
    stall_ms: float = 0.0
    status: int = 200
    hang: bool = False
    infinite: bool = False
    pad: int = 0  # append this many "x" to every streamed token (bulk for slow-client tests)
    tool_calls: int = 0
    reasoning: int = 0
    error_message: str = ""
    say: str = ""
    stamp: bool = False

    def merged(self, text: str) -> Knobs:
        """These knobs overridden by a ``[[fake k=v ...]]`` directive in ``text``."""
        match = _DIRECTIVE.search(text)
        if not match:
            return self
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for pair in match.group(1).split():
            key, _, value = pair.partition("=")
            if key not in types:
                continue
            kind = types[key]
            if kind in ("bool", bool):
                changes[key] = value.lower() in {"1", "true", "yes", ""}
            elif kind in ("str", str):
                changes[key] = value.replace("_", " ")
            elif kind in ("float", float):
                changes[key] = float(value)
            else:
                changes[key] = int(value)
        return replace(self, **changes)


@dataclass
class Stats:
    connections: int = 0  # TCP connections accepted (a client that reuses one opens fewer)
    requests: int = 0
    active: int = 0
    completed: int = 0
    disconnects: int = 0
    peak: int = 0  # most requests open at once
    models: dict[str, int] = field(default_factory=dict)  # chat requests by the model they named
    last_body: dict[str, Any] = field(default_factory=dict)
    last_raw: bytes = b""
    stamps: list[float] = field(default_factory=list)  # the last ``stamp`` request's token times


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A deterministic prompt token count: whitespace-separated words plus 3 per message."""
    return sum(len(str(m.get("content", "")).split()) + 3 for m in messages)


class _ClientGone(Exception):
    pass


class FakeUpstream:
    """The server. ``start()`` runs it on a background thread and returns its base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **knobs: Any) -> None:
        self.host = host
        self.port = port
        self.knobs = Knobs(**knobs)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port, backlog=4096, limit=2**20)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def reset(self, **knobs: Any) -> None:
        """New default knobs and zeroed counters (between tests)."""
        with self._lock:
            self.knobs = Knobs(**knobs)
            self.stats = Stats()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connections": self.stats.connections,
                "requests": self.stats.requests,
                "active": self.stats.active,
                "completed": self.stats.completed,
                "disconnects": self.stats.disconnects,
                "peak": self.stats.peak,
                "models": dict(self.stats.models),
            }

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Poll the counters until ``predicate(snapshot)`` holds (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.01)
        return bool(predicate(self.snapshot()))

    # --- HTTP -----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.stats.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._route(method, path, body, reader, writer)
                if not keep:
                    break
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            _ClientGone,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _route(
        self,
        method: str,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/v1/models":
            await self._send_json(
                writer,
                200,
                {
                    "object": "list",
                    "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}],
                },
            )
            return True
        if method == "GET" and path == "/_stats":
            await self._send_json(writer, 200, self.snapshot())
            return True
        if method == "POST" and path == "/_reset":  # reset() from another process
            self.reset(**json.loads(body or b"{}"))
            await self._send_json(writer, 200, self.snapshot())
            return True
        if method == "GET" and path == "/_stamps":
            await self._send_json(writer, 200, {"stamps": self.stats.stamps})
            return True
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(json.loads(body or b"{}"), body, reader, writer)
        await self._send_json(writer, 404, {"error": {"message": "not found", "type": "not_found"}})
        return True

    async def _chat(
        self,
        req: dict[str, Any],
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        messages = req.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        with self._lock:
            knobs = self.knobs.merged(last)
            if not knobs.tool_calls and req.get("tools") and messages:
                if messages[-1].get("role") != "tool" and req.get("tool_choice") != "none":
                    knobs = replace(knobs, tool_calls=1)
            # A request that outlives a reset() is counted where it began, never in the new
            # counters (a test would see another test's stream ending as -1 active).
            stats = self.stats
            stats.requests += 1
            stats.active += 1
            stats.peak = max(stats.peak, stats.active)
            name = str(req.get("model"))
            stats.models[name] = stats.models.get(name, 0) + 1
            stats.last_body = req
            stats.last_raw = raw
        finished = False
        try:
            if knobs.hang:
                await reader.read(1)  # returns only when the client gives up
                raise _ClientGone
            if knobs.status != 200:
                await self._send_json(
                    writer,
                    knobs.status,
                    {
                        "error": {
                            "message": knobs.error_message
                            or f"fake upstream status {knobs.status}",
                            "type": "server_error"
                            if knobs.status >= 500
                            else "invalid_request_error",
                            "param": None if knobs.status >= 500 else "messages",
                            "code": str(knobs.status),
                        }
                    },
                )
                finished = True
                return True
            count = len(_said(knobs)) if knobs.say else knobs.tokens
            max_tokens = req.get("max_tokens") or req.get("max_completion_tokens")
            finish = "stop"
            if max_tokens is not None and (knobs.infinite or int(max_tokens) < count):
                count, finish = int(max_tokens), "length"
            elif knobs.infinite:
                count = 10**12
            model = req.get("model", "fake-model")
            usage = {
                "prompt_tokens": prompt_tokens(messages),
                "completion_tokens": 0,
                "total_tokens": 0,
            }
            if knobs.tool_calls:
                finish = "tool_calls"
            if not req.get("stream"):
                await self._sleep_or_gone(knobs.first_delay_ms + knobs.delay_ms * count, reader)
                if 0 <= knobs.drop_after < count:  # failing while it generates, unstreamed
                    writer.transport.abort()
                    raise _ClientGone
                if 0 <= knobs.error_after < count:
                    await self._send_json(writer, 500, _MID_STREAM_ERROR)
                    finished = True
                    return True
                choices = [_whole_choice(knobs, req, count, finish, j) for j in range(_n_of(req))]
                produced = count * len(choices) + knobs.reasoning
                usage.update(
                    completion_tokens=produced, total_tokens=usage["prompt_tokens"] + produced
                )
                await self._send_json(
                    writer,
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "system_fingerprint": FINGERPRINT,
                        "choices": choices,
                        "usage": usage,
                    },
                )
                finished = True
                return True
            await self._stream(writer, reader, knobs, req, model, count, finish, usage)
            finished = True
            return True
        finally:
            with self._lock:
                stats.active -= 1
                if finished:
                    stats.completed += 1
                else:
                    stats.disconnects += 1

    async def _sleep_or_gone(self, ms: float, reader: asyncio.StreamReader) -> None:
        if ms <= 0:
            return
        eof = asyncio.ensure_future(reader.read(1))
        done, _ = await asyncio.wait({eof}, timeout=ms / 1000)
        if done:
            raise _ClientGone
        eof.cancel()

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        knobs: Knobs,
        req: dict[str, Any],
        model: str,
        count: int,
        finish: str,
        usage: dict[str, int],
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        created = int(time.time())
        # A watcher that notices the client leaving even while we sleep between tokens.
        eof = asyncio.ensure_future(reader.read(1))

        async def send(payload: Any) -> None:
            if eof.done():
                raise _ClientGone
            data = (
                b"data: "
                + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                + b"\n\n"
            )
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        async def pause(ms: float) -> None:
            if ms > 0:
                done, _ = await asyncio.wait({eof}, timeout=ms / 1000)
                if done:
                    raise _ClientGone
            elif eof.done():
                raise _ClientGone

        # vLLM's ``continuous_usage_stats``: the usage so far on every chunk.
        continuous = bool((req.get("stream_options") or {}).get("continuous_usage_stats"))
        sent = 0

        def chunk(
            delta: dict[str, Any], reason: str | None = None, index: int = 0, **extra: Any
        ) -> dict[str, Any]:
            nonlocal sent
            out: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": index, "delta": delta, "finish_reason": reason, **extra}],
            }
            if continuous:
                sent += 1 if delta.get("content") else 0
                out["usage"] = {
                    "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": sent,
                    "total_tokens": usage["prompt_tokens"] + sent,
                }
            return out

        n = _n_of(req)
        said = _said(knobs)
        stamps: list[float] = []
        if knobs.stamp:
            self.stats.stamps = stamps
        try:
            for j in range(n):
                await send(chunk({"role": "assistant", "content": ""}, index=j))
            await pause(knobs.first_delay_ms)
            for i in range(knobs.reasoning):
                await pause(knobs.delay_ms)
                await send(chunk({"reasoning_content": REASONING[i % len(REASONING)]}))
            if knobs.tool_calls:
                await self._send_tool_calls(send, pause, chunk, knobs, req)
                count = 0
            for i in range(count):
                if i == knobs.drop_after:
                    writer.transport.abort()
                    raise _ClientGone
                if i == knobs.error_after:
                    await send(_MID_STREAM_ERROR)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                if i == knobs.stall_after:
                    await pause(knobs.stall_ms)
                await pause(knobs.delay_ms)
                if knobs.stamp:
                    stamps.append(time.time())
                for j in range(n):
                    text = (said[i] if said else token_text(i + j)) + "x" * knobs.pad
                    extra: dict[str, Any] = (
                        {"logprobs": _logprobs(text)} if req.get("logprobs") else {}
                    )
                    await send(chunk({"content": text}, index=j, **extra))
            produced = count * n + knobs.reasoning + (len(TOOL_ARGUMENTS) * knobs.tool_calls)
            usage.update(completion_tokens=produced, total_tokens=usage["prompt_tokens"] + produced)
            for j in range(n):
                await send(chunk({}, finish, index=j))
            if (req.get("stream_options") or {}).get("include_usage"):
                final = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
                await send(final)
            await send(b"[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            eof.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                leftover = await eof
                if leftover:  # the client's next request began; give its first byte back
                    reader._buffer[0:0] = leftover  # type: ignore[attr-defined]

    async def _send_tool_calls(
        self, send: Any, pause: Any, chunk: Any, knobs: Knobs, req: dict[str, Any]
    ) -> None:
        """``knobs.tool_calls`` calls of the request's first tool, arguments in pieces."""
        name = _tool_name(req)
        for index in range(knobs.tool_calls):
            for k, piece in enumerate(TOOL_ARGUMENTS):
                await pause(knobs.delay_ms)
                call: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
                if k == 0:
                    call = {
                        "index": index,
                        "id": tool_call_id(index),
                        "type": "function",
                        "function": {"name": name, "arguments": piece},
                    }
                await send(chunk({"tool_calls": [call]}))


_MID_STREAM_ERROR = {
    "error": {
        "message": "fake upstream failed mid-stream",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
}


def _said(knobs: Knobs) -> list[str]:
    """The ``say`` knob's text in the tokens it is streamed as."""
    text = urllib.parse.unquote(knobs.say)
    return [text[k : k + 4] for k in range(0, len(text), 4)]


def _n_of(req: dict[str, Any]) -> int:
    return int(req.get("n") or 1)


def _tool_name(req: dict[str, Any]) -> str:
    tools = req.get("tools") or [{}]
    return str((tools[0].get("function") or {}).get("name") or "get_weather")


def _logprobs(text: str) -> dict[str, Any]:
    return {
        "content": [
            {"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": []}
        ]
    }


def _whole_choice(
    knobs: Knobs, req: dict[str, Any], count: int, finish: str, index: int
) -> dict[str, Any]:
    """One choice of a non-streamed completion, with what the knobs and request ask for."""
    message: dict[str, Any] = {"role": "assistant", "content": expected_text(count, index)}
    if knobs.reasoning:
        message["reasoning_content"] = reasoning_text(knobs.reasoning)
    if knobs.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": tool_call_id(i),
                "type": "function",
                "function": {"name": _tool_name(req), "arguments": "".join(TOOL_ARGUMENTS)},
            }
            for i in range(knobs.tool_calls)
        ]
    choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": finish}
    if req.get("logprobs"):
        choice["logprobs"] = {
            "content": [_logprobs(token_text(i + index))["content"][0] for i in range(count)]
        }
    return choice


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    server = FakeUpstream(args.host, args.port, tokens=args.tokens, delay_ms=args.delay_ms)
    server.start()
    print(f"fake upstream on {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
