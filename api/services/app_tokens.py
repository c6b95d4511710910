"""App tokens as principals: their own model allow-list and limits, and the limits each of their
end users has, set at issue or later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.services.generations import allowed_models
from auth.access import Identity
from auth.models import AppToken, get_for_tenant, record_audit
from core.errors import ApiError
from core.store import db
from streaming.limits.overrides import clean_overrides, invalidate

#: What an admin sets on an app token (at issue or by PATCH), apart from its name and scopes.
POLICY = ("models", "limits", "end_user_limits")


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


def checked_policy(tenant_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The policy fields present in ``changes``, as stored: models checked against the tenant's,
    limits without their null keys (None when nothing is left: the defaults / not limited)."""
    out: dict[str, Any] = {}
    if "models" in changes:
        out["models"] = checked_models(tenant_id, changes["models"])
    for name in ("limits", "end_user_limits"):
        if name in changes:
            out[name] = clean_overrides(changes[name]) or None
    return out


def update_app_token(ident: Identity, jti: str, changes: dict[str, Any]) -> AppToken:
    """Change an app token's models, limits and end-user limits (a key left out is unchanged;
    None resets it)."""
    row = get_for_tenant(AppToken, ident.tenant_scope, jti)
    if row is None:
        raise ApiError(404, "No such app token.", code="token_not_found")
    before = {name: getattr(row, name) for name in POLICY}
    for name, value in checked_policy(row.tenant_id, changes).items():
        setattr(row, name, value)
    record_audit(
        tenant_id=row.tenant_id,
        actor_id=ident.user_id,
        action="app_token.update",
        target_type="app_token",
        target_id=row.jti,
        details={"before": before, "after": {name: getattr(row, name) for name in POLICY}},
    )
    db.session.commit()
    invalidate(row.tenant_id)  # every worker reloads the token's limits on its next request
    return row
