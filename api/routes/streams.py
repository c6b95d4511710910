"""Channel mode: start generations that outlive any connection, and manage them."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_jwt_extended import get_jwt
from flask_smorest import Blueprint, Page

from api.idempotency import idempotent
from api.limits import rate_limited
from api.schemas.streams import (
    StreamAcceptedSchema,
    StreamCreateSchema,
    StreamListQuerySchema,
    StreamSchema,
    TicketRequestSchema,
    TicketSchema,
)
from api.services import streams as service
from api.services import webhooks
from api.services.generations import start_generation
from auth.access import current_identity, require
from core.store import db

bp = Blueprint("streams", __name__, url_prefix="/v1", description="Channel-mode generations")


@bp.post("/streams")
@require("chat")
@idempotent()
@bp.arguments(StreamCreateSchema)
@bp.response(202, StreamAcceptedSchema)
def create_stream(body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a generation in the background; read it from its channel."""
    ident = current_identity()
    webhook_url = webhooks.checked_url(ident.tenant_id, body.get("webhook_url"))
    gen, limit_headers = start_generation(ident, body, mode="channel", webhook_url=webhook_url)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    db.session.remove()
    service.launch(app, gen)
    return service.accepted(gen), 202, {"X-Stream-Id": gen.stream_id, **limit_headers}


@bp.get("/streams")
@require("read")
@rate_limited  # up to 1000 rows from SQL
@bp.arguments(StreamListQuerySchema, location="query")
@bp.response(200, StreamSchema(many=True))
@bp.paginate(Page)
def list_streams(query: dict[str, Any]) -> Any:
    """List your own streams, newest first."""
    ident = current_identity()
    return service.user_streams(ident.tenant_id, ident.user_id, query.get("status"))


@bp.get("/streams/<stream_id>")
@require("read")
@bp.response(200, StreamSchema)
def get_stream(stream_id: str) -> dict[str, Any]:
    """A stream's status, usage and the text so far."""
    return service.describe(service.visible_stream(current_identity(), stream_id))


@bp.delete("/streams/<stream_id>")
@require("chat")
@bp.response(202, StreamSchema)
def cancel_stream(stream_id: str) -> dict[str, Any]:
    """Cancel a running generation (its subscribers get `stream.cancelled`)."""
    ident = current_identity()
    record = service.visible_stream(ident, stream_id)
    return service.cancel(ident, record)


@bp.post("/events/tickets")
@require("read")
@rate_limited  # each ticket opens a hub connection: reconnect storms count as requests
@bp.arguments(TicketRequestSchema)
@bp.response(201, TicketSchema)
def create_event_ticket(body: dict[str, Any]) -> dict[str, Any]:
    """Exchange your token for a one-time ticket to open one channel with EventSource."""
    return service.ticket(current_identity(), dict(get_jwt()), body["channel"])
