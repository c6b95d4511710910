"""Admin console business logic: live streams, revocation, users, tenants, usage, audit.

Every function takes the caller's ``Identity`` first and plain arguments after it, and scopes
everything to ``ident.tenant_scope`` (a tenant admin: their tenant; an operator: all). Another
tenant's object is a 404, exactly like a missing one. The credential changes that revoke a
principal (``revoke_app_token``, ``disable_user``, ``set_user_role``, ``disable_tenant``) take
plain ids instead (``tenant_scope`` None: any tenant; ``actor_id`` None: the command line): the
admin API, ``DELETE /v1/tokens/<jti>`` and the ``flask tokens|users|tenants`` commands all call
them, and they all go through ``revoke_principal``.

Revocation writes Redis first (the live status, the per-stream flag a worker re-checks on its
keeper tick, the token cutoffs), commits the audit row with the change in one transaction, then
announces it on the control bus so every worker of every node acts within milliseconds. If the
commit fails the revocation still stands: an account is locked rather than left open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flask import current_app
from sqlalchemy import func, select

from api.pagination import Rows
from auth import service
from auth.access import Identity
from auth.models import AppToken, AuditEvent, Tenant, User, get_for_tenant, record_audit
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import db, get_redis, utcnow
from streaming import control, state
from streaming.hub import subscriber_counts
from streaming.models import StreamRecord

USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 400
REVOCABLE = frozenset({"running", "revoked"})  # a revoked stream may be re-signalled
T = TypeVar("T")


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


def _live_states() -> list[dict[str, str]]:
    """Every stream in the live set with its live hash (one ZRANGE, one pipelined HGETALL)."""
    client = get_redis()
    ids = [_text(raw) for raw in client.zrange(state.LIVE, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for stream_id in ids:
        pipe.hgetall(state.live_key(stream_id))
    out = []
    for stream_id, raw in zip(ids, pipe.execute(), strict=True):
        if raw:
            out.append({"id": stream_id, **{_text(k): _text(v) for k, v in raw.items()}})
    return out


def _live_matching(predicate: Callable[[dict[str, str]], bool]) -> list[str]:
    """Ids of live streams that a revocation should stop."""
    return [s["id"] for s in _live_states() if s.get("status") in REVOCABLE and predicate(s)]


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
        for s in _live_states()
        if (tenant is None or s.get("tenant") == tenant)
        and (user_id is None or s.get("user") == user_id)
        and (mode is None or s.get("mode") == mode)
    ]
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
    if record is None:
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
    }


# --- revocation -------------------------------------------------------------------------------


def _flag_ttl() -> int:
    cfg = current_app.config
    return int(cfg["STREAM_MAX_DURATION_S"] + cfg["LEASE_TTL_S"])


def _revoke_live(stream_ids: list[str], by: str | None, reason: str | None) -> None:
    """Mark each stream revoked and flag it, so a worker that misses the broadcast still acts.

    ``by`` is None when the command line acts (the live state stores "": no actor).
    """
    client = get_redis()
    for stream_id in stream_ids:
        state.mark_revoked(stream_id, by or "", reason)
    pipe = client.pipeline(transaction=False)
    for stream_id in stream_ids:
        pipe.set(
            control.flag_key(stream_id),
            json.dumps({"op": "revoke_stream", "stream_id": stream_id, "by": by, "reason": reason}),
            ex=_flag_ttl(),
        )
    pipe.execute()


def _count_revocation(target: str) -> None:
    current_app.extensions["streamgate.metrics"].revocations.labels(target).inc()


def revoke_stream(ident: Identity, stream_id: str, reason: str | None) -> dict[str, Any]:
    """Stop a stream on whatever node runs it; its subscribers get ``stream.revoked``.

    A stream that already ended otherwise (completed, failed, cancelled) is a 409: there is
    nothing left to stop, and its outcome stays what it was. Revoking a revoked stream again is
    accepted (the signal is re-sent, the attempt is audited).
    """
    record = _stream(ident, stream_id)
    previous = state.mark_revoked(record.id, ident.user_id, reason)
    status = previous or record.status
    if status not in REVOCABLE:
        raise ApiError(
            409,
            f"The stream already ended ({status}); there is nothing to revoke.",
            code="stream_finished",
        )
    _count_revocation("stream")
    control.send(
        get_redis(),
        "revoke_stream",
        _flag_ttl(),
        stream_id=record.id,
        by=ident.user_id,
        reason=reason,
    )
    if previous is None and record.status == "running":
        # No live state left: no worker runs it (it was lost with its live hash); settle it here.
        record.status, record.finished_at = "revoked", utcnow()
        record.revoked_by, record.revoke_reason = ident.user_id, reason
    record_audit(
        tenant_id=record.tenant_id,
        actor_id=ident.user_id,
        action="stream.revoke",
        target_type="stream",
        target_id=record.id,
        reason=reason,
        details={"user_id": record.user_id, "mode": record.mode, "was": status},
    )
    db.session.commit()
    return stream_detail(ident, record.id)


# Who a principal-wide revocation stops: its live-state field, control op and message field.
_PRINCIPALS: dict[str, tuple[str, str, str]] = {
    "token": ("jti", "revoke_token", "jti"),
    "user": ("user", "revoke_user", "user_id"),
    "tenant": ("tenant", "revoke_tenant", "tenant_id"),
}


def revoke_principal(
    kind: str,
    principal_id: str,
    actor_id: str | None,
    reason: str | None,
    change: Callable[[list[str]], T],
) -> tuple[T, list[str]]:
    """Make a credential change, then stop everything the principal runs, on every worker.

    The one path of every change that kills a principal's tokens: revoking an app token (admin
    API, ``DELETE /v1/tokens/<jti>``, ``flask tokens revoke``), disabling or demoting a user,
    disabling a tenant (admin API and CLI). ``change(streams)`` makes the change in ``auth``
    (given the live streams about to be revoked, for its audit row); if it raises, nothing is
    stopped. Then those streams are marked revoked and flagged in Redis, and ``revoke_<kind>``
    goes out on the control bus: every worker stops the principal's generations (outcome
    ``revoked``, subscribers get ``stream.revoked``) and closes its open hub subscriptions.
    ``actor_id`` None is the command line. Returns what ``change`` returned and the stream ids.
    """
    field, op, key = _PRINCIPALS[kind]
    streams = _live_matching(lambda s: s.get(field) == principal_id)
    result = change(streams)
    _revoke_live(streams, actor_id, reason)
    _count_revocation(kind)
    message = {key: principal_id, "by": actor_id, "reason": reason}
    control.send(get_redis(), op, _flag_ttl(), **message)
    return result, streams


def revoke_app_token(
    tenant_scope: str | None, jti: str, actor_id: str | None, reason: str | None
) -> tuple[AppToken, list[str]]:
    """Revoke an app token, the streams it started and the subscriptions it opened (idempotent)."""
    if get_for_tenant(AppToken, tenant_scope, jti) is None:
        raise _not_found("App token")
    return revoke_principal(
        "token",
        jti,
        actor_id,
        reason,
        lambda streams: service.revoke_app_token(
            tenant_scope, jti, actor_id, reason, details={"streams": streams}
        ),
    )


def disable_user(
    tenant_scope: str | None,
    user_id: str,
    actor_id: str | None,
    reason: str | None,
    *,
    action: str = "user.disable",
) -> tuple[User, list[str]]:
    """Disable a user: tokens dead, running streams revoked, open subscriptions closed."""
    return revoke_principal(
        "user",
        user_id,
        actor_id,
        reason,
        lambda streams: service.disable_user(
            tenant_scope, user_id, actor_id, reason, action=action, details={"streams": streams}
        ),
    )


def set_user_role(
    tenant_scope: str | None,
    user_id: str,
    role: str,
    actor_id: str | None,
    reason: str | None,
    *,
    allow_operator: bool = False,
) -> User:
    """Change a user's role; a demotion also stops their streams and subscriptions (their
    tokens carry the old role and are revoked)."""
    current = get_for_tenant(User, tenant_scope, user_id)
    if current is None or not service.is_demotion(current.role, role):
        return service.set_user_role(
            tenant_scope, user_id, role, actor_id, reason, allow_operator=allow_operator
        )
    user, _ = revoke_principal(
        "user",
        user_id,
        actor_id,
        reason,
        lambda streams: service.set_user_role(
            tenant_scope,
            user_id,
            role,
            actor_id,
            reason,
            allow_operator=allow_operator,
            details={"streams": streams},
        ),
    )
    return user


def disable_tenant(tenant_id: str, actor_id: str | None, reason: str | None) -> Tenant:
    """Disable a tenant: every token of it dead, its streams revoked, its subscriptions closed."""
    tenant, _ = revoke_principal(
        "tenant",
        tenant_id,
        actor_id,
        reason,
        lambda streams: service.disable_tenant(
            tenant_id, actor_id, reason, details={"streams": streams}
        ),
    )
    return tenant


def revoke_user(
    ident: Identity, user_id: str, reason: str | None, *, action: str = "user.revoke"
) -> dict[str, Any]:
    """Disable a user: tokens dead, running streams revoked, open subscriptions closed."""
    user = _user(ident, user_id)
    _not_yourself(ident, user.id, "revoke")
    user, streams = disable_user(ident.tenant_scope, user.id, ident.user_id, reason, action=action)
    return {"user": user, "streams_revoked": streams}


def revoke_token(ident: Identity, jti: str, reason: str | None) -> dict[str, Any]:
    """Revoke one app token, the streams it started and the subscriptions it opened."""
    row, streams = revoke_app_token(ident.tenant_scope, jti, ident.user_id, reason)
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
        user = set_user_role(ident.tenant_scope, user.id, changes["role"], ident.user_id, reason)
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
    return service.create_tenant(slug, name, ident.user_id, allowed_models=models)


def update_tenant(ident: Identity, tenant_id: str, changes: dict[str, Any]) -> Tenant:
    """Set a tenant's model allow-list; disable it (revoking everything of it) or re-enable it."""
    tenant = get_tenant(ident, tenant_id)
    reason = changes.get("reason")
    if "allowed_models" in changes:
        tenant = service.set_tenant_models(
            tenant.id, changes["allowed_models"], ident.user_id, reason
        )
    if changes.get("disabled") is True:
        if tenant.id == ident.tenant_id:
            raise ApiError(409, "You cannot disable your own tenant.", code="conflict")
        tenant = disable_tenant(tenant.id, ident.user_id, reason)
    elif changes.get("disabled") is False:
        tenant = service.enable_tenant(tenant.id, ident.user_id, reason)
    return tenant


# --- usage ------------------------------------------------------------------------------------


def usage(
    ident: Identity,
    group_by: str,
    start: datetime | None,
    end: datetime | None,
    tenant_id: str | None,
    user_id: str | None,
) -> Rows[dict[str, Any]]:
    """Streams and tokens per tenant, user or UTC day, from the stream records in [start, end)."""
    tenant = scoped_tenant(ident, tenant_id)
    if user_id is not None:
        _user(ident, user_id)
    end = end or utcnow()
    start = start or end - timedelta(days=USAGE_DEFAULT_DAYS)
    if end - start > timedelta(days=USAGE_MAX_DAYS):
        raise ApiError(
            422,
            f"The range is too long: at most {USAGE_MAX_DAYS} days.",
            errors={"from": [f"At most {USAGE_MAX_DAYS} days before 'to'."]},
        )
    s = StreamRecord
    measures = [
        func.count(s.id).label("streams"),
        func.coalesce(func.sum(s.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(s.completion_tokens), 0).label("completion_tokens"),
    ]
    keys: list[Any] = [s.tenant_id]
    if group_by == "user":
        keys += [s.user_id, User.email]
    elif group_by == "day":
        keys.append(
            func.date(s.created_at).label("day")
        )  # 'YYYY-MM-DD' on SQLite, a date on PostgreSQL
    query = select(*keys, *measures).where(s.created_at >= start, s.created_at < end)
    if group_by == "user":
        query = query.join(User, User.id == s.user_id)
    if tenant is not None:
        query = query.where(s.tenant_id == tenant)
    if user_id is not None:
        query = query.where(s.user_id == user_id)
    order = [keys[-1], s.tenant_id] if group_by == "day" else keys
    query = query.group_by(*keys).order_by(*order)
    return Rows(query, lambda row: _usage_row(group_by, row))


def _usage_row(group_by: str, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant_id": row.tenant_id}
    if group_by == "user":
        out.update(user_id=row.user_id, user_email=row.email)
    elif group_by == "day":
        out["day"] = str(row.day)[:10]
    prompt, completion = int(row.prompt_tokens), int(row.completion_tokens)
    out.update(
        streams=int(row.streams),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )
    return out


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
