"""Identity business logic: tenants, users and app tokens (sessions are in ``auth.sessions``).

Every function takes plain arguments (``tenant_id`` first where it applies; ``tenant_id=None`` means
an operator, who may act on any tenant), raises ``ApiError`` for anything but success, and writes
its audit event in the same transaction as the change. A revocation is written to Redis twice:
a cutoff before the commit (if the commit fails, the account is locked rather than left open) and
the user's new token version after it, so a token signed from a read made before the commit
(a refresh or a login racing the change) is refused too.

The admin API and the CLI call these; views stay thin.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from flask_jwt_extended import decode_token
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from auth import sessions, tokens
from auth.models import ROLES, SCOPES, AppToken, Tenant, User, get_for_tenant, record_audit
from auth.passwords import check_password_policy, hash_password
from auth.sessions import BAD_CREDENTIALS, Session, login, logout, normalize_email
from core.errors import ApiError
from core.store import db, setting, utcnow

# Re-exported: the CLI and older callers log in through ``auth.service``.
__all__ = ["BAD_CREDENTIALS", "Session", "login", "logout", "normalize_email"]
SLUG_RE = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
EMAIL_RE = re.compile(r"\A[^@\s]{1,64}@[^@\s]{1,252}\Z")
_RANK = {"member": 0, "admin": 1, "operator": 2}


def _not_found(kind: str) -> ApiError:
    return ApiError(404, f"{kind} not found.", code="not_found")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", errors={field: [message]})


def sign_out_everywhere(
    tenant_id: str | None, user_id: str, actor_id: str | None, reason: str | None = None
) -> User:
    """Every token the user holds stops working and every session ends; the account stays."""
    user = _user_in_scope(tenant_id, user_id)
    ended = sessions.open_session_ids(user.id)
    tokens.revoke_user_tokens(user.id)
    sessions.bump_token_version(user)
    record_audit(user.tenant_id, actor_id, "user.sign_out", "user", user.id, reason)
    db.session.commit()
    sessions.publish_token_version(user)
    sessions.end_sessions(ended, "signed_out_everywhere")
    return user


# --- tenants ------------------------------------------------------------------------------------


def create_tenant(
    slug: str,
    name: str,
    actor_id: str | None = None,
    *,
    allowed_models: list[str] | None = None,
    limits: dict[str, int] | None = None,
) -> Tenant:
    """A new tenant; by default it may use the deployment's configured models."""
    slug = slug.strip().lower()
    if not SLUG_RE.match(slug):
        raise _invalid("slug", "Use 1-64 lowercase letters, digits and inner hyphens.")
    name = name.strip()
    if not 1 <= len(name) <= 200 or not name.isprintable():
        raise _invalid("name", "Use 1-200 printable characters.")
    if db.session.execute(select(Tenant.id).where(Tenant.slug == slug)).first() is not None:
        raise ApiError(409, f"A tenant with slug '{slug}' already exists.", code="conflict")
    models = list(allowed_models) if allowed_models is not None else list(setting("LLM_MODELS"))
    tenant = Tenant(slug=slug, name=name, allowed_models=models, limits=limits)
    db.session.add(tenant)
    db.session.flush()
    record_audit(tenant.id, actor_id, "tenant.create", "tenant", tenant.id, None, {"slug": slug})
    _commit_unique(f"A tenant with slug '{slug}' already exists.")
    return tenant


def tenant_by_slug(slug: str) -> Tenant:
    """The tenant with this slug (404 otherwise)."""
    tenant = db.session.execute(
        select(Tenant).where(Tenant.slug == slug.strip().lower())
    ).scalar_one_or_none()
    if tenant is None:
        raise _not_found("Tenant")
    return tenant


def list_tenants() -> list[Tenant]:
    """Every tenant, oldest first (operators only)."""
    return list(
        db.session.execute(select(Tenant).order_by(Tenant.created_at, Tenant.slug)).scalars()
    )


def disable_tenant(
    tenant_id: str,
    actor_id: str | None,
    reason: str | None = None,
    *,
    details: dict[str, Any] | None = None,
) -> Tenant:
    """Disable a tenant: every token of every user in it stops working, logins are refused."""
    return _set_tenant_disabled(tenant_id, True, actor_id, reason, details)


def enable_tenant(tenant_id: str, actor_id: str | None, reason: str | None = None) -> Tenant:
    """Re-enable a tenant; tokens issued while it was disabled stay dead."""
    return _set_tenant_disabled(tenant_id, False, actor_id, reason)


def _set_tenant_disabled(
    tenant_id: str,
    disabled: bool,
    actor_id: str | None,
    reason: str | None,
    details: dict[str, Any] | None = None,
) -> Tenant:
    # Either way every token issued so far is cut off: disabling kills them, and tokens issued
    # while the tenant was disabled stay dead after it is enabled again.
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise _not_found("Tenant")
    tokens.set_tenant_disabled(tenant.id, disabled)
    tenant.disabled = disabled
    tenant.tokens_valid_after = utcnow()
    action = "tenant.disable" if disabled else "tenant.enable"
    record_audit(tenant.id, actor_id, action, "tenant", tenant.id, reason, details)
    db.session.commit()
    return tenant


def set_tenant_models(
    tenant_id: str, models: list[str], actor_id: str | None, reason: str | None = None
) -> Tenant:
    """Replace a tenant's model allow-list (at least one model; order kept, duplicates dropped)."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise _not_found("Tenant")
    wanted = list(dict.fromkeys(name.strip() for name in models))
    if not 1 <= len(wanted) <= 100:
        raise _invalid("allowed_models", "Give between 1 and 100 models.")
    if any(not 1 <= len(name) <= 200 or not name.isprintable() for name in wanted):
        raise _invalid("allowed_models", "Model names are 1-200 printable characters.")
    old = list(tenant.allowed_models or [])
    tenant.allowed_models = wanted
    record_audit(
        tenant.id,
        actor_id,
        "tenant.set_models",
        "tenant",
        tenant.id,
        reason,
        {"from": old, "to": wanted},
    )
    db.session.commit()
    return tenant


# --- users --------------------------------------------------------------------------------------


def create_user(
    tenant_id: str,
    email: str,
    password: str,
    actor_id: str | None = None,
    *,
    role: str = "member",
    allow_operator: bool = False,
) -> User:
    """A new user of a tenant. ``operator`` only with ``allow_operator`` (the CLI)."""
    _check_role(role, allow_operator)
    email = normalize_email(email)
    if not EMAIL_RE.match(email) or len(email) > 254 or not email.isprintable():
        raise _invalid("email", "Not a valid email address.")
    check_password_policy(password)
    if db.session.get(Tenant, tenant_id) is None:
        raise _not_found("Tenant")
    exists = db.session.execute(
        select(User.id).where(User.tenant_id == tenant_id, User.email == email)
    ).first()
    if exists is not None:
        raise ApiError(
            409, "A user with this email already exists in this tenant.", code="conflict"
        )
    user = User(tenant_id=tenant_id, email=email, password_hash=hash_password(password), role=role)
    db.session.add(user)
    db.session.flush()
    record_audit(tenant_id, actor_id, "user.create", "user", user.id, None, {"role": role})
    _commit_unique("A user with this email already exists in this tenant.")
    return user


def user_by_email(tenant_id: str, email: str) -> User:
    """The tenant's user with this email (404 otherwise)."""
    user = db.session.execute(
        select(User).where(User.tenant_id == tenant_id, User.email == normalize_email(email))
    ).scalar_one_or_none()
    if user is None:
        raise _not_found("User")
    return user


def list_users(tenant_id: str) -> list[User]:
    """The tenant's users, oldest first."""
    return list(
        db.session.execute(
            select(User).where(User.tenant_id == tenant_id).order_by(User.created_at, User.email)
        ).scalars()
    )


def disable_user(
    tenant_id: str | None,
    user_id: str,
    actor_id: str | None,
    reason: str | None = None,
    *,
    action: str = "user.disable",
    details: dict[str, Any] | None = None,
) -> User:
    """Disable a user: every token they hold (app tokens too) stops working, logins refused.

    ``action`` / ``details`` name the admin action in the audit log (the admin API's
    ``user.revoke`` also lists the streams it revoked).
    """
    user = _user_in_scope(tenant_id, user_id)
    ended = sessions.open_session_ids(user.id)
    tokens.revoke_user_tokens(user.id, disable=True)
    user.disabled = True
    sessions.bump_token_version(user)
    # The rule for apps: an app token dies with its issuer (it carries the issuer's token
    # version). Say so where the remaining admins look: the row is marked revoked (GET
    # /v1/tokens lists it with its owner) and the audit event names it.
    now = utcnow()
    owned = db.session.scalars(
        select(AppToken).where(AppToken.owner_id == user.id, AppToken.revoked_at.is_(None))
    ).all()
    for app_token in owned:
        app_token.revoked_at = now
    if owned:
        details = {**(details or {}), "app_tokens_revoked": sorted(t.jti for t in owned)}
    record_audit(user.tenant_id, actor_id, action, "user", user.id, reason, details)
    db.session.commit()
    sessions.publish_token_version(user)
    sessions.end_sessions(ended, "user_disabled")
    return user


def enable_user(
    tenant_id: str | None, user_id: str, actor_id: str | None, reason: str | None = None
) -> User:
    """Re-enable a user; tokens issued before stay dead, new logins work."""
    user = _user_in_scope(tenant_id, user_id)
    user.disabled = False
    sessions.bump_token_version(user)
    record_audit(user.tenant_id, actor_id, "user.enable", "user", user.id, reason)
    db.session.commit()
    # Lowering the cutoff from "disabled" happens only once SQL says enabled.
    tokens.revoke_user_tokens(user.id, disable=False)
    sessions.publish_token_version(user)
    return user


def set_user_role(
    tenant_id: str | None,
    user_id: str,
    role: str,
    actor_id: str | None,
    reason: str | None = None,
    *,
    allow_operator: bool = False,
    details: dict[str, Any] | None = None,
) -> User:
    """Change a user's role; a demotion revokes their tokens (they carry the old role).

    The new token version reaches Redis after the commit: a refresh, login or app token signed
    from a read of the old role, however late it is signed, carries the old version and dies.
    """
    _check_role(role, allow_operator)
    user = _user_in_scope(tenant_id, user_id)
    old = user.role
    if role == old:
        return user
    demotion = is_demotion(old, role)
    ended = sessions.open_session_ids(user.id) if demotion else []
    if demotion:
        tokens.revoke_user_tokens(user.id, disable=user.disabled)
        sessions.bump_token_version(user)
    user.role = role
    record_audit(
        user.tenant_id,
        actor_id,
        "user.set_role",
        "user",
        user.id,
        reason,
        {"from": old, "to": role, **(details or {})},
    )
    db.session.commit()
    if demotion:
        sessions.publish_token_version(user)
        sessions.end_sessions(ended, "role_changed")
    return user


def is_demotion(old: str, new: str) -> bool:
    """Whether going from role ``old`` to ``new`` lowers the user's rank (unknown roles: no)."""
    return old in _RANK and new in _RANK and _RANK[new] < _RANK[old]


def _check_role(role: str, allow_operator: bool) -> None:
    if role not in ROLES:
        raise _invalid("role", f"Must be one of: {', '.join(ROLES)}.")
    if role == "operator" and not allow_operator:
        raise ApiError(
            403, "Operators can only be created from the command line.", code="forbidden"
        )


def _user_in_scope(tenant_id: str | None, user_id: str) -> User:
    user = get_for_tenant(User, tenant_id, user_id)
    if user is None:
        raise _not_found("User")
    if user.role == "operator" and tenant_id is not None:
        # A tenant admin may not act on an operator; only an operator (or the CLI) may.
        raise ApiError(403, "Only an operator may change an operator.", code="forbidden")
    return user


# --- app tokens ---------------------------------------------------------------------------------


def create_app_token(
    tenant_id: str,
    owner_id: str,
    *,
    role: str,
    name: str,
    scopes: Collection[str],
    expires_in_days: int,
    grantable_scopes: Collection[str] = SCOPES,
    not_after: datetime | None = None,
    policy: dict[str, Any] | None = None,
) -> tuple[AppToken, str]:
    """Issue a named, scoped, long-lived JWT for a third-party app; the JWT is returned once.

    ``grantable_scopes`` are the caller's own scopes (a token never gets more than its maker);
    ``not_after`` caps the expiry (a token made by an app token never outlives it); ``policy``:
    the token's own ``models``, ``limits``, ``end_user_limits`` (checked by the caller). Its role
    and version are the owner's row in SQL, never only the caller's token: a token minted from a
    role being taken away carries the old version and dies with it.
    """
    owner = get_for_tenant(User, tenant_id, owner_id)
    if owner is None or owner.disabled:
        raise tokens.auth_error(sessions.REVOKED)
    if _RANK.get(owner.role, -1) < _RANK.get(role, 99):
        role = owner.role  # the caller's token says more than the row: the row wins
    wanted = sorted(set(scopes))
    if not wanted or not set(wanted) <= set(SCOPES):
        raise _invalid("scopes", f"Choose from: {', '.join(SCOPES)}.")
    if "admin" in wanted and role not in {"admin", "operator"}:
        raise tokens.auth_error(
            "Only an admin may grant the 'admin' scope",
            error="insufficient_scope",
            status=403,
            scope="admin",
        )
    beyond = sorted(set(wanted) - set(grantable_scopes))
    if beyond:
        raise tokens.auth_error(
            f"You cannot grant scopes you do not hold: {', '.join(beyond)}",
            error="insufficient_scope",
            status=403,
            scope=" ".join(beyond),
        )
    max_days = int(setting("APP_TOKEN_MAX_TTL_DAYS"))
    if not 1 <= expires_in_days <= max_days:
        raise _invalid("expires_in_days", f"Must be between 1 and {max_days}.")
    name = name.strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise _invalid("name", "Use 1-100 printable characters.")
    ttl = timedelta(days=expires_in_days)
    if not_after is not None:
        ttl = min(ttl, not_after - utcnow())
        if ttl.total_seconds() < 60:
            raise _invalid("expires_in_days", "Your own token expires too soon to issue another.")
    encoded = tokens.issue_app_token(
        user_id=owner_id,
        tenant_id=tenant_id,
        role=role,
        scopes=wanted,
        ttl=ttl,
        version=owner.token_version,
    )
    claims = decode_token(encoded)
    row = AppToken(
        jti=claims["jti"],
        tenant_id=tenant_id,
        owner_id=owner_id,
        name=name,
        scopes=wanted,
        created_at=utcnow(),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        **(policy or {}),
    )
    db.session.add(row)
    record_audit(
        tenant_id,
        owner_id,
        "app_token.create",
        "app_token",
        row.jti,
        None,
        {
            "name": name,
            "scopes": wanted,
            "expires_at": row.expires_at.isoformat(),
            **(policy or {}),
        },
    )
    db.session.commit()
    return row, encoded


def list_app_tokens(tenant_id: str) -> list[AppToken]:
    """The tenant's app tokens, newest first (never their secrets: those are not stored)."""
    return list(
        db.session.execute(
            select(AppToken)
            .where(AppToken.tenant_id == tenant_id)
            .order_by(AppToken.created_at.desc(), AppToken.jti)
        ).scalars()
    )


def revoke_app_token(
    tenant_id: str | None,
    jti: str,
    actor_id: str | None,
    reason: str | None = None,
    *,
    details: dict[str, Any] | None = None,
) -> AppToken:
    """Revoke an app token by ``jti``: refused everywhere from the next request (idempotent)."""
    row = get_for_tenant(AppToken, tenant_id, jti)
    if row is None:
        raise _not_found("App token")
    owner = db.session.get(User, row.owner_id)
    if tenant_id is not None and owner is not None and owner.role == "operator":
        # Raised before anything is revoked: the admin API's stream revocation runs after this.
        raise ApiError(403, "Only an operator may revoke an operator's token.", code="forbidden")
    if row.revoked_at is not None:
        return row
    tokens.revoke_jti(row.jti, row.expires_at.timestamp())
    row.revoked_at = utcnow()
    record_audit(row.tenant_id, actor_id, "app_token.revoke", "app_token", row.jti, reason, details)
    db.session.commit()
    return row


# --- helpers ------------------------------------------------------------------------------------


def _commit_unique(message: str) -> None:
    # Two concurrent creators: the unique index decides, the loser gets a clean 409.
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise ApiError(409, message, code="conflict") from exc
