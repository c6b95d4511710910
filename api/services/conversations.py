"""Conversations of the chat page: stored per user, each reply a channel-mode stream.

A turn sends the whole history to the model (system prompt, every earlier message and reply),
through the same admission, limits and stream record as any ``POST /v1/streams``.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.models import DEFAULT_TITLE, Conversation, ConversationTurn
from api.pagination import Rows
from api.schemas.streams import StreamCreateSchema
from api.services import streams
from api.services.generations import start_generation
from auth.access import Identity
from core.errors import ApiError
from core.store import db, utcnow
from streaming.generation import Generation
from streaming.models import TERMINAL, StreamRecord

SETTINGS = ("model", "system_prompt", "temperature", "top_p", "max_tokens")


def owned(ident: Identity, conversation_id: str) -> Conversation:
    """The caller's own conversation; anyone else's (same tenant or not) is a 404."""
    row = db.session.get(Conversation, conversation_id)
    if row is None or row.tenant_id != ident.tenant_id or row.user_id != ident.user_id:
        raise ApiError(404, "No such conversation.", code="conversation_not_found")
    return row


def listing(tenant_id: str, user_id: str) -> Rows[dict[str, Any]]:
    """The user's conversations, most recently used first (paged by the route)."""
    turns = (
        select(func.count(ConversationTurn.id))
        .where(ConversationTurn.conversation_id == Conversation.id)
        .scalar_subquery()
    )
    query = (
        select(Conversation, turns)
        .where(Conversation.tenant_id == tenant_id, Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
    )
    return Rows(query, lambda row: summary(row[0], int(row[1])))


def summary(row: Conversation, turn_count: int) -> dict[str, Any]:
    out = {name: getattr(row, name) for name in (*SETTINGS, "id", "title")}
    out.update(turn_count=turn_count, created_at=row.created_at, updated_at=row.updated_at)
    return out


def detail(row: Conversation) -> dict[str, Any]:
    """The conversation with its turns, each with its reply as its stream describes it."""
    out = summary(row, len(row.turns))
    replies = _replies(row)
    out["turns"] = [turn_view(turn, replies.get(turn.stream_id or "")) for turn in row.turns]
    return out


def _replies(row: Conversation) -> dict[str, dict[str, Any]]:
    """Each turn's reply, described by its stream (the records read in one query)."""
    ids = [turn.stream_id for turn in row.turns if turn.stream_id]
    if not ids:
        return {}
    records = db.session.scalars(select(StreamRecord).where(StreamRecord.id.in_(ids)))
    return {record.id: streams.describe(record) for record in records}


def turn_view(turn: ConversationTurn, reply: dict[str, Any] | None = None) -> dict[str, Any]:
    if reply is None and turn.stream_id:
        record = db.session.get(StreamRecord, turn.stream_id)
        reply = streams.describe(record) if record is not None else None
    return {
        "id": turn.id,
        "position": turn.position,
        "content": turn.content,
        "model": turn.model,
        "stream_id": turn.stream_id,
        "created_at": turn.created_at,
        "reply": reply,
    }


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    # A system prompt is sent with every turn: one that could never fit is refused up front.
    limit = current_app.config["MAX_PROMPT_CHARS"]
    if len(fields.get("system_prompt") or "") > limit:
        message = f"The system prompt is too long: at most {limit} characters."
        raise ApiError(
            400,
            message,
            param="system_prompt",
            code="context_length_exceeded",
            errors={"system_prompt": [message]},
        )
    return fields


def create(ident: Identity, fields: dict[str, Any]) -> Conversation:
    _checked(fields)
    row = Conversation(tenant_id=ident.tenant_id, user_id=ident.user_id, **fields)
    db.session.add(row)
    db.session.commit()
    return row


def update(row: Conversation, fields: dict[str, Any]) -> Conversation:
    _checked(fields)
    for name, value in fields.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    db.session.commit()
    return row


def delete(ident: Identity, row: Conversation) -> None:
    """Forget the conversation and its turns; a reply still running is cancelled (nobody could
    read it any more). The streams stay: they are the usage record."""
    ids = [turn.stream_id for turn in row.turns if turn.stream_id]
    running = db.session.scalars(
        select(StreamRecord.id).where(StreamRecord.id.in_(ids), StreamRecord.status == "running")
    ).all()
    db.session.delete(row)
    db.session.commit()
    for stream_id in running:
        streams.request_cancel(stream_id, ident.user_id, "conversation deleted")


def history(row: Conversation) -> list[dict[str, Any]]:
    """The messages a new turn continues: system prompt, then each message and its reply.

    A reply that is still running makes the conversation busy (409); a reply that ended with no
    text (failed, stopped before its first token) leaves its message unanswered.
    """
    messages: list[dict[str, Any]] = []
    if row.system_prompt:
        messages.append({"role": "system", "content": row.system_prompt})
    replies = _replies(row)
    for turn in row.turns:
        messages.append({"role": "user", "content": turn.content})
        reply = replies.get(turn.stream_id or "")
        if reply is None:
            continue
        if reply["status"] not in TERMINAL:
            raise ApiError(
                409,
                "A reply is still being written in this conversation; stop it or wait.",
                code="reply_running",
            )
        if reply.get("text"):
            messages.append({"role": "assistant", "content": reply["text"]})
    return messages


def _request(row: Conversation, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The turn's ``POST /v1/streams`` body, validated by that route's own schema."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    for name in ("temperature", "top_p", "max_tokens"):
        if getattr(row, name) is not None:
            body[name] = getattr(row, name)
    try:
        return StreamCreateSchema().load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ApiError(
            400,
            "This conversation is too long to continue; start a new one.",
            code="conversation_too_long",
            errors={"messages": exc.messages},
        ) from exc


def add_turn(
    ident: Identity, row: Conversation, content: str, model: str | None
) -> tuple[ConversationTurn, Generation, dict[str, str]]:
    """Record the user's message and start its reply as a channel-mode stream.

    The turn's place is claimed first (a unique position), so two sends at once cannot both
    continue the same history; if the stream cannot start, the claim is withdrawn.
    """
    model = model or row.model
    if not model:
        raise ApiError(
            422, "Choose a model.", code="model_required", errors={"model": ["Required."]}
        )
    messages = history(row)
    messages.append({"role": "user", "content": content})
    body = _request(row, model, messages)
    turn = ConversationTurn(
        conversation_id=row.id, position=len(row.turns), content=content, model=model
    )
    db.session.add(turn)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise ApiError(
            409, "Another message was just sent in this conversation.", code="turn_conflict"
        ) from exc
    try:
        gen, headers = start_generation(ident, body, mode="channel")
    except Exception:
        db.session.rollback()
        db.session.delete(turn)
        db.session.commit()
        raise
    turn.stream_id = gen.stream_id
    row.model = model
    row.updated_at = utcnow()
    if len(row.turns) == 1 and row.title == DEFAULT_TITLE:
        row.title = _title_of(content)
    db.session.commit()
    return turn, gen, headers


def _title_of(content: str) -> str:
    """A first message, made a title: one line, at most 60 characters."""
    line = "".join(ch for ch in " ".join(content.split()) if ch.isprintable())
    return (line[:57] + "...") if len(line) > 60 else (line or DEFAULT_TITLE)
