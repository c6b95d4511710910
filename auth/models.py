"""Durable identity records: tenants, users, sessions, app tokens, revocations and the audit log.

Every tenant-owned row carries ``tenant_id``; look rows up through ``get_for_tenant`` so another
tenant's object is indistinguishable from a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.store import UTCDateTime, db, new_id, utcnow

ROLES = ("member", "admin", "operator")
SCOPES = ("chat", "read", "admin")


class Tenant(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ten"))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    # Tokens of the tenant issued before this instant are refused (SQL truth behind Redis).
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Completion webhooks: the origins a stream's webhook_url may point at (None: no webhooks)
    # and the tenant's signing secret (Standard Webhooks' "whsec_<base64>").
    webhook_origins: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    webhook_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"
    __table_args__ = (Index("uq_users_tenant_email", "tenant_id", "email", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("usr"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="member")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Bumped by every change that must kill the user's tokens (demotion, sign-out, disable);
    # every token carries the version it was signed under (claim ``ver``).
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AppToken(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "app_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # An app token is a principal of its own (``Identity.principal_id``): its own model allow-list
    # (a subset of the tenant's; None = the tenant's) and its own limit overrides (None = the
    # per-user defaults). Its traffic never spends its owner's limits.
    models: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    limits: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    # The limits each end user of the app has (OpenAI's `user` field), each apart from the others
    # and within the app's own (None: end users are not limited apart).
    end_user_limits: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)


class AuthSession(db.Model):  # type: ignore[name-defined,misc]
    """One login: a family of refresh tokens, of which only ``refresh_jti`` is current."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ses"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    device: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(64))
    refresh_jti: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class RevokedToken(db.Model):  # type: ignore[name-defined,misc]
    """A revoked JWT (a logged-out access token), kept until it would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("aud"))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    actor_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


M = TypeVar("M")


def get_for_tenant(model: type[M], tenant_id: str | None, object_id: str) -> M | None:
    """Fetch ``model`` by primary key, or None when it belongs to another tenant.

    ``tenant_id=None`` means an operator, who may see every tenant.
    """
    row = db.session.get(model, object_id)
    if row is None:
        return None
    if tenant_id is not None and getattr(row, "tenant_id", None) != tenant_id:
        return None
    return row


def record_audit(
    tenant_id: str | None,
    actor_id: str | None,
    action: str,
    target_type: str,
    target_id: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit row to the current transaction; the caller commits it with the action."""
    event = AuditEvent(
        tenant_id=tenant_id,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        reason=reason,
        details=details,
    )
    db.session.add(event)
    return event
