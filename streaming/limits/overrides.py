"""The limits in force: the deployment's defaults, a tenant's or user's overrides, their changes.

A tenant and a user are handled alike; what differs is looked up by ``scope`` ("tenant" or
"user"): the row, who may see it, and the ids a description names. Every change is audited (with
an actor), committed, and bumps the tenant's limits version so every worker reloads its cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis

from auth.access import APP_PRINCIPAL, Identity, may_manage
from auth.models import AppToken, Tenant, User, get_for_tenant, record_audit
from core.errors import ApiError
from core.store import db, get_redis, setting
from streaming.limits.keys import CACHE_MAX_AGE_S, LIMITS, MAX_LIMIT, Scope, version_key

log = logging.getLogger("streamgate.limits")

Row = Tenant | User | AppToken  # "user" scope: a user, or an app token ("app:<jti>")


def default_limits(scope: Scope) -> dict[str, int]:
    """The deployment's defaults for ``scope`` ("user" or "tenant"), from LIMIT_* variables."""
    return {key: int(setting(f"LIMIT_{scope.upper()}_{key.upper()}")) for key in LIMITS}


def clean_overrides(raw: Mapping[str, Any] | None) -> dict[str, int]:
    """The valid part of a stored override dict: known keys with non-negative integers."""
    out: dict[str, int] = {}
    for key, value in (raw or {}).items():
        if key in LIMITS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = min(value, MAX_LIMIT)
    return out


def effective(scope: Scope, overrides: Mapping[str, Any] | None) -> dict[str, int]:
    """The defaults of ``scope`` overlaid with the valid part of ``overrides``."""
    return {**default_limits(scope), **clean_overrides(overrides)}


def get_effective_limits(tenant_id: str, user_id: str | None = None) -> dict[str, dict[str, int]]:
    """``{"tenant": {...}, "user": {...}}``: the limits in force, read from SQL (no cache).

    For an app token with ``end_user_limits`` also ``"end_user"``: the limits each of its end
    users has (only the keys set; the others are not limited per end user).
    """
    out = {"tenant": effective("tenant", _overrides_of(_row("tenant", tenant_id)))}
    if user_id is not None:
        row = _row("user", user_id)
        out["user"] = effective("user", _overrides_of(row))
        end_user = clean_overrides(row.end_user_limits) if isinstance(row, AppToken) else None
        if end_user:
            out["end_user"] = end_user
    return out


def set_limits(
    scope: Scope,
    row_id: str,
    limits: Mapping[str, Any] | None,
    *,
    actor_id: str | None = None,
    reason: str | None = None,
) -> dict[str, int]:
    """Replace a tenant's or user's overrides (None or {} = the defaults); the limits in force.

    With ``actor_id`` an audit event (``tenant.limits.set`` / ``user.limits.set``, before and
    after) is written in the row's tenant, in the same transaction. Every worker sees the change
    on its next admission.
    """
    row = _row(scope, row_id)
    if row is None:
        raise _not_found(scope)
    tenant_id = _tenant_of(row)
    before, after = clean_overrides(row.limits), clean_overrides(limits)
    row.limits = after or None
    if actor_id is not None:
        record_audit(
            tenant_id=tenant_id,
            actor_id=actor_id,
            action=f"{scope}.limits.set",
            target_type=scope,
            target_id=row_id,
            reason=reason,
            details={"before": before, "after": after},
        )
    db.session.commit()
    invalidate(tenant_id)
    return effective(scope, after)


def describe_limits(ident: Identity, scope: Scope, row_id: str) -> dict[str, Any]:
    """A tenant's or user's overrides, the defaults and the limits in force (admin API)."""
    row = _visible(ident, scope, row_id)
    clean = clean_overrides(row.limits)
    return {
        **_ids(row),
        "overrides": clean,
        "defaults": default_limits(scope),
        "effective": effective(scope, clean),
    }


def update_limits(
    ident: Identity, scope: Scope, row_id: str, limits: Mapping[str, Any], reason: str | None
) -> dict[str, Any]:
    """Replace overrides as ``ident``: a user's by their tenant's admins and operators, a
    tenant's by operators only (a tenant's own admin may only read them)."""
    row = _visible(ident, scope, row_id)
    if scope == "tenant" and not ident.is_operator:
        raise ApiError(403, "Only an operator may change a tenant's limits.", code="forbidden")
    if isinstance(row, User) and not may_manage(ident, row):
        raise ApiError(403, "Only an operator may change an operator.", code="forbidden")
    set_limits(scope, row.id, _present(limits), actor_id=ident.user_id, reason=reason)
    return describe_limits(ident, scope, row.id)


def invalidate(tenant_id: str) -> None:
    """Make every worker reload the limits of ``tenant_id`` and its users on next use."""
    try:
        get_redis().incr(version_key(tenant_id))
    except redis.RedisError:
        # Admission cannot run without Redis either; once it is back, caches expire on their own.
        log.warning(
            "limits of tenant %s changed but Redis is unavailable: caches refresh within %ss",
            tenant_id,
            CACHE_MAX_AGE_S,
        )


def _row(scope: Scope, row_id: str) -> Row | None:
    if scope == "tenant":
        return db.session.get(Tenant, row_id)
    if row_id.startswith(APP_PRINCIPAL):
        return db.session.get(AppToken, row_id[len(APP_PRINCIPAL) :])
    return db.session.get(User, row_id)


def _overrides_of(row: Row | None) -> dict[str, int] | None:
    return row.limits if row is not None else None


def _tenant_of(row: Row) -> str:
    return row.id if isinstance(row, Tenant) else row.tenant_id


def _ids(row: Row) -> dict[str, str]:
    if isinstance(row, Tenant):
        return {"tenant_id": row.id}
    if isinstance(row, AppToken):
        return {"jti": row.jti, "tenant_id": row.tenant_id}
    return {"user_id": row.id, "tenant_id": row.tenant_id}


def _not_found(scope: Scope) -> ApiError:
    return ApiError(404, f"No such {scope}.", code=f"{scope}_not_found")


def _visible(ident: Identity, scope: Scope, row_id: str) -> Tenant | User:
    """The row if ``ident`` may see its limits, else a 404 (another tenant's row included).

    Operators see every tenant and user; an admin sees their own tenant and its users.
    """
    row: Tenant | User | None
    if scope == "tenant":
        row = db.session.get(Tenant, row_id)
        if row is not None and not ident.is_operator and row.id != ident.tenant_id:
            row = None
    else:
        row = get_for_tenant(User, ident.tenant_scope, row_id)
    if row is None:
        raise _not_found(scope)
    return row


def _present(limits: Mapping[str, Any]) -> dict[str, int]:
    return {key: value for key, value in limits.items() if key in LIMITS and value is not None}
