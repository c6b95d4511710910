"""Channel mode from a client's side: start streams, read the hub (httpx-sse or the Flask test
client), compare readings, count open hub connections."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

TERMINAL = {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}


def prompt(**knobs: Any) -> str:
    """A user message carrying a fake-upstream directive, e.g. ``prompt(tokens=50, delay_ms=5)``."""
    return "hello [[fake " + " ".join(f"{k}={v}" for k, v in knobs.items()) + "]]"


def stream_body(max_tokens: int = 2000, **knobs: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt(**knobs)}],
    }


def channel_generation(tenant_id: str, user_id: str, token_jti: str, prompt_estimate: int) -> Any:
    """A channel-mode ``Generation`` of ``fake-model`` with a new stream id, as admission copies
    it out of a request (no messages, no settings): for driving a run's pieces directly."""
    from core.store import new_id
    from streaming.generation import Generation

    return Generation(
        stream_id=new_id("str"),
        tenant_id=tenant_id,
        user_id=user_id,
        token_jti=token_jti,
        mode="channel",
        model="fake-model",
        messages=[],
        params={},
        prompt_estimate=prompt_estimate,
    )


def add_stream_record(tenant_id: str, user_id: str, **columns: Any) -> Any:
    """A stream record added to the session (current app context; the caller commits): a
    completed channel-mode stream of ``fake-model`` with a new id unless ``columns`` say else."""
    from core.store import db, new_id
    from streaming.models import StreamRecord

    row = {"id": new_id("str"), "mode": "channel", "model": "fake-model", "status": "completed"}
    record = StreamRecord(tenant_id=tenant_id, user_id=user_id, **{**row, **columns})
    db.session.add(record)
    return record


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]


@dataclass
class Reading:
    """What one connection to the hub delivered."""

    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    body: Any = None  # the JSON error body when status != 200
    eof: bool = False  # the server closed the stream (as opposed to the client stopping)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events if e.event != "ping"]

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events if e.event != "ping"]

    @property
    def last_id(self) -> str | None:
        return self.events[-1].id if self.events else None


def read_hub(
    client: httpx.Client,
    channel: str,
    headers: dict[str, str] | None = None,
    *,
    last_event_id: str | None = None,
    via: str = "header",
    stop_after: int | None = None,
    stop_when: Callable[[Event], bool] | None = None,
    params: dict[str, str] | None = None,
    skip_pings: bool = True,
) -> Reading:
    """Open ``GET /v1/events?channel=...`` and read until the server closes, or the client stops.

    ``stop_after``: the client hangs up after that many (non-ping) events; ``stop_when``: after the
    first event it is true for. ``via``: send ``last_event_id`` as the header or the query string.
    """
    query = {"channel": channel, **(params or {})}
    hdrs = dict(headers or {})
    if last_event_id is not None:
        if via == "header":
            hdrs["Last-Event-ID"] = last_event_id
        else:
            query["last_event_id"] = last_event_id
    with connect_sse(client, "GET", "/v1/events", params=query, headers=hdrs) as source:
        response = source.response
        reading = Reading(response.status_code, response.headers)
        if response.status_code != 200:
            response.read()
            reading.body = response.json() if response.content else None
            return reading
        if stop_after == 0:
            return reading
        for sse in source.iter_sse():
            if sse.data == "":
                continue  # httpx-sse yields a ``retry:``-only block; EventSource dispatches nothing
            event = Event(sse.id, sse.event, json.loads(sse.data))
            if event.event == "ping" and skip_pings:
                continue
            reading.events.append(event)
            if (stop_after is not None and len(reading.events) >= stop_after) or (
                stop_when and stop_when(event)
            ):
                return reading
        reading.eof = True
        return reading


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def assert_continuous(events: list[Event]) -> None:
    """Token events cover indexes 0.. without a gap or an overlap (``index`` + ``count``)."""
    expected = 0
    for e in events:
        if e.event == "token":
            assert e.data["index"] == expected, (e.data, expected)
            assert e.data["count"] >= 1
            expected += e.data["count"]


def start_stream(
    client: httpx.Client | Any, headers: dict[str, str], **knobs: Any
) -> dict[str, Any]:
    """POST /v1/streams (httpx or Flask test client); returns the 202 body."""
    max_tokens = knobs.pop("max_tokens", 2000)
    response = client.post("/v1/streams", json=stream_body(max_tokens, **knobs), headers=headers)
    assert response.status_code == 202, (
        response.text if hasattr(response, "text") else response.get_data()
    )
    body = response.json() if callable(getattr(response, "json", None)) else response.get_json()
    return dict(body)


class HubReader:
    """An in-process hub response (Flask test client, ``buffered=False``), read event by event."""

    def __init__(self, response: Any) -> None:
        from httpx_sse._decoders import SSEDecoder, SSELineDecoder

        self.response = response
        self.events: list[Event] = []
        self.eof = False
        self._chunks = iter(response.response)
        self._lines = SSELineDecoder()
        self._decoder = SSEDecoder()

    @property
    def status(self) -> int:
        return int(self.response.status_code)

    def read(
        self, until: Callable[[Event], bool] | None = None, limit: int = 100_000
    ) -> list[Event]:
        """Read until ``until`` holds for an event, or the server ends the stream (bounded)."""
        for _ in range(limit):
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.eof = True
                return self.events
            for line in self._lines.decode(chunk.decode("utf-8")):
                sse = self._decoder.decode(line)
                if sse is None or sse.data == "":
                    continue
                event = Event(sse.id, sse.event, json.loads(sse.data))
                self.events.append(event)
                if until is not None and until(event):
                    return self.events
        raise AssertionError("read limit reached")

    def close(self) -> None:
        self.response.close()


def open_hub(
    client: Any, channel: str, headers: dict[str, str] | None = None, **query: str
) -> HubReader:
    """GET /v1/events in-process without buffering; the caller reads and closes it."""
    return HubReader(
        client.get(
            "/v1/events",
            query_string={"channel": channel, **query},
            headers=headers or {},
            buffered=False,
        )
    )


def say_hi(client: Any, headers: dict[str, str], fake_upstream: Any) -> dict[str, Any]:
    """POST /v1/streams saying "hi" to a fake upstream reset to 3 tokens; the body as returned."""
    fake_upstream.reset(tokens=3)
    return dict(
        client.post(
            "/v1/streams",
            headers=headers,
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        ).get_json()
    )


def issue_ticket(client: Any, channel: str, headers: dict[str, str]) -> str:
    """A one-time hub ticket for ``channel`` (POST /v1/events/tickets, Flask test client)."""
    response = client.post("/v1/events/tickets", json={"channel": channel}, headers=headers)
    return str(response.get_json()["ticket"])


def get_with_ticket(client: Any, channel: str, ticket: str) -> Any:
    """GET /v1/events with a ticket and no Authorization header (buffered: for refusals)."""
    return client.get("/v1/events", query_string={"channel": channel, "ticket": ticket})


def tenant_of(user: Any) -> Any:
    """The tenant row of ``user`` (current app context), to create colleagues with ``make_user``."""
    from auth.models import Tenant
    from core.store import db

    return db.session.get(Tenant, user.tenant_id)


def read_live(
    live: Any, channel: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> Reading:
    """``read_hub`` on its own connection to the live server (for reader threads)."""
    with live.client() as client:
        return read_hub(client, channel, headers, **kwargs)


def active_subscribers(client: httpx.Client) -> float:
    """``streamgate_active_subscribers`` from /metrics: summed over the live workers."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("streamgate_active_subscribers "):
            return float(line.split()[1])
    return 0.0


def open_subscriptions(
    client: httpx.Client, url: str, headers: dict[str, str], count: int
) -> list[tuple[httpx.Response, Any]]:
    """Open ``count`` hub connections to ``url`` and read each one's first flush; each as
    (response, its byte iterator). Keep both: a collected iterator hangs up."""
    opened = []
    for _ in range(count):
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        assert response.status_code == 200
        chunks = response.iter_bytes()
        next(chunks)  # the first flush
        opened.append((response, chunks))
    return opened
