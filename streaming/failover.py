"""Failover before the first chunk: one client request, each upstream serving its model tried once.

An attempt that fails before the model server's first chunk (connection refused, connect timeout,
no response headers within ``LLM_READ_TIMEOUT_S``, 401/403/408/429 or 5xx, the connection dropped)
goes to the next candidate: nothing has reached the client yet. A refusal that is the request's own
fault (any other 4xx: 400, 404, 413, 422) is answered as it is. Once a chunk has arrived the
upstream keeps the request: a failure after it travels in-band as before (a second upstream would
repeat or change text the client already has).

Both modes go through ``open_stream``; closing its iterator closes the request on whichever
upstream serves it (disconnect, cancel, revoke) and gives back that upstream's lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import openai
from flask import Flask

from core.store import get_redis
from streaming import upstreams
from streaming.generation import Generation
from streaming.log_writer import with_redis_retry
from streaming.providers import Chunk, Provider
from streaming.upstreams import NoUpstream, Slot

log = logging.getLogger("streamgate.failover")

Opener = Callable[[Provider, dict[str, Any]], Iterator[Chunk]]
"""Starts one attempt: the upstream's provider and the request (its own model name set)."""

# 4xx answers that say nothing about the request: another upstream may well take it.
_NOT_THE_REQUESTS_FAULT = frozenset({401, 403, 408, 429})


def failure_kind(exc: BaseException) -> str | None:
    """What went wrong with the upstream, or None when it was not the upstream's failure."""
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError | httpx.ConnectError):
        return "connect"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500:
            return "status_5xx"
        if status in _NOT_THE_REQUESTS_FAULT:
            return "rate_limited" if status == 429 else f"status_{status}"
        return None
    if isinstance(exc, httpx.TransportError):
        return "dropped"
    return None


def open_stream(app: Flask, gen: Generation, open_attempt: Opener) -> Iterator[Chunk]:
    """The generation's chunks from the first upstream that answers; records which one did."""
    rt = upstreams.router(app)
    metrics = app.extensions["streamgate.metrics"]
    client = get_redis()
    retry_s = app.config["REDIS_RETRY_S"]
    candidates = rt.order(gen.model)
    if not candidates:
        raise NoUpstream(f"No model server serves '{gen.model}'.", busy=False)
    started = time.monotonic()
    last_error: Exception | None = None
    while candidates:
        try:
            # Like the run's log appends, the lease rides out a Redis restart or a Cluster
            # failover (REDIS_RETRY_S) rather than failing a stream that was admitted.
            slot = with_redis_retry(
                partial(upstreams.take, client, rt, candidates, gen.stream_id), retry_s
            )
        except NoUpstream:
            if last_error is not None:
                raise last_error from None  # the others are full: what the last one said
            raise
        candidates = [u for u in candidates if u is not slot.upstream]
        name = slot.upstream.name
        gen.upstream = name
        gen.upstream_attempts += 1
        own = slot.upstream.spec.own_model(gen.model)
        request = gen.request if own == gen.model else {**gen.request, "model": own}
        metrics.upstream_requests.labels(name).inc()
        metrics.upstream_in_flight.labels(name).inc()
        chunks: Iterator[Chunk] | None = None
        try:
            chunks = open_attempt(slot.upstream.provider, request)
            first = next(chunks, None)
        except Exception as exc:
            _end_attempt(client, slot, gen, chunks, metrics)
            kind = failure_kind(exc)
            if kind is None:
                if isinstance(exc, openai.APIStatusError):
                    upstreams.succeeded(client, slot)  # it answered: alive, the request was bad
                raise
            _count_failure(client, rt, slot, kind, metrics)
            if not candidates:
                raise
            metrics.upstream_failovers.labels(name).inc()
            log.warning(
                "stream %s: upstream %s failed before its first chunk (%s); trying the next",
                gen.stream_id,
                name,
                kind,
                extra={"stream_id": gen.stream_id},
            )
            last_error = exc
            continue
        with_redis_retry(partial(upstreams.succeeded, client, slot), retry_s)
        yield from _stream(client, rt, slot, gen, chunks, first, started, metrics)
        return


def _stream(
    client: Any,
    rt: upstreams.Router,
    slot: Slot,
    gen: Generation,
    chunks: Iterator[Chunk],
    first: Chunk | None,
    started: float,
    metrics: Any,
) -> Iterator[Chunk]:
    """The chunks of the upstream that answered; its lease is given back however they end."""
    name = slot.upstream.name
    try:
        if first is None:
            return
        if first.tokens:
            metrics.upstream_ttft.labels(name).observe(time.monotonic() - started)
        else:
            yield first
            for chunk in chunks:
                if chunk.tokens:
                    metrics.upstream_ttft.labels(name).observe(time.monotonic() - started)
                    first = chunk
                    break
                yield chunk
            else:
                return
        yield first
        yield from chunks
    except GeneratorExit:
        raise
    except Exception as exc:
        kind = failure_kind(exc)
        if kind is not None:
            _count_failure(client, rt, slot, kind, metrics)
        raise
    finally:
        _end_attempt(client, slot, gen, chunks, metrics)


def _count_failure(client: Any, rt: upstreams.Router, slot: Slot, kind: str, metrics: Any) -> None:
    metrics.upstream_failures.labels(slot.upstream.name, kind).inc()
    try:
        if upstreams.failed(client, rt, slot, kind):
            log.warning(
                "upstream %s is out of rotation for %ss after %s failures in a row",
                slot.upstream.name,
                rt.cooldown_s,
                rt.cooldown_failures,
            )
    except Exception:  # noqa: BLE001 - the request's own outcome matters more than the count
        log.warning("could not count a failure of upstream %s", slot.upstream.name, exc_info=True)


def _end_attempt(
    client: Any, slot: Slot, gen: Generation, chunks: Iterator[Chunk] | None, metrics: Any
) -> None:
    """Close the attempt's request and give back its lease (never raises)."""
    metrics.upstream_in_flight.labels(slot.upstream.name).dec()
    close = getattr(chunks, "close", None)
    try:
        if close is not None:
            close()
    except Exception:  # noqa: BLE001
        log.debug("closing an upstream request failed", exc_info=True)
    try:
        upstreams.release(client, slot, gen.stream_id)
    except Exception:  # noqa: BLE001 - the lease lapses on its own (LEASE_TTL_S)
        log.warning("could not release the lease on upstream %s", slot.upstream.name, exc_info=True)
