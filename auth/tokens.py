"""JWT issue, verify and revoke (flask-jwt-extended), with revocation state in Redis.

Every token carries ``sub`` (user id), ``tenant``, ``role``, ``scopes``, ``kind`` (``user`` or
``app``), ``jti``, ``exp``, ``iat_ms``, ``ver`` (the user's token version when it was signed),
``iss`` and ``aud``; a login's tokens also carry ``sid`` (their session). Revocation is checked on
every request with one Redis round trip: the token's ``jti`` and ``sid`` in the blocklist, the
user's and the tenant's "tokens valid after" cutoffs (a disabled user or tenant has a cutoff in
the far future) and the user's current token version.

The revocation state itself lives in ``auth.revocations`` (SQL the truth, Redis the fast path).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Response
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token
from flask_jwt_extended.exceptions import RevokedTokenError
from sqlalchemy import select, update
from sqlalchemy.orm import aliased

from auth.models import AppToken, Tenant, User
from auth.revocations import (
    DISABLED_CUTOFF_MS,
    is_revoked,
    revoke_jti,
    revoke_session_key,
    revoke_user_tokens,
    revoked_among,
    set_tenant_disabled,
)
from core.errors import ApiError
from core.store import db, get_redis, utcnow

jwt = JWTManager()

# Re-exported: the hub, the admin paths and the tests reach revocation through this module.
__all__ = [
    "DISABLED_CUTOFF_MS",
    "is_revoked",
    "revoke_jti",
    "revoke_session_key",
    "revoke_user_tokens",
    "revoked_among",
    "set_tenant_disabled",
]

_APP_USED_KEY = "sg:tu:{}"
APP_TOKEN_TOUCH_S = 60  # an app token's last_used_at is written at most this often
REALM = 'Bearer realm="streamgate"'


def user_scopes(role: str) -> list[str]:
    """The scopes of a person's own login: everything their role allows."""
    return ["chat", "read", "admin"] if role in {"admin", "operator"} else ["chat", "read"]


def _claims(
    *,
    tenant_id: str,
    role: str,
    scopes: list[str],
    kind: str,
    version: int,
    session_id: str | None = None,
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "tenant": tenant_id,
        "role": role,
        "scopes": sorted(set(scopes)),
        "kind": kind,
        "iat_ms": int(time.time() * 1000),
        "ver": version,
    }
    if session_id is not None:
        claims["sid"] = session_id
    return claims


def new_jti() -> str:
    """A fresh token id (a session stores its current refresh token's)."""
    return str(uuid.uuid4())


def issue_user_tokens(
    *,
    user_id: str,
    tenant_id: str,
    role: str,
    version: int | None = None,
    session_id: str | None = None,
    refresh_jti: str | None = None,
) -> dict[str, str]:
    """Access and refresh tokens for a person who just logged in (or rotated a refresh token).

    ``version`` defaults to the user's current ``token_version`` in SQL (scripts, tests).
    """
    if version is None:
        user = db.session.get(User, user_id)
        version = user.token_version if user is not None else 0
    claims = _claims(
        tenant_id=tenant_id,
        role=role,
        scopes=user_scopes(role),
        kind="user",
        version=version,
        session_id=session_id,
    )
    refresh_claims = {**claims, "jti": refresh_jti or new_jti()}
    return {
        "access_token": create_access_token(identity=user_id, additional_claims=claims),
        "refresh_token": create_refresh_token(identity=user_id, additional_claims=refresh_claims),
    }


def issue_app_token(
    *, user_id: str, tenant_id: str, role: str, scopes: list[str], ttl: timedelta, version: int = 0
) -> str:
    """A long-lived access token for a third-party app, limited to ``scopes``."""
    claims = _claims(tenant_id=tenant_id, role=role, scopes=scopes, kind="app", version=version)
    return str(create_access_token(identity=user_id, additional_claims=claims, expires_delta=ttl))


# --- flask-jwt-extended wiring ----------------------------------------------------------------


def note_app_token_use(jwt_header: dict[str, Any], payload: dict[str, Any]) -> None:
    """Stamp an app token's ``last_used_at``, at most once a minute per token.

    The same once-a-minute visit re-reads the token's durable record, so a revocation, a
    disabled owner or tenant, a role change or a cutoff still holds if Redis lost its keys.
    """
    jti = str(payload["jti"])
    if not get_redis().set(_APP_USED_KEY.format(jti), "1", nx=True, ex=APP_TOKEN_TOUCH_S):
        return
    owner, tenant = aliased(User), aliased(Tenant)
    row = db.session.execute(
        select(AppToken.revoked_at, AppToken.tenant_id, owner, tenant)
        .join(owner, owner.id == AppToken.owner_id)
        .join(tenant, tenant.id == AppToken.tenant_id)
        .where(AppToken.jti == jti)
    ).first()
    if row is None:
        return  # minted without a record (tests, scripts): Redis alone decides
    revoked_at, tenant_id, user, tenant_row = row
    if (
        revoked_at is not None
        or tenant_id != payload["tenant"]
        or user.disabled
        or tenant_row.disabled
        or payload.get("ver", 0) != user.token_version
        or payload.get("role") != user.role
        or _issued_before(payload, user.tokens_valid_after, tenant_row.tokens_valid_after)
    ):
        revoke_jti(jti, float(payload["exp"]))
        raise RevokedTokenError(jwt_header, payload)
    db.session.execute(update(AppToken).where(AppToken.jti == jti).values(last_used_at=utcnow()))
    db.session.commit()


def _issued_before(payload: dict[str, Any], *cutoffs: datetime | None) -> bool:
    issued = payload.get("iat_ms")
    issued_ms = issued if isinstance(issued, int) else 0
    return any(c is not None and issued_ms < int(c.timestamp() * 1000) for c in cutoffs)


def _refusal(
    render: Callable[[ApiError], Response], message: str
) -> Callable[[dict[str, Any], dict[str, Any]], Response]:
    def refuse(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return render(auth_error(message))

    return refuse


def _quoted(text: str) -> str:
    # RFC 6750 error_description: printable ASCII except '"' and '\\'.
    return "".join(ch if " " <= ch <= "~" and ch not in {'"', "\\"} else "'" for ch in text)


def auth_error(
    message: str, *, error: str = "invalid_token", status: int = 401, scope: str | None = None
) -> ApiError:
    """A 401/403 with an RFC 6750 ``WWW-Authenticate`` header."""
    challenge = REALM
    if error:
        challenge += f', error="{error}", error_description="{_quoted(message)}"'
        if scope:
            challenge += f', scope="{_quoted(scope)}"'
    return ApiError(
        status, message, headers={"WWW-Authenticate": challenge}, code=error or "missing_token"
    )


def init_jwt(app: Flask, render: Callable[[ApiError], Response]) -> None:
    """Bind flask-jwt-extended; every failure it reports is an RFC 6750 error drawn by ``render``.

    ``render`` is the HTTP layer's envelope (``api.errors.error_response``): identity decides what
    is wrong, the API decides how it looks.
    """
    jwt.init_app(app)

    @jwt.token_in_blocklist_loader
    def _blocked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        return is_revoked(payload)

    @jwt.unauthorized_loader
    def _missing(reason: str) -> Response:
        if "CSRF" in reason:
            return render(auth_error(reason, error="invalid_token"))
        return render(auth_error("Authentication required: " + reason, error=""))

    @jwt.invalid_token_loader
    def _invalid(reason: str) -> Response:
        return render(auth_error("Invalid token: " + reason))

    # The loaders that are told about a decoded token: each answers with one fixed message.
    for register, message in (
        (jwt.expired_token_loader, "Token has expired"),
        (jwt.revoked_token_loader, "Token has been revoked"),
        (jwt.token_verification_failed_loader, "Token claims are invalid"),
        (jwt.needs_fresh_token_loader, "A fresh token is required"),
        (jwt.user_lookup_error_loader, "Token has been revoked"),
    ):
        register(_refusal(render, message))

    @jwt.token_verification_loader
    def _claims_ok(header: dict[str, Any], payload: dict[str, Any]) -> bool:
        # Runs after the signature, exp/iss/aud, type and revocation checks.
        valid = (
            isinstance(payload.get("exp"), int)
            and isinstance(payload.get("sub"), str)
            and isinstance(payload.get("jti"), str)
            and isinstance(payload.get("iat_ms"), int)
            and isinstance(payload.get("tenant"), str)
            and payload.get("role") in {"member", "admin", "operator"}
            and isinstance(payload.get("scopes"), list)
            and payload.get("kind") in {"user", "app"}
            and isinstance(payload.get("ver", 0), int)
        )
        if valid and payload["kind"] == "app":
            note_app_token_use(header, payload)
        return valid
