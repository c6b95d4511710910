"""Who the caller is and what they may touch.

``current_identity()`` is the verified token as a value; ``require`` guards a view by scope and
role; ``may_read`` is the hub's channel rule; ``parse_channel`` refuses malformed names before any
Redis call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g
from flask_jwt_extended import get_jwt, verify_jwt_in_request

from auth.models import User
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import db

F = TypeVar("F", bound=Callable[..., Any])

# Ids are "<prefix>_" + 20 lowercase alphanumerics (core.store.new_id); nothing else is a channel.
CHANNEL_RE = re.compile(r"\A(streams|users|tenants)/((?:str|usr|ten)_[a-z0-9]{20})\Z")
_PREFIX = {"streams": "str_", "users": "usr_", "tenants": "ten_"}
APP_PRINCIPAL = "app:"  # limits principal of an app token: "app:<jti>"


@dataclass(frozen=True)
class Identity:
    """The verified caller: one user of one tenant, acting with some scopes."""

    user_id: str
    tenant_id: str
    role: str
    scopes: frozenset[str]
    jti: str
    kind: str
    expires_at: float

    @property
    def principal_id(self) -> str:
        """Who limits and usage are counted for: the user, or the app token itself."""
        return APP_PRINCIPAL + self.jti if self.kind == "app" else self.user_id

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def is_admin(self) -> bool:
        return self.role in {"admin", "operator"} and "admin" in self.scopes

    @property
    def tenant_scope(self) -> str | None:
        """The tenant an admin lookup is limited to (None: an operator sees all)."""
        return None if self.is_operator else self.tenant_id

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Identity:
        return cls(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tenant"]),
            role=str(claims["role"]),
            scopes=frozenset(claims.get("scopes") or ()),
            jti=str(claims["jti"]),
            kind=str(claims.get("kind", "user")),
            expires_at=float(claims["exp"]),
        )


def _remember(ident: Identity) -> Identity:
    g.identity = ident
    g.tenant_id, g.user_id = ident.tenant_id, ident.user_id
    return ident


def current_identity() -> Identity:
    """The identity of the verified token of this request."""
    ident = g.get("identity")
    if ident is None:
        ident = _remember(Identity.from_claims(get_jwt()))
    return cast(Identity, ident)


def require(
    scope: str | None = None, *, admin: bool = False, refresh: bool = False
) -> Callable[[F], F]:
    """Guard a view: a valid, unrevoked token, carrying ``scope`` (and an admin role if asked)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verify_jwt_in_request(refresh=refresh)
            # Always from the token just verified: ``g`` outlives a request when one app
            # context spans several (tests, CLI), so a cached identity could be another's.
            ident = _remember(Identity.from_claims(get_jwt()))
            if scope is not None and scope not in ident.scopes:
                raise auth_error(
                    f"This token lacks the '{scope}' scope",
                    error="insufficient_scope",
                    status=403,
                    scope=scope,
                )
            if admin and not ident.is_admin:
                raise auth_error(
                    "Admin role required", error="insufficient_scope", status=403, scope="admin"
                )
            return view(*args, **kwargs)

        # Read by api.openapi to document the security and 401/403 of each operation.
        access = {"scope": scope, "admin": admin, "refresh": refresh}
        wrapper.required_access = access  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorator


def parse_channel(channel: str | None) -> tuple[str, str]:
    """Split ``streams/<id>``, ``users/<id>`` or ``tenants/<id>``; anything else is a 400."""
    match = CHANNEL_RE.match(channel or "")
    if match is None or not match.group(2).startswith(_PREFIX[match.group(1)]):
        raise ApiError(
            400,
            "Malformed channel: expected 'streams/<stream id>', 'users/<user id>' "
            "or 'tenants/<tenant id>'",
            errors={"channel": ["Malformed channel name."]},
            code="invalid_channel",
        )
    return match.group(1), match.group(2)


def may_read(
    ident: Identity, channel: str, *, owner_of: Callable[[str], tuple[str, str] | None]
) -> bool:
    """The channel rule: members read their own, tenant admins their tenant's, operators any.

    ``owner_of(stream_id)`` returns ``(tenant_id, user_id)`` of a stream, or None if unknown;
    ``users/<id>`` channels are resolved the same way through the caller's own identity or
    ``owner_of`` for users (prefix ``usr_``). ``tenants/<id>`` (every stream's lifecycle in a
    tenant) is an admin feed: its tenant's admins and operators only, never a member.
    """
    if "read" not in ident.scopes:
        return False
    kind, object_id = parse_channel(channel)
    if ident.is_operator and "admin" in ident.scopes:
        return True
    if kind == "tenants":
        return ident.is_admin and object_id == ident.tenant_id
    owner = owner_of(object_id)
    if owner is None:
        return False
    tenant_id, user_id = owner
    if tenant_id != ident.tenant_id:
        return False
    if user_id == ident.user_id:
        return True
    # A tenant admin reads the tenant's channels, but never an operator's: operators are above
    # tenant admins on every path.
    return ident.is_admin and not _is_operator(user_id)


def may_act_on(ident: Identity, user_id: str) -> bool:
    """``may_manage`` by id: whether ``ident`` may see or act on what ``user_id`` owns.

    An unknown user is refused (404 at the caller, like another tenant's).
    """
    user = db.session.get(User, user_id)
    return user is not None and may_manage(ident, user)


def _is_operator(user_id: str) -> bool:
    user = db.session.get(User, user_id)
    return user is not None and user.role == "operator"


def may_manage(ident: Identity, target: User) -> bool:
    """Whether ``ident`` may act on ``target`` (limits, tokens, streams, role, revocation).

    Operators may act on anyone; a tenant admin on the users of their own tenant except
    operators; a member on nobody but themselves.
    """
    if ident.is_operator and "admin" in ident.scopes:
        return True
    if target.id == ident.user_id:
        return True
    return ident.is_admin and target.tenant_id == ident.tenant_id and target.role != "operator"
