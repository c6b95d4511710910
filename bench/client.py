"""The load client: a lean asyncio HTTP/1.1 + SSE reader that timestamps every event.

Why not httpx: at 200 concurrent streams of 50 tokens/s the client must read 10,000 events a second
on the same two cores as the gateway it measures; httpx + httpx-sse cost several times more CPU per
event than this ``asyncio.Protocol`` (which parses in ``data_received`` with no task switch). The
client's own cost is measured on every run (CPU per token, event-loop lag) and reported beside the
results so a saturated client is visible rather than silently inflating the gateway's numbers.

Every event is stamped with ``time.perf_counter()`` (intervals) and ``time.time()`` (compared with
timestamps written by other processes, e.g. Redis stream entry ids) when its bytes arrive.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import json
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.fake_upstream import token_text

OnEvent = Callable[[str, str, str | None, float, float], None]

_PREFIX_LENGTHS: list[int] = [0]


def tokens_in_text(length: int) -> int:
    """How many whole fake-upstream tokens a completion of ``length`` characters holds."""
    while _PREFIX_LENGTHS[-1] < length:
        _PREFIX_LENGTHS.append(_PREFIX_LENGTHS[-1] + len(token_text(len(_PREFIX_LENGTHS) - 1)))
    return bisect.bisect_right(_PREFIX_LENGTHS, length) - 1


class HTTPError(Exception):
    """A response that was not the expected status (carries the status and body)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class _Protocol(asyncio.Protocol):
    """One HTTP/1.1 exchange; the body is handed to an SSE parser or collected whole."""

    def __init__(
        self, on_event: OnEvent | None, on_comment: Callable[[float], None] | None
    ) -> None:
        self.on_event = on_event
        self.on_comment = on_comment
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Streams read ``done`` only; an unread failure of ``head`` must not be logged as lost.
        self.head.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.t_head = 0.0
        self.t_done = 0.0  # perf_counter when the response ended or the connection closed
        self._buf = bytearray()
        self._head_done = False
        self._chunked = False
        self._length: int | None = None
        self._chunk_left = 0  # data bytes left in the current chunk
        self._crlf_left = 0  # bytes of the CRLF that ends the current chunk
        self._sse = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.feed(data, time.perf_counter(), time.time())

    def feed(self, data: bytes, now: float, wall: float) -> None:
        """Bytes read at ``now`` (perf_counter) and ``wall`` (the wall clock)."""
        if not self._head_done:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end].decode("latin-1").split("\r\n")
            rest = bytes(self._buf[end + 4 :])
            self._buf.clear()
            self.status = int(head[0].split(" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
            if "content-length" in self.headers:
                self._length = int(self.headers["content-length"])
            self._head_done = True
            self.t_head = now
            if not self.head.done():
                self.head.set_result((self.status, self.headers))
            data = rest
            if not data and self._length == 0:
                self._finish()
                return
        if self._chunked:
            self._dechunk(data, now, wall)
        else:
            self._body(data, now, wall)
            if self._length is not None and len(self.body) >= self._length:
                self._finish()

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(exc or ConnectionError("connection closed before the response"))
        self._finish()

    # --- body -------------------------------------------------------------------------------

    def _finish(self) -> None:
        if not self.done.done():
            # Stamped here, not in a done callback: callbacks run a loop turn later, and a reader
            # that sees ``done`` first would find no time yet.
            self.t_done = time.perf_counter()
            self.done.set_result(None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _dechunk(self, data: bytes, now: float, wall: float) -> None:
        self._buf += data
        while self._buf:
            if self._crlf_left:
                take = min(self._crlf_left, len(self._buf))
                del self._buf[:take]
                self._crlf_left -= take
                continue
            if self._chunk_left:
                take = min(self._chunk_left, len(self._buf))
                self._body(bytes(self._buf[:take]), now, wall)
                del self._buf[:take]
                self._chunk_left -= take
                if not self._chunk_left:
                    self._crlf_left = 2
                continue
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self._buf[:line_end]).split(b";")[0] or b"0", 16)
            del self._buf[: line_end + 2]
            if size == 0:
                self._finish()
                return
            self._chunk_left = size

    def _body(self, data: bytes, now: float, wall: float) -> None:
        if self.on_event is None or self.status != 200:
            self.body += data
            return
        self._sse += data
        end = self._sse.rfind(b"\n")
        if end < 0:
            return
        lines = bytes(self._sse[:end]).split(b"\n")
        del self._sse[: end + 1]
        # Our servers end lines with LF (CRLF tolerated); JSON data never holds a raw CR.
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if self._data or self._event:
                    self.on_event(
                        self._event or "message", "\n".join(self._data), self._id, now, wall
                    )
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
            elif name == "" and self.on_comment is not None:
                self.on_comment(now)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def json(self) -> Any:
        """The body of a non-SSE answer (an error, a refusal) decoded, or None."""
        try:
            return json.loads(bytes(self.body)) if self.body else None
        except ValueError:
            return None

    def cut(self) -> None:
        """Drop the connection the way a lost network does: a reset, no orderly close.

        No TIME_WAIT is left behind, so a load test that cuts often does not run out of ports.
        """
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; Python 3.11's socket module lacks the name): each
# read also returns the time the kernel received its newest bytes, as a struct timespec.
SO_TIMESTAMPNS = 35


class _KernelStamped:
    """A connection read with ``recvmsg``: every read is stamped with the kernel's receive time.

    The fan-out measures delivery to the subscriber's socket, not to this process: with a
    thousand connections on a shared machine the load client itself falls behind, and stamping
    bytes when Python gets to them would charge its backlog to the gateway. When one read holds
    several events, all get the newest bytes' time, which can only overstate their lag.
    Implements the few transport calls ``_Protocol`` makes.
    """

    def __init__(self, sock: socket.socket, proto: _Protocol) -> None:
        self.sock = sock
        self.proto = proto
        self.loop = asyncio.get_running_loop()
        self.closing = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(262144, 64)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(exc)
            return
        if not data:
            self.proto.eof_received()
            self.close()
            return
        now, wall = time.perf_counter(), time.time()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                stamped = sec + nsec / 1e9
                now, wall = now - (wall - stamped), stamped
        self.proto.feed(data, now, wall)

    def is_closing(self) -> bool:
        return self.closing

    def close(self, exc: Exception | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.proto.connection_lost(exc)

    abort = close

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


def _request_bytes(
    host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(
    url: str,
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    on_event: OnEvent | None = None,
    on_comment: Callable[[float], None] | None = None,
    kernel_stamps: bool = False,
    source: str | None = None,
) -> _Protocol:
    """Open a connection to ``url`` (scheme://host:port), send one request, return its protocol.

    ``kernel_stamps``: stamp what is read with the kernel's receive time (``_KernelStamped``).
    ``source``: the local address to connect from (another loopback address has its own ports).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    hdrs = dict(headers or {})
    body = b""
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    loop = asyncio.get_running_loop()
    request = _request_bytes(host, port, method, parts.path.rstrip("/") + path, hdrs, body)
    if kernel_stamps:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
        except BaseException:
            sock.close()
            raise
        stamped = _Protocol(on_event, on_comment)
        stamped.connection_made(_KernelStamped(sock, stamped))  # type: ignore[arg-type]
        return stamped
    _, proto = await loop.create_connection(
        lambda: _Protocol(on_event, on_comment),
        host,
        port,
        local_addr=(source, 0) if source else None,
    )
    assert proto.transport is not None
    proto.transport.write(request)
    return proto


async def request_json(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], Any]:
    """A plain request; returns (status, headers, decoded JSON body or None)."""
    proto = await exchange(url, method, path, headers=headers, json_body=json_body)
    try:
        await asyncio.wait_for(proto.done, timeout)
    finally:
        proto.close()
    try:
        payload = json.loads(bytes(proto.body)) if proto.body else None
    except ValueError:
        payload = None
    return proto.status, proto.headers, payload


# --- one stream -----------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What the client saw of one generation (times in seconds from ``t_start``)."""

    ok: bool = False
    status: int = 0
    error: str | None = None
    t_start: float = 0.0
    ttft: float | None = None
    total: float | None = None
    tokens: int = 0
    events: int = 0
    text_ok: bool = False
    stream_id: str | None = None
    head: float | None = None  # direct: response headers; channel: the 202 answer
    refused: str | None = None  # refused at the door (429 / 503): the error code it gave
    hub_retries: int = 0  # channel: hub connections refused (503) and tried again
    token_times: list[float] = field(default_factory=list)  # perf_counter of each token event
    lags_ms: list[float] = field(default_factory=list)  # channel: receive wall - entry id ms

    @property
    def admitted(self) -> bool:
        """The gateway took the work (direct: 200; channel: 202)."""
        return self.refused is None and self.status in (200, 202)

    @property
    def gaps(self) -> list[float]:
        times = self.token_times
        return [b - a for a, b in zip(times, times[1:], strict=False)]


def _error_code(body: Any) -> str:
    """The error code of a refusal in either envelope (Streamgate's or OpenAI's)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or "unknown")
        return str(body.get("error_code") or body.get("code") or "unknown")
    return "unknown"


def _check_text(result: StreamResult, pieces: list[str]) -> None:
    from bench.fake_upstream import expected_text

    text = "".join(pieces)
    result.tokens = tokens_in_text(len(text))
    result.text_ok = text == expected_text(result.tokens)


def _finish(result: StreamResult, pieces: list[str], end: float) -> StreamResult:
    """Settle a stream's result once it has ended: text check, TTFT, total time, ok."""
    _check_text(result, pieces)
    if result.token_times:
        result.ttft = result.token_times[0] - result.t_start
    result.total = end - result.t_start
    result.ok = result.error is None and result.tokens > 0
    return result


async def openai_stream(
    base_url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float
) -> StreamResult:
    """POST ``/chat/completions`` with stream=true and read the SSE to ``[DONE]`` or EOF."""
    result = StreamResult(t_start=time.perf_counter())
    pieces: list[str] = []
    finished = False

    def on_event(_name: str, data: str, _id: str | None, now: float, _wall: float) -> None:
        nonlocal finished
        result.events += 1
        if data == "[DONE]":
            finished = True
            return
        chunk = json.loads(data)
        if "error" in chunk:
            result.error = str(chunk["error"])[:200]
            return
        choices = chunk.get("choices") or []
        text = (choices[0].get("delta") or {}).get("content") if choices else None
        if text:
            pieces.append(text)
            result.token_times.append(now)

    proto: _Protocol | None = None
    try:
        proto = await exchange(
            base_url,
            "POST",
            "/chat/completions",
            headers={**headers, "Accept": "text/event-stream"},
            json_body=payload,
            on_event=on_event,
        )
        await asyncio.wait_for(proto.done, timeout)
        result.status = proto.status
        result.stream_id = proto.headers.get("x-stream-id")
        result.head = proto.t_head - result.t_start if proto.t_head else None
        if proto.status != 200:
            result.error = f"HTTP {proto.status}: {bytes(proto.body)[:200]!r}"
            if proto.status in (429, 503):
                try:
                    result.refused = _error_code(json.loads(bytes(proto.body)))
                except ValueError:
                    result.refused = "unreadable"
        elif not finished and result.error is None:
            result.error = "stream ended without [DONE]"
    except (TimeoutError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if proto is not None:
            proto.close()
    return _finish(result, pieces, time.perf_counter())


TERMINAL = {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}


def entry_ms(entry_id: str | None) -> int | None:
    """The millisecond part of a Redis stream entry id (``<ms>-<seq>``), if it looks like one."""
    if not entry_id:
        return None
    head, _, _ = entry_id.partition("-")
    return int(head) if head.isdigit() else None


async def channel_stream(
    base_url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    timeout: float,
    *,
    stream_path: str = "/v1/streams",
) -> StreamResult:
    """POST ``/v1/streams`` (202), then subscribe to its channel and read to the terminal event."""
    result = StreamResult(t_start=time.perf_counter())
    pieces: list[str] = []
    terminal: str | None = None

    last_entry: str | None = None

    def on_event(name: str, data: str, entry: str | None, now: float, wall: float) -> None:
        nonlocal terminal, last_entry
        result.events += 1
        if entry and name != "ping":
            last_entry = entry
        if name == "token":
            pieces.append(json.loads(data).get("text", ""))
            result.token_times.append(now)
            ms = entry_ms(entry)
            if ms is not None:
                result.lags_ms.append(wall * 1000 - ms)
        elif name in TERMINAL:
            terminal = name
            if name != "stream.completed":
                result.error = f"{name}: {data[:200]}"

    proto: _Protocol | None = None
    try:
        deadline = result.t_start + timeout
        status, _, body = await request_json(
            base_url, "POST", stream_path, headers=headers, json_body=payload, timeout=timeout
        )
        result.status = status
        result.head = time.perf_counter() - result.t_start
        if status != 202 or not isinstance(body, dict):
            result.refused = _error_code(body) if status in (429, 503) else None
            raise HTTPError(status, json.dumps(body).encode())
        result.stream_id = body.get("id")
        events = urlsplit(
            str(body.get("events_url") or f"/v1/events?channel={body.get('channel')}")
        )
        path = events.path + ("?" + events.query if events.query else "")
        while True:
            # A hub at capacity refuses new connections with 503 and Retry-After; the stream
            # itself goes on, so a client waits and connects again from the last id it has.
            resume = {"Last-Event-ID": last_entry} if last_entry else {}
            proto = await exchange(
                base_url,
                "GET",
                path,
                headers={**headers, **resume, "Accept": "text/event-stream"},
                on_event=on_event,
            )
            await asyncio.wait_for(proto.done, max(0.1, deadline - time.perf_counter()))
            if proto.status != 503 or time.perf_counter() + 1 > deadline:
                break
            result.hub_retries += 1
            proto.close()
            proto = None
            await asyncio.sleep(1.0)  # the hub's Retry-After
        if proto is None or proto.status not in (200, 204):
            status = proto.status if proto is not None else 0
            body_bytes = bytes(proto.body)[:200] if proto is not None else b""
            result.error = f"events HTTP {status}: {body_bytes!r}"
        elif terminal is None and result.error is None:
            result.error = "events ended without a terminal event"
    except (TimeoutError, OSError, HTTPError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if proto is not None:
            proto.close()
    return _finish(result, pieces, time.perf_counter())


# --- subscribers ----------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """One open hub connection; records what it receives until closed."""

    proto: _Protocol | None = None
    opened: float = 0.0  # perf_counter when the first byte (comment or event) arrived
    opened_wall: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    # (id, perf_counter, wall clock when received, wall clock when this client parsed it)
    token_recv: list[tuple[str | None, float, float, float]] = field(default_factory=list)
    terminal: str | None = None
    terminal_at: float = 0.0
    error: str | None = None

    @property
    def closed_at(self) -> float:
        """perf_counter when the response ended or the server closed; 0 while still open."""
        return self.proto.t_done if self.proto is not None else 0.0

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close()


def sort_opened(opened: list[Any]) -> tuple[list[Subscriber], dict[str, int]]:
    """Split what a gather of subscribe() calls returned: the subscribers, and failures counted
    by their (shortened) message."""
    subs = [s for s in opened if isinstance(s, Subscriber)]
    failures: dict[str, int] = {}
    for item in opened:
        if not isinstance(item, Subscriber):
            key = f"{type(item).__name__}: {item}"[:120]
            failures[key] = failures.get(key, 0) + 1
    return subs, failures


async def subscribe(
    base_url: str,
    path: str,
    headers: dict[str, str],
    *,
    keep_tokens: bool = False,
    timeout: float = 30.0,
    method: str = "GET",
    json_body: Any = None,
    kernel_stamps: bool = False,
    source: str | None = None,
) -> Subscriber:
    """Open an SSE response and wait for its first byte; raise on non-200.

    A hub connection by default; ``method="POST"`` with a chat body follows a direct-mode stream
    instead, whose in-band ``{"error": ...}`` counts as its terminal event ``error``.
    """
    sub = Subscriber()
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def mark_open(now: float) -> None:
        if not sub.opened:
            sub.opened, sub.opened_wall = now, time.time()
        if not first.done():
            first.set_result(None)

    def on_event(name: str, data: str, entry: str | None, now: float, wall: float) -> None:
        mark_open(now)
        sub.events[name] = sub.events.get(name, 0) + 1
        if name == "token" and keep_tokens:
            sub.token_recv.append((entry, now, wall, time.time()))
        elif name in TERMINAL:
            sub.terminal, sub.terminal_at = name, now
        elif name == "message" and data.startswith('{"error"') and sub.terminal is None:
            sub.terminal, sub.terminal_at = "error", now

    sub.proto = await exchange(
        base_url,
        method,
        path,
        headers={**headers, "Accept": "text/event-stream"},
        json_body=json_body,
        on_event=on_event,
        on_comment=mark_open,
        kernel_stamps=kernel_stamps,
        source=source,
    )
    proto = sub.proto
    try:
        await asyncio.wait_for(asyncio.shield(proto.head), timeout)
        if proto.status != 200:
            await asyncio.wait_for(asyncio.shield(proto.done), timeout)
            raise HTTPError(proto.status, bytes(proto.body))
        await asyncio.wait_for(
            asyncio.wait({first, proto.done}, return_when="FIRST_COMPLETED"), timeout
        )
        if not first.done():
            raise ConnectionError("hub closed the connection before its first byte")
    except BaseException:
        proto.close()
        raise
    return sub


# --- load shapes and the client's own cost --------------------------------------------------------


async def closed_loop(
    make: Callable[[int], Awaitable[StreamResult]],
    *,
    concurrency: int,
    total: int,
    ramp_s: float,
    deadline_s: float,
) -> list[StreamResult]:
    """Keep ``concurrency`` streams in flight until ``total`` have started or the deadline passes.

    The first wave is spread evenly over ``ramp_s`` so the measurement is of steady concurrency,
    not of ``concurrency`` simultaneous connects.
    """
    results: list[StreamResult] = []
    started = 0
    stop_at = time.perf_counter() + deadline_s

    async def worker(slot: int) -> None:
        nonlocal started
        await asyncio.sleep(ramp_s * slot / max(1, concurrency))
        while started < total and time.perf_counter() < stop_at:
            index = started
            started += 1
            results.append(await make(index))

    tasks = [asyncio.create_task(worker(slot)) for slot in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), deadline_s + 60)
    except TimeoutError:
        for task in tasks:
            task.cancel()
    return results


@contextlib.contextmanager
def collection_held() -> Iterator[None]:
    """No garbage collection in this process while the block runs.

    A reader stamps what one read returns with the kernel's time for the newest bytes
    (``_KernelStamped``), so a pause of this process makes every event that arrived during it
    look as late as the last one. Following one stream with 1,000 subscribers, the client holds
    ~200,000 receive records, and a full collection of them stopped it for 156-224 ms: the
    fan-out's lag p99 was that pause (2026-12-04, ``gc.callbacks`` beside the per-event lags).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class ClientCost:
    """The load client's own CPU time and event-loop lag over a measured interval."""

    cpu_s: float = 0.0
    loop_lag_ms: list[float] = field(default_factory=list)
    _cpu0: float = 0.0
    _task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def _probe(self, interval: float) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            self.loop_lag_ms.append((time.perf_counter() - before - interval) * 1000)

    def start(self, interval: float = 0.01) -> ClientCost:
        self._cpu0 = self._cpu()
        self._task = asyncio.create_task(self._probe(interval))
        return self

    async def stop(self) -> ClientCost:
        self.cpu_s = self._cpu() - self._cpu0
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return self
