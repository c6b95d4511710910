"""Completion webhooks, the API's side: the tenant's allow-list and secret, the deliveries."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import select

from api.pagination import Rows
from auth.models import Tenant, record_audit
from core.errors import ApiError
from core.store import db
from streaming import webhooks
from streaming.models import WebhookDelivery


def _tenant(tenant_id: str) -> Tenant:
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise ApiError(404, "No such tenant.", code="tenant_not_found")
    return tenant


def checked_url(tenant_id: str, url: str | None) -> str | None:
    """A stream's ``webhook_url`` if the tenant's allow-list and the address rules let it; 400."""
    if url is None:
        return None
    allow_private = bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"])
    return webhooks.check_url(url, _tenant(tenant_id).webhook_origins, allow_private)


def settings(tenant_id: str) -> dict[str, Any]:
    """The tenant's webhook origins and signing secret."""
    tenant = _tenant(tenant_id)
    return {"origins": list(tenant.webhook_origins or []), "secret": tenant.webhook_secret}


def update_settings(
    tenant_id: str, actor_id: str, origins: list[str], rotate_secret: bool
) -> dict[str, Any]:
    """Replace the allow-list (a secret is made with the first one); audited."""
    normalized: list[str] = []
    for i, origin in enumerate(origins):
        value = webhooks.normalize_origin(origin)
        if value is None:
            raise ApiError(
                400,
                f"{origin!r} is not an origin: scheme://host[:port], http or https, no path.",
                code="invalid_origin",
                errors={"origins": {str(i): ["Not an origin."]}},
            )
        if value not in normalized:
            normalized.append(value)
    tenant = _tenant(tenant_id)
    tenant.webhook_origins = normalized
    if rotate_secret or tenant.webhook_secret is None:
        tenant.webhook_secret = webhooks.new_secret()
    record_audit(
        tenant_id=tenant_id,
        actor_id=actor_id,
        action="webhooks.update",
        target_type="tenant",
        target_id=tenant_id,
        details={"origins": normalized, "secret_rotated": bool(rotate_secret)},
    )
    db.session.commit()
    return settings(tenant_id)


def deliveries(tenant_id: str, stream_id: str | None, status: str | None) -> Rows[WebhookDelivery]:
    """The tenant's webhook deliveries with their attempts, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if stream_id:
        query = query.where(WebhookDelivery.stream_id == stream_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    newest_first = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return Rows(newest_first, lambda row: row[0])
