"""Admin console business logic: live streams, revocation, users, tenants, usage, audit.

Every function takes the caller's ``Identity`` first and plain arguments after it, and scopes
everything to ``ident.tenant_scope`` (a tenant admin: their tenant; an operator: all). Another
tenant's object is a 404, exactly like a missing one. Revoking (a stream, a user, an app token,
a tenant; a demotion) is ``streaming.revocation``'s: these functions check who may do it to what,
then call it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select

from api.pagination import Rows
from api.services.generations import refuse_unserved_models
from api.services.usage import period, usage_rows
from auth import service
from auth.access import Identity, may_act_on
from auth.models import AuditEvent, Tenant, User, get_for_tenant
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import db, get_redis
from streaming import limits, revocation, state, upstreams
from streaming.models import StreamRecord
from streaming.revocation import REVOCABLE
from streaming.subscriptions import subscriber_counts

# --- scoping ----------------------------------------------------------------------------------


def _not_found(kind: str) -> ApiError:
    return ApiError(404, f"{kind} not found.", code="not_found")


def require_operator(ident: Identity) -> None:
    """Refuse anyone but an operator (403, insufficient scope)."""
    if not (ident.is_operator and ident.is_admin):
        raise auth_error(
            "Operator role required", error="insufficient_scope", status=403, scope="admin"
        )


def scoped_tenant(ident: Identity, tenant_id: str | None) -> str | None:
    """The tenant a query is limited to: a tenant admin's own (asking for another: 404);
    an operator's choice (None: every tenant)."""
    if ident.tenant_scope is None:
        if tenant_id is not None and db.session.get(Tenant, tenant_id) is None:
            raise _not_found("Tenant")
        return tenant_id
    if tenant_id is not None and tenant_id != ident.tenant_scope:
        raise _not_found("Tenant")
    return ident.tenant_scope


def _user(ident: Identity, user_id: str) -> User:
    user = get_for_tenant(User, ident.tenant_scope, user_id)
    if user is None:
        raise _not_found("User")
    return user


def _not_yourself(ident: Identity, user_id: str, what: str) -> None:
    if user_id == ident.user_id:
        raise ApiError(409, f"You cannot {what} your own account.", code="conflict")


# --- live streams -----------------------------------------------------------------------------


def _emails(user_ids: set[str]) -> dict[str, str]:
    if not user_ids:
        return {}
    rows = db.session.execute(select(User.id, User.email).where(User.id.in_(user_ids)))
    return {row.id: row.email for row in rows}


def _started(live: dict[str, str]) -> datetime | None:
    created = live.get("created")
    return datetime.fromtimestamp(float(created), UTC) if created else None


def live_streams(
    ident: Identity, tenant_id: str | None, user_id: str | None, mode: str | None
) -> list[dict[str, Any]]:
    """The live streams the caller may see, newest first, filtered by tenant / user / mode."""
    tenant = scoped_tenant(ident, tenant_id)
    if user_id is not None:
        _user(ident, user_id)
    rows = [
        s
        for s in state.live_states()
        if (tenant is None or s.get("tenant") == tenant)
        and (user_id is None or s.get("user") == user_id)
        and (mode is None or s.get("mode") == mode)
    ]
    if ident.tenant_scope is not None:  # a tenant admin never sees an operator's streams
        visible = {u for u in {s.get("user", "") for s in rows} if may_act_on(ident, u)}
        rows = [s for s in rows if s.get("user", "") in visible]
    rows.sort(key=lambda s: float(s.get("created") or 0), reverse=True)
    counts = subscriber_counts([s["id"] for s in rows])
    emails = _emails({s["user"] for s in rows if s.get("user")})
    return [
        {
            "id": s["id"],
            "tenant_id": s.get("tenant"),
            "user_id": s.get("user"),
            "user_email": emails.get(s.get("user", "")),
            "token_jti": s.get("jti") or None,
            "mode": s.get("mode"),
            "model": s.get("model"),
            "status": s.get("status"),
            "started_at": _started(s),
            "tokens": int(s.get("tokens") or 0),
            "subscribers": counts[s["id"]],
            "revoked_by": s.get("revoked_by") or None,
            "revoke_reason": s.get("revoke_reason") or None,
        }
        for s in rows
    ]


def _stream(ident: Identity, stream_id: str) -> StreamRecord:
    record = get_for_tenant(StreamRecord, ident.tenant_scope, stream_id)
    if record is None or not may_act_on(ident, record.user_id):  # a tenant admin: no operator's
        raise ApiError(404, "No such stream.", code="stream_not_found")
    return record


def stream_detail(ident: Identity, stream_id: str) -> dict[str, Any]:
    """One stream, live or finished: its record overlaid with its live state."""
    record = _stream(ident, stream_id)
    live = state.live_status(record.id)
    status = live.get("status") or record.status
    tokens = int(live.get("tokens") or 0) if status in REVOCABLE else record.completion_tokens
    return {
        "id": record.id,
        "tenant_id": record.tenant_id,
        "user_id": record.user_id,
        "user_email": _emails({record.user_id}).get(record.user_id),
        "token_jti": record.token_jti,
        "mode": record.mode,
        "model": record.model,
        "status": status,
        "started_at": record.started_at or record.created_at,
        "finished_at": record.finished_at,
        "tokens": tokens,
        "prompt_tokens": record.prompt_tokens,
        "subscribers": subscriber_counts([record.id])[record.id],
        "revoked_by": live.get("revoked_by") or record.revoked_by,
        "revoke_reason": live.get("revoke_reason") or record.revoke_reason,
        "upstream": record.upstream,
        "upstream_attempts": record.upstream_attempts,
    }


# --- revocation -------------------------------------------------------------------------------


def revoke_stream(ident: Identity, stream_id: str, reason: str | None) -> dict[str, Any]:
    """Stop a stream on whatever node runs it (409 if it already ended otherwise)."""
    record = _stream(ident, stream_id)
    revocation.revoke_stream(record, ident.user_id, reason)
    return stream_detail(ident, record.id)


def revoke_user(
    ident: Identity, user_id: str, reason: str | None, *, action: str = "user.revoke"
) -> dict[str, Any]:
    """Disable a user: tokens dead, running streams revoked, open subscriptions closed."""
    user = _user(ident, user_id)
    _not_yourself(ident, user.id, "revoke")
    user, streams = revocation.disable_user(
        ident.tenant_scope, user.id, ident.user_id, reason, action=action
    )
    return {"user": user, "streams_revoked": streams}


def sign_out_user(ident: Identity, user_id: str, reason: str | None) -> dict[str, Any]:
    """End every session and token of a user the caller may manage, and what they run."""
    user = _user(ident, user_id)
    if not may_act_on(ident, user.id):  # a tenant admin never signs an operator out
        raise _not_found("User")
    user, streams = revocation.sign_out_everywhere(
        ident.tenant_scope, user.id, ident.user_id, reason
    )
    return {"user": user, "streams_revoked": streams}


def revoke_token(ident: Identity, jti: str, reason: str | None) -> dict[str, Any]:
    """Revoke one app token, the streams it started and the subscriptions it opened."""
    row, streams = revocation.revoke_app_token(ident.tenant_scope, jti, ident.user_id, reason)
    return {"token": row, "streams_revoked": streams}


# --- users ------------------------------------------------------------------------------------


def list_users(
    ident: Identity, tenant_id: str | None, role: str | None, disabled: bool | None
) -> Rows[User]:
    """The users the caller may manage, oldest first."""
    tenant = scoped_tenant(ident, tenant_id)
    query = select(User)
    if tenant is not None:
        query = query.where(User.tenant_id == tenant)
    if role is not None:
        query = query.where(User.role == role)
    if disabled is not None:
        query = query.where(User.disabled == disabled)
    return Rows(query.order_by(User.created_at, User.id), lambda row: row[0])


def get_user(ident: Identity, user_id: str) -> User:
    """One user of the caller's tenant (operators: any)."""
    return _user(ident, user_id)


def create_user(
    ident: Identity, email: str, password: str, role: str, tenant_id: str | None
) -> User:
    """A new member or admin; a tenant admin creates in their own tenant only."""
    tenant = scoped_tenant(ident, tenant_id) or ident.tenant_id
    return service.create_user(tenant, email, password, ident.user_id, role=role)


def update_user(ident: Identity, user_id: str, changes: dict[str, Any]) -> User:
    """Change a user's role, disable (revoking everything) or re-enable them."""
    user = _user(ident, user_id)
    reason = changes.get("reason")
    if "role" in changes:
        _not_yourself(ident, user.id, "change the role of")
        user = revocation.set_user_role(
            ident.tenant_scope, user.id, changes["role"], ident.user_id, reason
        )
    if changes.get("disabled") is True:
        user = revoke_user(ident, user.id, reason, action="user.disable")["user"]
    elif changes.get("disabled") is False:
        user = service.enable_user(ident.tenant_scope, user.id, ident.user_id, reason)
    return user


# --- tenants (operators) ----------------------------------------------------------------------


def list_tenants(ident: Identity) -> Rows[Tenant]:
    """Every tenant, oldest first."""
    require_operator(ident)
    return Rows(select(Tenant).order_by(Tenant.created_at, Tenant.id), lambda row: row[0])


def get_tenant(ident: Identity, tenant_id: str) -> Tenant:
    """One tenant."""
    require_operator(ident)
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise _not_found("Tenant")
    return tenant


def create_tenant(ident: Identity, slug: str, name: str, models: list[str] | None) -> Tenant:
    """A new tenant (its first admin is then created with POST /v1/admin/users)."""
    require_operator(ident)
    refuse_unserved_models(models)
    return service.create_tenant(slug, name, ident.user_id, allowed_models=models)


def update_tenant(ident: Identity, tenant_id: str, changes: dict[str, Any]) -> Tenant:
    """Set a tenant's model allow-list; disable it (revoking everything of it) or re-enable it."""
    tenant = get_tenant(ident, tenant_id)
    reason = changes.get("reason")
    if "allowed_models" in changes:
        refuse_unserved_models(changes["allowed_models"])
        tenant = service.set_tenant_models(
            tenant.id, changes["allowed_models"], ident.user_id, reason
        )
    if changes.get("disabled") is True:
        if tenant.id == ident.tenant_id:
            raise ApiError(409, "You cannot disable your own tenant.", code="conflict")
        tenant = revocation.disable_tenant(tenant.id, ident.user_id, reason)
    elif changes.get("disabled") is False:
        tenant = service.enable_tenant(tenant.id, ident.user_id, reason)
    return tenant


# --- model servers ------------------------------------------------------------------------------


def upstreams_status(ident: Identity) -> list[dict[str, Any]]:
    """Every model server with its shared state (operators)."""
    require_operator(ident)
    return upstreams.status(get_redis(), upstreams.router(current_app))


# --- usage ------------------------------------------------------------------------------------


def usage(
    ident: Identity,
    group_by: str,
    start: datetime | None,
    end: datetime | None,
    tenant_id: str | None,
    user_id: str | None,
    token_jti: str | None = None,
    per_day: bool = False,
) -> Rows[dict[str, Any]] | list[dict[str, Any]]:
    """Streams and tokens per tenant, user, app token, end user, model or UTC day (``per_day``:
    also split by day), from the stream records in [start, end); per day, refusals too."""
    tenant = scoped_tenant(ident, tenant_id)
    if user_id is not None:
        _user(ident, user_id)
    start, end = period(start, end)
    s = StreamRecord
    filters = [
        column == value
        for column, value in ((s.tenant_id, tenant), (s.user_id, user_id), (s.token_jti, token_jti))
        if value is not None
    ]
    rows = usage_rows(group_by, start, end, filters, per_day)
    if group_by != "day" or token_jti is not None:
        return rows
    return _with_refusals(rows[0:None], tenant, start, end, user_id)


def _with_refusals(
    rows: list[dict[str, Any]],
    tenant: str | None,
    start: datetime,
    end: datetime,
    user_id: str | None,
) -> list[dict[str, Any]]:
    """Daily rows with the requests refused by a limit; a day of refusals only gets a row."""
    days, day = [], start.astimezone(UTC).date()
    while day <= (end - timedelta(microseconds=1)).astimezone(UTC).date():
        days.append(day.isoformat())
        day += timedelta(days=1)
    tenants = [tenant] if tenant is not None else list(db.session.scalars(select(Tenant.id)))
    refused = limits.refusals(tenants, days, user_id)
    by_key = {(row["tenant_id"], row["day"]): row for row in rows}
    for (tenant_id, day_str), count in refused.items():
        row = by_key.get((tenant_id, day_str))
        if row is None:
            row = by_key[(tenant_id, day_str)] = {
                "tenant_id": tenant_id,
                "day": day_str,
                "streams": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
            }
        row["refusals"] = count
    for row in by_key.values():
        row.setdefault("refusals", 0)
    return sorted(by_key.values(), key=lambda row: (row["day"], row["tenant_id"]))


# --- audit ------------------------------------------------------------------------------------


def audit_events(ident: Identity, filters: dict[str, Any]) -> Rows[dict[str, Any]]:
    """Admin actions, newest first: who, what, on which target, when and why."""
    tenant = scoped_tenant(ident, filters.get("tenant"))
    a = AuditEvent
    query = select(a, User.email).outerjoin(User, User.id == a.actor_id)
    if tenant is not None:
        query = query.where(a.tenant_id == tenant)
    for name, column in (
        ("actor", a.actor_id),
        ("action", a.action),
        ("target_type", a.target_type),
        ("target_id", a.target_id),
    ):
        if filters.get(name) is not None:
            query = query.where(column == filters[name])
    if filters.get("start") is not None:
        query = query.where(a.created_at >= filters["start"])
    if filters.get("end") is not None:
        query = query.where(a.created_at < filters["end"])
    return Rows(query.order_by(a.created_at.desc(), a.id.desc()), _audit_row)


def _audit_row(row: Any) -> dict[str, Any]:
    event, email = row
    return {
        "id": event.id,
        "tenant_id": event.tenant_id,
        "actor_id": event.actor_id,
        "actor_email": email,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "reason": event.reason,
        "details": event.details,
        "created_at": event.created_at,
    }
