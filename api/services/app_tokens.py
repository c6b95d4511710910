"""App tokens as principals: their own model allow-list and limits, set at issue or later."""

from __future__ import annotations

from typing import Any

from api.services.generations import allowed_models
from auth.access import Identity
from auth.models import AppToken, get_for_tenant, record_audit
from core.errors import ApiError
from core.store import db
from streaming.limits.overrides import clean_overrides, invalidate


def checked_models(tenant_id: str, models: list[str] | None) -> list[str] | None:
    """``models`` if every one is on the tenant's allow-list (None: the tenant's); else 400."""
    if models is None:
        return None
    tenant_models = allowed_models(tenant_id)
    unknown = [m for m in models if m not in tenant_models]
    if unknown:
        raise ApiError(
            400,
            f"Not on this tenant's model allow-list: {', '.join(unknown)}.",
            code="model_not_allowed",
            errors={"models": [f"Choose from: {', '.join(tenant_models)}."]},
        )
    return sorted(set(models))


def update_app_token(ident: Identity, jti: str, changes: dict[str, Any]) -> AppToken:
    """Change an app token's models and limits (a key left out is unchanged; None resets it)."""
    row = get_for_tenant(AppToken, ident.tenant_scope, jti)
    if row is None:
        raise ApiError(404, "No such app token.", code="token_not_found")
    before = {"models": row.models, "limits": row.limits}
    if "models" in changes:
        row.models = checked_models(row.tenant_id, changes["models"])
    if "limits" in changes:
        row.limits = clean_overrides(changes["limits"]) or None
    record_audit(
        tenant_id=row.tenant_id,
        actor_id=ident.user_id,
        action="app_token.update",
        target_type="app_token",
        target_id=row.jti,
        details={"before": before, "after": {"models": row.models, "limits": row.limits}},
    )
    db.session.commit()
    invalidate(row.tenant_id)  # every worker reloads the token's limits on its next request
    return row
