"""Sessions: log in, refresh (with rotation), log out, list and end a user's sessions.

A login opens a session (a row in SQL): a family of refresh tokens of which only the newest is
current. ``POST /v1/auth/refresh`` swaps the current refresh token for a new one in one atomic
UPDATE; presenting a refresh token that was already swapped (stolen, or replayed) ends the whole
session. Every token of a session carries ``sid``, so ending a session also kills its access
tokens. SQL is the truth; Redis (``auth.revocations``) is written after each commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from auth import revocations, tokens
from auth.models import AppToken, AuthSession, Tenant, User, get_for_tenant, record_audit
from auth.passwords import (
    hash_password,
    login_succeeded,
    needs_rehash,
    reserve_login_attempt,
    verify_password,
)
from core.errors import ApiError
from core.store import db, setting, utcnow

BAD_CREDENTIALS = "Invalid tenant, email or password."
REVOKED = "Token has been revoked"


@dataclass(frozen=True)
class Session:
    """The outcome of a login or a refresh: who, their session, and their fresh tokens."""

    user: User
    session_id: str
    access_token: str
    refresh_token: str


def normalize_email(email: str) -> str:
    """Emails are compared case-insensitively and without surrounding blanks."""
    return email.strip().lower()


def login(
    tenant_slug: str, email: str, password: str, client_addr: str, device: str = ""
) -> Session:
    """Check credentials (throttled per account and address) and open a session.

    An unknown tenant or email, a wrong password and a disabled user or tenant all cost one
    password verification and answer the same 401.
    """
    slug, email = tenant_slug.strip().lower(), normalize_email(email)
    reserve_login_attempt(slug, email, client_addr)
    found = db.session.execute(
        select(User, Tenant)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(Tenant.slug == slug, User.email == email)
    ).first()
    user, tenant = (found[0], found[1]) if found is not None else (None, None)
    stored_hash = user.password_hash if user is not None else None
    db.session.rollback()  # no transaction (nor pooled connection) held across the hash
    ok = verify_password(stored_hash, password)
    if user is None or tenant is None or not ok:
        raise tokens.auth_error(BAD_CREDENTIALS)
    # The rollback expired both rows: what is read below (role, version) is re-read after the hash.
    if user.disabled or tenant.disabled:
        raise tokens.auth_error(BAD_CREDENTIALS)
    login_succeeded(slug, email, client_addr)
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return _open(user, device or "unknown device", client_addr)


def _open(user: User, device: str, client_addr: str) -> Session:
    now = utcnow()
    refresh_jti = tokens.new_jti()
    row = AuthSession(
        tenant_id=user.tenant_id,
        user_id=user.id,
        device=device[:200],
        address=client_addr[:64],
        refresh_jti=refresh_jti,
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(seconds=int(setting("JWT_REFRESH_TTL_S"))),
    )
    db.session.add(row)
    db.session.flush()
    return _signed_in(user, row.id, refresh_jti)


def refresh(tenant_id: str, user_id: str, claims: dict[str, Any]) -> Session:
    """Rotate a verified refresh token: a new pair, with the user's current role from SQL.

    The token's session, version and cutoffs are checked in SQL too (Redis may have lost them);
    a refresh token that was already rotated ends its session (reuse detection).
    """
    user = get_for_tenant(User, tenant_id, user_id)
    tenant = db.session.get(Tenant, tenant_id)
    if user is None or tenant is None or user.disabled or tenant.disabled:
        raise tokens.auth_error(REVOKED)
    issued = claims.get("iat_ms")
    issued_ms = issued if isinstance(issued, int) else 0
    if claims.get("ver", 0) != user.token_version or any(
        cutoff is not None and issued_ms < int(cutoff.timestamp() * 1000)
        for cutoff in (user.tokens_valid_after, tenant.tokens_valid_after)
    ):
        raise tokens.auth_error(REVOKED)
    row = get_for_tenant(AuthSession, tenant_id, str(claims.get("sid", "")))
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        raise tokens.auth_error(REVOKED)
    new_jti = tokens.new_jti()
    swapped = db.session.execute(
        update(AuthSession)
        .where(
            AuthSession.id == row.id,
            AuthSession.refresh_jti == str(claims["jti"]),
            AuthSession.revoked_at.is_(None),
        )
        .values(refresh_jti=new_jti, last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if swapped.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        end_sessions([row.id], "refresh_reuse")
        raise tokens.auth_error("Refresh token reuse detected; the session has been ended")
    return _signed_in(user, row.id, new_jti)


def verified_refresh_claims(tenant_id: str, user_id: str, encoded: str) -> dict[str, Any] | None:
    """Decode a refresh token presented for logout; None if it has already expired.

    Raises 422 if it is not a refresh token of this user (nothing is revoked then).
    """
    from flask_jwt_extended import decode_token

    try:
        claims = decode_token(encoded, allow_expired=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "not a token of ours"
        raise _invalid_refresh("Not a valid refresh token.") from exc
    if (
        claims.get("type") != "refresh"
        or claims.get("sub") != user_id
        or claims.get("tenant") != tenant_id
    ):
        raise _invalid_refresh("Not a refresh token of this user.")
    if float(claims["exp"]) <= datetime.now(UTC).timestamp():
        return None
    return dict(claims)


def _invalid_refresh(message: str) -> ApiError:
    return ApiError(422, f"refresh_token: {message}", errors={"refresh_token": [message]})


def logout(
    tenant_id: str, user_id: str, access: dict[str, Any], refresh: dict[str, Any] | None
) -> None:
    """Revoke the presented access token and end its session (its refresh tokens die too)."""
    jti = str(access["jti"])
    expires = datetime.fromtimestamp(float(access["exp"]), UTC)
    app_row = get_for_tenant(AppToken, tenant_id, jti) if access.get("kind") == "app" else None
    if app_row is not None and app_row.revoked_at is None:
        app_row.revoked_at = utcnow()
        record_audit(
            tenant_id=tenant_id,
            actor_id=user_id,
            action="app_token.revoke",
            target_type="app_token",
            target_id=jti,
            reason="logout",
        )
    revocations.record_revoked_jti(jti, expires)
    db.session.commit()
    tokens.revoke_jti(jti, expires.timestamp())
    ended = {str(c["sid"]) for c in (access, refresh or {}) if c.get("sid")}
    owned = [
        row.id
        for row in (get_for_tenant(AuthSession, tenant_id, sid) for sid in ended)
        if row is not None and row.user_id == user_id
    ]
    end_sessions(owned, "logout")


def end_sessions(session_ids: list[str], reason: str) -> None:
    """End these sessions (SQL first, then Redis): their refresh and access tokens stop working."""
    if not session_ids:
        return
    now = utcnow()
    rows = list(
        db.session.execute(select(AuthSession).where(AuthSession.id.in_(session_ids))).scalars()
    )
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at, row.revoked_reason = now, reason
    db.session.commit()
    for row in rows:
        tokens.revoke_session_key(row.id, row.expires_at.timestamp())


def active_sessions(tenant_id: str, user_id: str) -> list[AuthSession]:
    """The user's open sessions, most recently used first."""
    return list(
        db.session.execute(
            select(AuthSession)
            .where(
                AuthSession.tenant_id == tenant_id,
                AuthSession.user_id == user_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > utcnow(),
            )
            .order_by(AuthSession.last_used_at.desc(), AuthSession.id)
        ).scalars()
    )


def end_session(tenant_id: str, user_id: str, session_id: str) -> None:
    """End one of the user's own sessions; anyone else's (or an ended one) is a 404."""
    row = get_for_tenant(AuthSession, tenant_id, session_id)
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        raise ApiError(404, "Session not found.", code="not_found")
    end_sessions([row.id], "signed_out")


def open_session_ids(user_id: str) -> list[str]:
    """Ids of the user's sessions not yet ended (to end them all)."""
    return list(
        db.session.execute(
            select(AuthSession.id).where(
                AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
            )
        ).scalars()
    )


def bump_token_version(user: User) -> None:
    """In the current transaction: every token the user holds now is from an older version."""
    user.token_version = (user.token_version or 0) + 1
    user.tokens_valid_after = utcnow()


def publish_token_version(user: User) -> None:
    """After the commit: Redis refuses the user's tokens of older versions, on every worker."""
    revocations.raise_user_version(user.id, user.token_version)


def _signed_in(user: User, session_id: str, refresh_jti: str) -> Session:
    """Sign the session's pair with the user's current role and version, then commit."""
    pair = tokens.issue_user_tokens(
        user_id=user.id,
        tenant_id=user.tenant_id,
        role=user.role,
        version=user.token_version,
        session_id=session_id,
        refresh_jti=refresh_jti,
    )
    db.session.commit()
    return Session(user, session_id, pair["access_token"], pair["refresh_token"])
