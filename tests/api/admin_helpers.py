"""Helpers for the admin tests: tenants and users, generations, hub and direct streams."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from httpx_sse._decoders import SSEDecoder, SSELineDecoder

Headers = dict[str, str]


def plain(row: Any, *names: str) -> SimpleNamespace:
    """The fields of a row, detached from any session (views end the request's session)."""
    return SimpleNamespace(**{name: getattr(row, name) for name in names})


def build_world(
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., Headers],
) -> dict[str, Any]:
    """Two tenants, each with an admin and a member, and an operator in a third.

    ``world["a"]`` and ``world["b"]``: ``tenant`` (id, slug), ``admin`` and ``member`` (id, email)
    and their headers ``admin_h`` and ``member_h``; ``operator`` (id, email, tenant_id) and
    ``operator_h``. Call it in an app context (the ``app`` fixture).
    """
    out: dict[str, Any] = {}
    for name in ("a", "b"):
        tenant = make_tenant()
        admin, member = make_user(tenant, role="admin"), make_user(tenant)
        out[name] = {
            "tenant": plain(tenant, "id", "slug"),
            "admin": plain(admin, "id", "email"),
            "member": plain(member, "id", "email"),
            "admin_h": auth_headers(admin),
            "member_h": auth_headers(member),
        }
    operator = make_user(make_tenant(), role="operator")
    out["operator_h"] = auth_headers(operator)
    out["operator"] = plain(operator, "id", "email", "tenant_id")
    return out


def gen_body(*, max_tokens: int = 400, stream: bool | None = None, **knobs: Any) -> dict[str, Any]:
    """A chat request steering the fake upstream; by default a slow stream that runs for seconds."""
    knobs = {"infinite": 1, "delay_ms": 20, **knobs}
    directive = " ".join(f"{k}={v}" for k, v in knobs.items())
    body: dict[str, Any] = {
        "model": "fake-model",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"go [[fake {directive}]]"}],
    }
    if stream is not None:
        body["stream"] = stream
    return body


def start_channel(client: Any, headers: Headers, **knobs: Any) -> str:
    """POST /v1/streams; returns the stream id."""
    response = client.post("/v1/streams", json=gen_body(**knobs), headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


@dataclass
class Event:
    event: str
    id: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Reader:
    """An open in-process streaming response (hub or direct mode), read frame by frame."""

    response: Any
    events: list[Event] = field(default_factory=list)
    eof: bool = False

    def __post_init__(self) -> None:
        self._chunks: Iterator[bytes] = iter(self.response.response)
        self._lines = SSELineDecoder()
        self._decoder = SSEDecoder()

    @property
    def status(self) -> int:
        return int(self.response.status_code)

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events if e.event != "ping"]

    def read(self, until: Callable[[Event], bool] | None = None) -> list[Event]:
        """Read until ``until(event)`` holds or the server ends the response; returns new events."""
        start = len(self.events)
        for chunk in self._chunks:
            for line in self._lines.decode(chunk.decode() if isinstance(chunk, bytes) else chunk):
                sse = self._decoder.decode(line)
                if sse is None or (sse.data == "" and sse.event == "message"):
                    continue
                event = Event(sse.event, sse.id, sse.data)
                self.events.append(event)
                if until is not None and until(event):
                    return self.events[start:]
        self.eof = True
        return self.events[start:]

    def close(self) -> None:
        self.response.close()


def open_hub(client: Any, channel: str, headers: Headers) -> Reader:
    """GET /v1/events?channel=... without buffering; reads the first frame (headers flushed)."""
    response = client.get(
        "/v1/events", query_string={"channel": channel}, headers=headers, buffered=False
    )
    reader = Reader(response)
    if response.status_code == 200:
        next(reader._chunks)  # the "connected" comment: the subscription is registered
    return reader


def open_direct(client: Any, headers: Headers, **knobs: Any) -> Reader:
    """POST /v1/chat/completions with stream=true, without buffering."""
    response = client.post(
        "/v1/chat/completions", json=gen_body(stream=True, **knobs), headers=headers, buffered=False
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return Reader(response)
