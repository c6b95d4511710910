# mypy: disable-error-code="untyped-decorator"
"""``/v1/admin/tenants/<id>/limits`` and ``/v1/admin/users/<id>/limits``: read and set limits.

Operators read and set any tenant's limits; a tenant's admin reads their own tenant's and reads and
sets their users'. Another tenant's tenant or user is a 404. Every change is audited.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.schemas.limits import LimitsUpdateSchema, TenantLimitsSchema, UserLimitsSchema
from auth.access import current_identity, require
from streaming.limits import describe_limits, update_limits

bp = Blueprint(
    "limits_admin",
    __name__,
    url_prefix="/v1/admin",
    description="Per-tenant and per-user limits: requests, concurrency, tokens",
)


@bp.get("/tenants/<string:tenant_id>/limits")
@require("admin", admin=True)
@bp.response(200, TenantLimitsSchema)
def get_tenant_limits(tenant_id: str) -> dict[str, Any]:
    """A tenant's limits: its overrides, the defaults and what is in force."""
    return describe_limits(current_identity(), "tenant", tenant_id)


@bp.put("/tenants/<string:tenant_id>/limits")
@require("admin", admin=True)
@bp.arguments(LimitsUpdateSchema)
@bp.response(200, TenantLimitsSchema)
def set_tenant_limits(body: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """Replace a tenant's overrides (operators); omitted or null keys use the defaults."""
    reason = body.pop("reason", None)
    return update_limits(current_identity(), "tenant", tenant_id, body, reason)


@bp.get("/users/<string:user_id>/limits")
@require("admin", admin=True)
@bp.response(200, UserLimitsSchema)
def get_user_limits(user_id: str) -> dict[str, Any]:
    """A user's limits: their overrides, the defaults and what is in force."""
    return describe_limits(current_identity(), "user", user_id)


@bp.put("/users/<string:user_id>/limits")
@require("admin", admin=True)
@bp.arguments(LimitsUpdateSchema)
@bp.response(200, UserLimitsSchema)
def set_user_limits(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Replace a user's overrides; omitted or null keys use the defaults."""
    reason = body.pop("reason", None)
    return update_limits(current_identity(), "user", user_id, body, reason)
