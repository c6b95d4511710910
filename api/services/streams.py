"""Channel-mode services: launch a background run, describe, list, cancel, issue tickets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app
from sqlalchemy import select

from api.pagination import Rows
from auth.access import Identity, may_act_on, may_read, parse_channel
from auth.models import User
from auth.tickets import issue_ticket
from core.errors import ApiError
from core.store import db, get_redis
from streaming import control, state
from streaming.channel import LogSink, assemble_tool_calls
from streaming.control import ControlMessage
from streaming.generation import Generation, stream_channel
from streaming.greenlets import spawn
from streaming.log import event_log
from streaming.models import TERMINAL, StreamRecord
from streaming.runner import RunHandle, run_generation


def events_url(channel: str) -> str:
    return "/v1/events?channel=" + channel


def launch(app: Flask, gen: Generation) -> None:
    """Run the generation in a greenlet of this worker, decoupled from the request."""
    spawn(run_generation, app, RunHandle(gen), LogSink(app, gen))


def accepted(gen: Generation) -> dict[str, Any]:
    channel = stream_channel(gen.stream_id)
    return {
        "id": gen.stream_id,
        "channel": channel,
        "events_url": events_url(channel),
        "status": "running",
    }


def user_streams(tenant_id: str, user_id: str, status: str | None) -> Rows[dict[str, Any]]:
    """The user's own streams, newest first (paged by the route: one page read from SQL)."""
    query = select(StreamRecord).where(
        StreamRecord.tenant_id == tenant_id, StreamRecord.user_id == user_id
    )
    if status:
        query = query.where(StreamRecord.status == status)
    newest_first = query.order_by(StreamRecord.created_at.desc(), StreamRecord.id.desc())
    return Rows(newest_first, lambda row: describe(row[0], with_text=False))


def visible_stream(ident: Identity, stream_id: str) -> StreamRecord:
    """The stream if the caller may see it (owner, tenant admin, operator); else 404."""
    record = db.session.get(StreamRecord, stream_id)
    if record is None:
        raise ApiError(404, "No such stream.", code="stream_not_found")
    if ident.is_operator and ident.is_admin:
        return record
    if record.tenant_id != ident.tenant_id or (
        record.user_id != ident.user_id
        and not (ident.is_admin and may_act_on(ident, record.user_id))  # never an operator's
    ):
        raise ApiError(404, "No such stream.", code="stream_not_found")
    return record


def _so_far(record: StreamRecord) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The text and the assembled tool calls: from the record once final, else from the log."""
    if record.status in TERMINAL and record.text is not None:
        return record.text, record.tool_calls
    if record.mode != "channel":
        return record.text, record.tool_calls
    rows = event_log(current_app._get_current_object()).replay(  # type: ignore[attr-defined]
        stream_channel(record.id), None
    )
    parts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for _, event, data in rows:
        if event == "token":
            parts.append(json.loads(data).get("text", ""))
        elif event == "tool_call":
            assemble_tool_calls(calls, json.loads(data).get("tool_calls") or [])
    return "".join(parts), [calls[i] for i in sorted(calls)] or None


def _ended(live: dict[str, str]) -> datetime | None:
    # Between the end of a run and its record's final write, the live state knows the time.
    return datetime.fromtimestamp(float(live["ended"]), UTC) if live.get("ended") else None


def describe(record: StreamRecord, with_text: bool = True) -> dict[str, Any]:
    """A stream as the API shows it; live fields come from Redis until the record is final.

    A run ends in the live state first and in its SQL record a moment later: in between, the
    live state has the outcome, so a reader who sees ``completed`` also sees its usage.
    """
    live = state.live_status(record.id) if record.status == "running" else {}
    status = live.get("status", record.status)
    ended = bool(live.get("ended"))
    completion = int(live.get("tokens") or record.completion_tokens or 0)
    prompt = int(live.get("prompt_tokens") or record.prompt_tokens) if ended else None
    prompt = record.prompt_tokens if prompt is None else prompt
    finish_reason = record.finish_reason or (live.get("finish_reason") or None)
    error_code = record.error_code or (live.get("error_code") or None)
    error_message = record.error_message or (live.get("error_message") or None)
    channel = stream_channel(record.id)
    out: dict[str, Any] = {
        "id": record.id,
        "channel": channel,
        "events_url": events_url(channel),
        "user_id": record.user_id,
        "mode": record.mode,
        "model": record.model,
        "status": status,
        "created_at": record.created_at,
        "finished_at": record.finished_at or _ended(live),
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "error": ({"code": error_code, "message": error_message} if error_code else None),
    }
    if with_text:
        out["text"], out["tool_calls"] = _so_far(record)
        out["messages"], out["settings"] = record.prompt, record.settings
    return out


def cancel(ident: Identity, record: StreamRecord) -> dict[str, Any]:
    """Ask the worker running the stream to stop it; 409 if it already ended."""
    live = state.live_status(record.id)
    if record.status in TERMINAL or live.get("status", "running") != "running":
        raise ApiError(
            409,
            f"The stream already ended ({live.get('status', record.status)}).",
            code="stream_finished",
        )
    request_cancel(record.id, ident.user_id, "cancelled by user")
    out = describe(record, with_text=False)
    out["status"] = "cancelling"
    return out


def request_cancel(stream_id: str, by: str, reason: str) -> None:
    """Tell whichever worker runs the stream to cancel it (a no-op for one that has ended)."""
    message = ControlMessage(control.CANCEL_STREAM, stream_id=stream_id, by=by, reason=reason)
    control.send(get_redis(), message, int(current_app.config["STREAM_MAX_DURATION_S"]))


def ticket(ident: Identity, claims: dict[str, Any], channel: str) -> dict[str, Any]:
    """A one-time ticket for ``channel``, if the caller may read it (else 400/403)."""
    parse_channel(channel)

    def owner_of(object_id: str) -> tuple[str, str] | None:
        if object_id.startswith("str_"):
            return state.owner(object_id)
        user = db.session.get(User, object_id)
        return (user.tenant_id, user.id) if user is not None else None

    if not may_read(ident, channel, owner_of=owner_of):
        raise ApiError(403, "You may not read this channel.", code="channel_forbidden")
    value, ttl = issue_ticket(claims, channel)
    return {
        "ticket": value,
        "expires_in": ttl,
        "channel": channel,
        "events_url": events_url(channel) + "&ticket=" + value,
    }
