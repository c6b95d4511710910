"""The durable record of one generation, direct or channel mode."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.store import UTCDateTime, db, new_id, utcnow

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "revoked")
TERMINAL = frozenset({"completed", "failed", "cancelled", "revoked"})


class StreamRecord(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "streams"
    __table_args__ = (
        Index("ix_streams_tenant_created", "tenant_id", "created_at"),
        Index("ix_streams_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("str"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    token_jti: Mapped[str | None] = mapped_column(String(64), default=None)
    mode: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    # Channel mode: the tool calls the model made, assembled from their streamed pieces.
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(32), default=None)
    revoke_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # The OpenAI `user` field: the caller's own end user (opaque; an app's user id).
    end_user: Mapped[str | None] = mapped_column(String(256), default=None)
    # Channel mode: the messages and sampling settings the generation was asked for, so a
    # client attaching to it later (another tab or device) can show what was asked.
    prompt: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The model server (LLM_UPSTREAMS name) that served it, and how many were tried to get there.
    upstream: Mapped[str | None] = mapped_column(String(64), default=None)
    upstream_attempts: Mapped[int | None] = mapped_column(Integer, default=None)


class WebhookDelivery(db.Model):  # type: ignore[name-defined,misc]
    """One completion webhook of one stream: its payload, where it goes and every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at"),
        Index("ix_webhook_deliveries_status_lease", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("msg"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body that is signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending")  # delivered | failed
    attempts: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # A worker delivering it holds it until then; a pending row past its lease is picked up again
    # by any worker (the one that held it stopped).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
