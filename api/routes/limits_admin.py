# mypy: disable-error-code="untyped-decorator"
"""``/v1/admin/tenants/<id>/limits`` and ``/v1/admin/users/<id>/limits``: read and set limits.

Operators read and set any tenant's limits; a tenant's admin reads their own tenant's and reads and
sets their users'. Another tenant's tenant or user is a 404. Every change is audited.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema

from api.schemas.limits import LimitsUpdateSchema, TenantLimitsSchema, UserLimitsSchema
from auth.access import current_identity, require
from streaming.limits import Scope, describe_limits, update_limits

bp = Blueprint(
    "limits_admin",
    __name__,
    url_prefix="/v1/admin",
    description="Per-tenant and per-user limits: requests, concurrency, tokens",
)


def _limits_routes(scope: Scope, schema: type[Schema], get_doc: str, set_doc: str) -> None:
    """``GET`` and ``PUT /<scope>s/<id>/limits``: the same two views for tenants and users."""
    path = f"/{scope}s/<string:{scope}_id>/limits"

    def get_limits(**ids: str) -> dict[str, Any]:
        return describe_limits(current_identity(), scope, ids[f"{scope}_id"])

    def set_limits(body: dict[str, Any], **ids: str) -> dict[str, Any]:
        reason = body.pop("reason", None)
        return update_limits(current_identity(), scope, ids[f"{scope}_id"], body, reason)

    get_limits.__name__, get_limits.__doc__ = f"get_{scope}_limits", get_doc
    set_limits.__name__, set_limits.__doc__ = f"set_{scope}_limits", set_doc
    admin = require("admin", admin=True)
    bp.get(path)(admin(bp.response(200, schema)(get_limits)))
    bp.put(path)(admin(bp.arguments(LimitsUpdateSchema)(bp.response(200, schema)(set_limits))))


_limits_routes(
    "tenant",
    TenantLimitsSchema,
    "A tenant's limits: its overrides, the defaults and what is in force.",
    "Replace a tenant's overrides (operators); omitted or null keys use the defaults.",
)
_limits_routes(
    "user",
    UserLimitsSchema,
    "A user's limits: their overrides, the defaults and what is in force.",
    "Replace a user's overrides; omitted or null keys use the defaults.",
)
