# flask-smorest's decorators are untyped; the views themselves are typed.
# mypy: disable-error-code="untyped-decorator"
"""``/v1/conversations``: the chat page's history, stored per user; each reply is a stream."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint, Page

from api.idempotency import idempotent
from api.limits import rate_limited
from api.schemas.conversations import (
    ConversationCreateSchema,
    ConversationDetailSchema,
    ConversationSchema,
    ConversationUpdateSchema,
    TurnAcceptedSchema,
    TurnCreateSchema,
)
from api.services import conversations as service
from api.services import streams
from auth.access import current_identity, require
from core.store import db

bp = Blueprint(
    "conversations",
    __name__,
    url_prefix="/v1/conversations",
    description="Conversations: your chat history; each reply is a channel-mode stream",
)


@bp.get("")
@require("read")
@rate_limited  # a page read from SQL
@bp.response(200, ConversationSchema(many=True))
@bp.paginate(Page)
def list_conversations() -> Any:
    """List your conversations, most recently used first."""
    ident = current_identity()
    return service.listing(ident.tenant_id, ident.user_id)


@bp.post("")
@require("chat")
@idempotent()
@bp.arguments(ConversationCreateSchema)
@bp.response(201, ConversationSchema)
def create_conversation(body: dict[str, Any]) -> dict[str, Any]:
    """Start a conversation (a title and the settings its replies use)."""
    return service.summary(service.create(current_identity(), body), 0)


@bp.get("/<conversation_id>")
@require("read")
@bp.response(200, ConversationDetailSchema)
def get_conversation(conversation_id: str) -> dict[str, Any]:
    """A conversation with its turns and their replies (text so far while one runs)."""
    return service.detail(service.owned(current_identity(), conversation_id))


@bp.patch("/<conversation_id>")
@require("chat")
@bp.arguments(ConversationUpdateSchema)
@bp.response(200, ConversationSchema)
def update_conversation(body: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """Rename a conversation or change its settings (only the fields given)."""
    row = service.update(service.owned(current_identity(), conversation_id), body)
    return service.summary(row, len(row.turns))


@bp.delete("/<conversation_id>")
@require("chat")
@bp.response(204)
def delete_conversation(conversation_id: str) -> None:
    """Delete a conversation and its turns; a reply still running is cancelled (the streams stay
    in your usage)."""
    ident = current_identity()
    service.delete(ident, service.owned(ident, conversation_id))


@bp.post("/<conversation_id>/turns")
@require("chat")
@idempotent()
@bp.arguments(TurnCreateSchema)
@bp.response(202, TurnAcceptedSchema)
def create_turn(
    body: dict[str, Any], conversation_id: str
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Send a message: its reply starts as a channel-mode stream with the whole history."""
    ident = current_identity()
    row = service.owned(ident, conversation_id)
    turn, gen, limit_headers = service.add_turn(ident, row, body["content"], body.get("model"))
    out = {"turn": service.turn_view(turn), "stream": streams.accepted(gen)}
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    db.session.remove()
    streams.launch(app, gen)
    return out, 202, {"X-Stream-Id": gen.stream_id, **limit_headers}
