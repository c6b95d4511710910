# mypy: disable-error-code="untyped-decorator"
"""``/v1/admin/webhooks``: the tenant's webhook allow-list and secret, and every delivery."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint, Page

from api.schemas.webhooks import (
    WebhookDeliveryQuerySchema,
    WebhookDeliverySchema,
    WebhookSettingsSchema,
    WebhookSettingsUpdateSchema,
)
from api.services import webhooks as service
from auth.access import current_identity, require

bp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/admin/webhooks",
    description="Completion webhooks: allowed origins, the signing secret, delivery attempts",
)


@bp.get("")
@require("admin", admin=True)
@bp.response(200, WebhookSettingsSchema)
def get_webhook_settings() -> dict[str, Any]:
    """Your tenant's webhook origins and signing secret."""
    return service.settings(current_identity().tenant_id)


@bp.put("")
@require("admin", admin=True)
@bp.arguments(WebhookSettingsUpdateSchema)
@bp.response(200, WebhookSettingsSchema)
def set_webhook_settings(body: dict[str, Any]) -> dict[str, Any]:
    """Replace your tenant's webhook origins (and optionally rotate the secret)."""
    ident = current_identity()
    return service.update_settings(
        ident.tenant_id, ident.user_id, body["origins"], body["rotate_secret"]
    )


@bp.get("/deliveries")
@require("admin", admin=True)
@bp.arguments(WebhookDeliveryQuerySchema, location="query")
@bp.response(200, WebhookDeliverySchema(many=True))
@bp.paginate(Page)
def list_webhook_deliveries(query: dict[str, Any]) -> Any:
    """Your tenant's webhook deliveries and each attempt, newest first."""
    return service.deliveries(
        current_identity().tenant_id, query.get("stream_id"), query.get("status")
    )
