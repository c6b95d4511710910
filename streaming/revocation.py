"""Revoking a stream or a principal (an app token, a user, a tenant): the one path of each.

The admin API, ``DELETE /v1/tokens/<jti>`` and the ``flask tokens|users|tenants`` commands all
call these. A principal's credential change is made in ``auth`` (``change``), then everything it
runs is stopped on every worker: its live streams are marked revoked and flagged in Redis (a
worker that misses the broadcast still acts on its next keeper tick), and the control bus
announces the revocation so every worker of every node acts within milliseconds. The audit row
is committed with the change; if the commit fails the revocation still stands (an account is
locked rather than left open). ``actor_id`` None is the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app

from auth import service
from auth.models import AppToken, Tenant, User, get_for_tenant, record_audit
from core.errors import ApiError
from core.store import db, get_redis, utcnow
from streaming import control, state
from streaming.control import ControlMessage
from streaming.models import StreamRecord

REVOCABLE = frozenset({"running", "revoked"})  # a revoked stream may be re-signalled
T = TypeVar("T")

# Who a principal-wide revocation stops: its live-state field, control op and message field.
_PRINCIPALS: dict[str, tuple[str, str, str]] = {
    "token": ("jti", control.REVOKE_TOKEN, "jti"),
    "user": ("user", control.REVOKE_USER, "user_id"),
    "tenant": ("tenant", control.REVOKE_TENANT, "tenant_id"),
}


def flag_ttl() -> int:
    """How long a stream's revocation flag is kept: longer than any run can last."""
    cfg = current_app.config
    return int(cfg["STREAM_MAX_DURATION_S"] + cfg["LEASE_TTL_S"])


def _count(target: str) -> None:
    current_app.extensions["streamgate.metrics"].revocations.labels(target).inc()


def _revoke_live(stream_ids: list[str], by: str | None, reason: str | None) -> None:
    """Mark each stream revoked and flag it, so a worker that misses the broadcast still acts.

    ``by`` is None when the command line acts (the live state stores "": no actor).
    """
    for stream_id in stream_ids:
        state.mark_revoked(stream_id, by or "", reason)
    flags = [
        ControlMessage(control.REVOKE_STREAM, stream_id=stream_id, by=by, reason=reason)
        for stream_id in stream_ids
    ]
    control.set_flags(get_redis(), flags, flag_ttl())


def revoke_stream(record: StreamRecord, actor_id: str, reason: str | None) -> str:
    """Stop a stream on whatever node runs it; its subscribers get ``stream.revoked``.

    A stream that already ended otherwise (completed, failed, cancelled) is a 409: there is
    nothing left to stop, and its outcome stays what it was. Revoking a revoked stream again is
    accepted (the signal is re-sent, the attempt is audited). Returns the status it had.
    """
    previous = state.mark_revoked(record.id, actor_id, reason)
    status = previous or record.status
    if status not in REVOCABLE:
        raise ApiError(
            409,
            f"The stream already ended ({status}); there is nothing to revoke.",
            code="stream_finished",
        )
    _count("stream")
    message = ControlMessage(control.REVOKE_STREAM, stream_id=record.id, by=actor_id, reason=reason)
    control.send(get_redis(), message, flag_ttl())
    if previous is None and record.status == "running":
        # No live state left: no worker runs it (it was lost with its live hash); settle it here.
        record.status, record.finished_at = "revoked", utcnow()
        record.revoked_by, record.revoke_reason = actor_id, reason
    record_audit(
        tenant_id=record.tenant_id,
        actor_id=actor_id,
        action="stream.revoke",
        target_type="stream",
        target_id=record.id,
        reason=reason,
        details={"user_id": record.user_id, "mode": record.mode, "was": status},
    )
    db.session.commit()
    return status


def revoke_principal(
    kind: str,
    principal_id: str,
    actor_id: str | None,
    reason: str | None,
    change: Callable[[list[str]], T],
) -> tuple[T, list[str]]:
    """Make a credential change, then stop everything the principal runs, on every worker.

    The one path of every change that kills a principal's tokens: revoking an app token,
    disabling or demoting a user, disabling a tenant. ``change(streams)`` makes the change in
    ``auth`` (given the live streams about to be revoked, for its audit row); if it raises,
    nothing is stopped. Then those streams are marked revoked and flagged in Redis, and
    ``revoke_<kind>`` goes out on the control bus: every worker stops the principal's generations
    (outcome ``revoked``, subscribers get ``stream.revoked``) and closes its open hub
    subscriptions. Returns what ``change`` returned and the stream ids.
    """
    field, op, key = _PRINCIPALS[kind]
    streams = [
        s["id"]
        for s in state.live_states()
        if s.get("status") in REVOCABLE and s.get(field) == principal_id
    ]
    result = change(streams)
    _revoke_live(streams, actor_id, reason)
    _count(kind)
    message = ControlMessage(op, by=actor_id, reason=reason, **{key: principal_id})
    control.send(get_redis(), message, flag_ttl())
    return result, streams


def revoke_app_token(
    tenant_scope: str | None, jti: str, actor_id: str | None, reason: str | None
) -> tuple[AppToken, list[str]]:
    """Revoke an app token, the streams it started and the subscriptions it opened (idempotent)."""
    if get_for_tenant(AppToken, tenant_scope, jti) is None:
        raise ApiError(404, "App token not found.", code="not_found")
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


def sign_out_everywhere(
    tenant_scope: str | None, user_id: str, actor_id: str | None, reason: str | None
) -> tuple[User, list[str]]:
    """Every session and token of the user ends (the account stays), and with them what they
    run: their generations are revoked and their open subscriptions closed, on every worker."""
    return revoke_principal(
        "user",
        user_id,
        actor_id,
        reason,
        lambda _streams: service.sign_out_everywhere(tenant_scope, user_id, actor_id, reason),
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
