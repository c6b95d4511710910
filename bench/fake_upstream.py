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
  status         answer this HTTP status (e.g. 429, 500) with an OpenAI error body, no stream
  hang           accept the request, then never answer (a timeout upstream)
  infinite       never finish (until the client goes away)
  pad            append this many "x" to every streamed token (bulk, for slow-client tests)

Counters (``stats()`` or ``GET /_stats``): requests, active, completed, disconnects (client went
away before the response was complete), and the last request body.

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


def token_text(index: int) -> str:
    """The text of completion token ``index`` (deterministic)."""
    return VOCAB[index % len(VOCAB)]


def expected_text(count: int) -> str:
    """The full completion of ``count`` tokens."""
    return "".join(token_text(i) for i in range(count))


@dataclass
class Knobs:
    tokens: int = 8
    delay_ms: float = 0.0
    first_delay_ms: float = 0.0
    error_after: int = -1
    drop_after: int = -1
    status: int = 200
    hang: bool = False
    infinite: bool = False
    pad: int = 0  # append this many "x" to every streamed token (bulk for slow-client tests)

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
    last_body: dict[str, Any] = field(default_factory=dict)


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
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(json.loads(body or b"{}"), reader, writer)
        await self._send_json(writer, 404, {"error": {"message": "not found", "type": "not_found"}})
        return True

    async def _chat(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        messages = req.get("messages") or []
        last = str(messages[-1].get("content", "")) if messages else ""
        with self._lock:
            knobs = self.knobs.merged(last)
            # A request that outlives a reset() is counted where it began, never in the new
            # counters (a test would see another test's stream ending as -1 active).
            stats = self.stats
            stats.requests += 1
            stats.active += 1
            stats.last_body = req
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
                            "message": f"fake upstream status {knobs.status}",
                            "type": "server_error",
                            "param": None,
                            "code": str(knobs.status),
                        }
                    },
                )
                finished = True
                return True
            count = knobs.tokens
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
            if not req.get("stream"):
                await self._sleep_or_gone(knobs.first_delay_ms + knobs.delay_ms * count, reader)
                text = expected_text(count)
                usage.update(completion_tokens=count, total_tokens=usage["prompt_tokens"] + count)
                await self._send_json(
                    writer,
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": finish,
                            }
                        ],
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

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        try:
            await send(chunk({"role": "assistant", "content": ""}))
            await pause(knobs.first_delay_ms)
            for i in range(count):
                if i == knobs.drop_after:
                    writer.transport.abort()
                    raise _ClientGone
                if i == knobs.error_after:
                    await send(
                        {
                            "error": {
                                "message": "fake upstream failed mid-stream",
                                "type": "server_error",
                                "param": None,
                                "code": "upstream_error",
                            }
                        }
                    )
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                await pause(knobs.delay_ms)
                await send(chunk({"content": token_text(i) + "x" * knobs.pad}))
            usage.update(completion_tokens=count, total_tokens=usage["prompt_tokens"] + count)
            await send(chunk({}, finish))
            if (req.get("stream_options") or {}).get("include_usage"):
                final = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
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
