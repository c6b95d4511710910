"""JWT issue, verify and revoke (flask-jwt-extended), with revocation state in Redis.

Every token carries ``sub`` (user id), ``tenant``, ``role``, ``scopes``, ``kind`` (``user`` or
``app``), ``jti``, ``exp``, ``iat_ms``, ``iss`` and ``aud``. Revocation is checked on every request
with one Redis round trip: the token's ``jti`` in the blocklist, and the user's and the tenant's
"tokens valid after" cutoffs (a disabled user or tenant has a cutoff in the far future).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, Response
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token
from flask_jwt_extended.exceptions import RevokedTokenError
from sqlalchemy import select, update

from auth.models import AppToken, Tenant, User
from core.errors import ApiError
from core.store import db, get_redis, utcnow

jwt = JWTManager()

DISABLED_CUTOFF_MS = 2**62  # "every token is before this": the account is disabled
_JTI_KEY = "sg:rv:jti:{}"
_USER_KEY = "sg:rv:user:{}"
_TENANT_KEY = "sg:rv:tenant:{}"
_APP_USED_KEY = "sg:tu:{}"
APP_TOKEN_TOUCH_S = 60  # an app token's last_used_at is written at most this often
REALM = 'Bearer realm="streamgate"'


def user_scopes(role: str) -> list[str]:
    """The scopes of a person's own login: everything their role allows."""
    return ["chat", "read", "admin"] if role in {"admin", "operator"} else ["chat", "read"]


def _claims(*, tenant_id: str, role: str, scopes: list[str], kind: str) -> dict[str, Any]:
    return {
        "tenant": tenant_id,
        "role": role,
        "scopes": sorted(set(scopes)),
        "kind": kind,
        "iat_ms": int(time.time() * 1000),
    }


def issue_user_tokens(*, user_id: str, tenant_id: str, role: str) -> dict[str, str]:
    """Access and refresh tokens for a person who just logged in."""
    claims = _claims(tenant_id=tenant_id, role=role, scopes=user_scopes(role), kind="user")
    return {
        "access_token": create_access_token(identity=user_id, additional_claims=claims),
        "refresh_token": create_refresh_token(identity=user_id, additional_claims=claims),
    }


def issue_access_token(*, user_id: str, tenant_id: str, role: str) -> str:
    """A fresh access token (the refresh flow)."""
    claims = _claims(tenant_id=tenant_id, role=role, scopes=user_scopes(role), kind="user")
    return str(create_access_token(identity=user_id, additional_claims=claims))


def issue_app_token(
    *, user_id: str, tenant_id: str, role: str, scopes: list[str], ttl: timedelta
) -> str:
    """A long-lived access token for a third-party app, limited to ``scopes``."""
    claims = _claims(tenant_id=tenant_id, role=role, scopes=scopes, kind="app")
    return str(create_access_token(identity=user_id, additional_claims=claims, expires_delta=ttl))


# --- revocation -------------------------------------------------------------------------------


def revoke_jti(jti: str, expires_at: float) -> None:
    """Block one token until it would have expired anyway."""
    ttl = max(1, int(expires_at - time.time()) + 1)
    get_redis().set(_JTI_KEY.format(jti), "1", ex=ttl)


def revoke_user_tokens(user_id: str, *, disable: bool = False) -> None:
    """Every token the user holds now stops working (``disable``: and every future one)."""
    cutoff = DISABLED_CUTOFF_MS if disable else int(time.time() * 1000) + 1
    get_redis().set(_USER_KEY.format(user_id), cutoff)


def set_tenant_disabled(tenant_id: str, disabled: bool) -> None:
    """Disabling a tenant revokes every token of every user in it."""
    cutoff = DISABLED_CUTOFF_MS if disabled else int(time.time() * 1000) + 1
    get_redis().set(_TENANT_KEY.format(tenant_id), cutoff)


def _revocation_keys(payload: dict[str, Any]) -> tuple[str, str, str]:
    return (
        _JTI_KEY.format(payload.get("jti")),
        _USER_KEY.format(payload.get("sub")),
        _TENANT_KEY.format(payload.get("tenant")),
    )


def _revoked(payload: dict[str, Any], values: list[Any]) -> bool:
    jti_hit, user_cutoff, tenant_cutoff = values
    if jti_hit is not None:
        return True
    issued = payload.get("iat_ms")
    if not isinstance(issued, int):
        issued = 0  # malformed: treat as older than any cutoff (the claim check refuses it anyway)
    return any(
        cutoff is not None and issued < int(cutoff) for cutoff in (user_cutoff, tenant_cutoff)
    )


def is_revoked(payload: dict[str, Any]) -> bool:
    """True when the token was revoked by jti, user cutoff or tenant cutoff (one round trip)."""
    return _revoked(payload, get_redis().mget(*_revocation_keys(payload)))


def revoked_among(payloads: list[dict[str, Any]]) -> list[bool]:
    """``is_revoked`` for many tokens in one round trip (the hub re-checks its open connections)."""
    pipe = get_redis().pipeline(transaction=False)
    for payload in payloads:
        pipe.mget(*_revocation_keys(payload))
    return [_revoked(p, values) for p, values in zip(payloads, pipe.execute(), strict=True)]


# --- flask-jwt-extended wiring ----------------------------------------------------------------


def note_app_token_use(jwt_header: dict[str, Any], payload: dict[str, Any]) -> None:
    """Stamp an app token's ``last_used_at``, at most once a minute per token.

    The same once-a-minute visit re-reads the token's durable record, so a revocation or a
    disabled owner or tenant still holds if Redis lost its revocation keys.
    """
    jti = str(payload["jti"])
    if not get_redis().set(_APP_USED_KEY.format(jti), "1", nx=True, ex=APP_TOKEN_TOUCH_S):
        return
    row = db.session.execute(
        select(AppToken.revoked_at, AppToken.tenant_id, User.disabled, Tenant.disabled)
        .join(User, User.id == AppToken.owner_id)
        .join(Tenant, Tenant.id == AppToken.tenant_id)
        .where(AppToken.jti == jti)
    ).first()
    if row is None:
        return  # minted without a record (tests, scripts): Redis alone decides
    revoked_at, tenant_id, user_disabled, tenant_disabled = row
    if revoked_at is not None or tenant_id != payload["tenant"] or user_disabled or tenant_disabled:
        revoke_jti(jti, float(payload["exp"]))
        raise RevokedTokenError(jwt_header, payload)
    db.session.execute(update(AppToken).where(AppToken.jti == jti).values(last_used_at=utcnow()))
    db.session.commit()


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
        )
        if valid and payload["kind"] == "app":
            note_app_token_use(header, payload)
        return valid
