"""The connections to one model server: several small httpx pools instead of one large one.

httpcore (1.0.9, under httpx) keeps a pool's connections in one list and walks all of it when a
request starts and again when its response closes: each idle connection's socket is polled for
a server hang-up, and the check for surplus idle connections counts the whole list once per
idle connection. With a few hundred streams open to one model server, that walk was 6.6% of the
gateway's CPU at 200 concurrent channel-mode streams (py-spy), every request paying for all the
others. ``ShardedTransport`` splits the pool into ``shards`` independent pools of the same
total size and hands each request to the one with the fewest requests open (the first of
equals): a walk covers one shard's connections, and the surplus check falls with the square of
the shard's size. Requests one after another still share one connection (all go to the first
shard); concurrent ones spread evenly, each shard reusing its own connections.

Measured (``bench --scenario latency.channel``, 200 concurrent streams at 20 ms a token, more
than two cores carry): with 8 shards the gateway's CPU a token was 231-295 us (median of nine
runs 278) against 286-310 (median of five 298) with one pool, and total p50 5.6-6.6 s against
6.7-7.4 s; 2 and 4 shards fell in between. What got worse at that overload: the 202 of
``POST /v1/streams`` came after 0.7-1.1 s instead of 40-80 ms, nearly all of it before the app
saw the request (gunicorn's access log put the handler at 0.10 s p50), and TTFT p50 rose to
1.9-3.6 s from 1.2-1.7. Below saturation (50 streams) neither moved. docs/performance.md has
the runs.

httpx reads proxy settings from the environment only for a client it builds its own transport
for; each shard is given the proxy the environment names for the model server (``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, read by the standard library's rules), so a
deployment that reaches its model server through a proxy still does.
"""

from __future__ import annotations

import math
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from core.io import readable_now

SHARDS = 8  # pools per model server: a walk covers about an eighth of the connections


class ShardedTransport(httpx.BaseTransport):
    """``httpx.HTTPTransport``, ``shards`` times over, each with a share of ``limits``."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        verify: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        shards: int = SHARDS,
    ) -> None:
        def share(total: int | None) -> int | None:
            return None if total is None else max(1, math.ceil(total / shards))

        per_shard = httpx.Limits(
            max_connections=share(limits.max_connections),
            max_keepalive_connections=share(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self.shards = [
            httpx.HTTPTransport(verify=verify, limits=per_shard, proxy=proxy) for _ in range(shards)
        ]
        for shard in self.shards:
            _check_idle_without_yielding(shard)
        self.open = [0] * shards  # requests sent through each shard and not yet closed

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # No wait between the choice and the count (one thread, or one greenlet at a time).
        index = self.open.index(min(self.open))
        self.open[index] += 1
        try:
            response = self.shards[index].handle_request(request)
        except BaseException:
            self.open[index] -= 1
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Counted(response.stream, self.open, index),
            extensions=response.extensions,
        )

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


class _Counted(httpx.SyncByteStream):
    """A response body that tells its shard it is done when it is closed (once)."""

    def __init__(self, stream: Any, counts: list[int], index: int) -> None:
        self.stream = stream
        self.counts: list[int] | None = counts
        self.index = index

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)

    def close(self) -> None:
        counts, self.counts = self.counts, None
        try:
            self.stream.close()
        finally:
            if counts is not None:
                counts[self.index] -= 1


def _check_idle_without_yielding(transport: httpx.HTTPTransport) -> None:
    """Give ``transport``'s httpcore pool connections whose idle check asks the OS.

    httpcore polls the socket of each idle connection of a pool (a hang-up by the server?)
    whenever a request starts or a response closes, with ``select.poll``: under gevent a
    cooperative poll that yields to the event loop, once per idle connection, before the
    request is even sent (``core.io``). httpx builds the pool and keeps it private: where its
    attributes are not found (another httpx), the pool is left as it is, and
    ``tests/streaming/test_http_pool.py`` fails.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _QuietBackend):
        pool._network_backend = _QuietBackend(backend)  # type: ignore[union-attr]


class _QuietBackend(httpcore.NetworkBackend):
    """httpcore's backend, its connections' idle check answered by ``core.io.readable_now``."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _QuietStream(self.inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _QuietStream(self.inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _QuietStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout)

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _QuietStream(self.inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            sock = self.inner.get_extra_info("socket")
            if sock is not None:
                return readable_now(sock)
        return self.inner.get_extra_info(info)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None (none set, or ``NO_PROXY``)."""
    parts = urlsplit(url)
    proxies: dict[str, Any] = urllib.request.getproxies_environment()
    host = parts.hostname or ""
    if proxies.get("no") and urllib.request.proxy_bypass(host):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return str(proxy) if proxy else None


def model_server_client(
    base_url: str, timeout: httpx.Timeout, limits: httpx.Limits, verify: ssl.SSLContext | bool
) -> httpx.Client:
    """The httpx client for one model server: sharded pools, the environment's proxy."""
    transport = ShardedTransport(limits=limits, verify=verify, proxy=environment_proxy(base_url))
    return httpx.Client(timeout=timeout, transport=transport)
