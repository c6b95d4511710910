# flask-smorest's decorators are untyped; the views themselves are typed.
# mypy: disable-error-code="untyped-decorator"
"""HTTP surface of identity: ``/v1/auth`` (log in, refresh, log out, sessions, me).

Views are thin: load a schema, call ``auth.service``, dump a schema. Cookies are an HTTP concern
and are set here, after the response is built. ``/v1/tokens`` lives in ``api.routes.tokens``
(revoking an app token stops its live streams, which is the api layer's to do); it shares
``documents`` and ``no_store`` from here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Response, after_this_request, g, request
from flask_jwt_extended import (
    get_jwt,
    get_jwt_request_location,
    set_access_cookies,
    set_refresh_cookies,
    unset_jwt_cookies,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_smorest import Blueprint
from jwt import PyJWTError

from api.schemas.auth import (
    AuthStatusSchema,
    LoginSchema,
    LogoutSchema,
    MeSchema,
    SessionSchema,
    TokenPairSchema,
)
from auth import sessions
from auth.access import current_identity, require
from auth.models import Tenant, User, get_for_tenant
from auth.tokens import auth_error
from core.errors import ApiError
from core.store import db, setting
from streaming import revocation

bp = Blueprint(
    "auth", __name__, url_prefix="/v1/auth", description="Log in, refresh, log out, who am I."
)


@bp.before_app_request
def forget_identity() -> None:
    """Start every request with no identity: ``g`` can outlive one request (tests, CLI)."""
    for name in ("identity", "tenant_id", "user_id"):
        g.pop(name, None)


_ERRORS = {
    401: "Missing, invalid, expired or revoked token (RFC 6750 `WWW-Authenticate`).",
    403: "The token lacks the scope or role this needs (`insufficient_scope`).",
    404: "No such object in your tenant.",
    429: "Too many login attempts for this account or address; see `Retry-After`.",
    503: "Redis is unreachable: nothing is let through unchecked.",
}


def documents(*codes: int) -> Callable[[Any], Any]:
    """Document the error responses a view can give, all in the one envelope."""

    def decorate(view: Any) -> Any:
        for code in codes:
            view = bp.alt_response(code, schema="Error", description=_ERRORS[code])(view)
        return view

    return decorate


def on_response(change: Callable[[Response], None]) -> None:
    """Apply ``change`` to this request's response once the view's body is serialized."""

    @after_this_request
    def apply(response: Response) -> Response:
        change(response)
        return response


def no_store(response: Response) -> None:
    # Responses carrying credentials must not be cached (RFC 6749 section 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


def _expires_in() -> int:
    return int(setting("JWT_ACCESS_TTL_S"))


# --- /v1/auth -----------------------------------------------------------------------------------


def _client_addr() -> str:
    return request.remote_addr or ""


def _device() -> str:
    return request.user_agent.string[:200] or "unknown device"


def _deliver(pair: sessions.Session, cookie: bool) -> dict[str, Any]:
    """The token pair as the body, or as HttpOnly cookies (browsers); never cached."""
    body: dict[str, Any] = {"token_type": "Bearer", "expires_in": _expires_in()}
    if cookie:

        def set_cookies(response: Response) -> None:
            no_store(response)
            set_access_cookies(response, pair.access_token)
            set_refresh_cookies(response, pair.refresh_token)

        on_response(set_cookies)
        return body
    on_response(no_store)
    return {**body, "access_token": pair.access_token, "refresh_token": pair.refresh_token}


@bp.route("/login", methods=["POST"])
@bp.arguments(LoginSchema)
@bp.response(200, TokenPairSchema)
@documents(401, 429, 503)
def log_in(args: dict[str, Any]) -> dict[str, Any]:
    """Log in with tenant, email and password; open a session with access and refresh tokens."""
    pair = sessions.login(
        args["tenant"],
        args["email"],
        args["password"],
        _client_addr(),
        args.get("device") or _device(),
    )
    return _deliver(pair, args["cookie"])


@bp.route("/refresh", methods=["POST"])
@require(refresh=True)
@bp.response(200, TokenPairSchema)
@documents(401, 503)
def refresh_token() -> dict[str, Any]:
    """Rotate a refresh token (header or cookie): a new access and refresh token."""
    ident = current_identity()
    pair = sessions.refresh(ident.tenant_id, ident.user_id, get_jwt())
    return _deliver(pair, get_jwt_request_location() == "cookies")


@bp.route("/logout", methods=["POST"])
@require()
@bp.arguments(LogoutSchema)
@bp.response(204)
@documents(401, 503)
def log_out(args: dict[str, Any]) -> None:
    """Revoke the presented access token and end its session (its refresh tokens too)."""
    ident = current_identity()
    refresh = None
    if "refresh_token" in args:
        refresh = sessions.verified_refresh_claims(
            ident.tenant_id, ident.user_id, args["refresh_token"]
        )
    else:
        cookie = request.cookies.get(setting("JWT_REFRESH_COOKIE_NAME"))
        if cookie:
            try:
                refresh = sessions.verified_refresh_claims(ident.tenant_id, ident.user_id, cookie)
            except ApiError:
                refresh = None  # a stale or foreign cookie is simply cleared
    access = get_jwt()
    # Like every path that kills a credential: what it started and opened stops at once too.
    revocation.revoke_principal(
        "token",
        str(access["jti"]),
        ident.user_id,
        "logout",
        lambda _streams: sessions.logout(ident.tenant_id, ident.user_id, access, refresh),
    )
    on_response(unset_jwt_cookies)


@bp.route("/sessions", methods=["GET"])
@require()
@bp.response(200, SessionSchema(many=True))
@documents(401, 503)
def list_sessions() -> list[dict[str, Any]]:
    """List your open sessions (device, address, created, last used)."""
    ident = current_identity()
    current = get_jwt().get("sid")
    return [
        {
            **{
                name: getattr(row, name)
                for name in ("id", "device", "address", "created_at", "last_used_at", "expires_at")
            },
            "current": row.id == current,
        }
        for row in sessions.active_sessions(ident.tenant_id, ident.user_id)
    ]


@bp.route("/sessions/<string:session_id>", methods=["DELETE"])
@require()
@bp.response(204)
@documents(401, 404, 503)
def end_session(session_id: str) -> None:
    """End one of your sessions: its refresh and access tokens stop working."""
    ident = current_identity()
    sessions.end_session(ident.tenant_id, ident.user_id, session_id)


@bp.route("/sessions", methods=["DELETE"])
@require()
@bp.response(204)
@documents(401, 503)
def sign_out_everywhere() -> None:
    """Sign out everywhere: every session and token of yours (app tokens too) stops working,
    and the streams they run and subscriptions they hold end at once."""
    ident = current_identity()
    revocation.sign_out_everywhere(ident.tenant_scope, ident.user_id, ident.user_id, "self")
    on_response(unset_jwt_cookies)


@bp.route("/me", methods=["GET"])
@require()
@bp.response(200, MeSchema)
@documents(401, 503)
def get_me() -> dict[str, Any]:
    """Who the presented token belongs to: user, tenant, role, scopes."""
    ident = current_identity()
    user = get_for_tenant(User, ident.tenant_id, ident.user_id)
    tenant = db.session.get(Tenant, ident.tenant_id)
    if user is None or tenant is None:
        raise auth_error("Token has been revoked")
    return {
        "id": user.id,
        "email": user.email,
        "role": ident.role,
        "tenant": tenant,
        "token": {
            "jti": ident.jti,
            "kind": ident.kind,
            "scopes": sorted(ident.scopes),
            "expires_at": datetime.fromtimestamp(ident.expires_at, UTC),
        },
    }


@bp.route("/status", methods=["GET"])
@bp.response(200, AuthStatusSchema)
def get_status() -> dict[str, bool]:
    """Whether this browser's cookies hold a session: always a 200, never a 401.

    A page that may be opened logged out asks this first, so its first load logs no error.
    """
    return {"authenticated": _cookie_valid(refresh=False), "refreshable": _cookie_valid(True)}


def _cookie_valid(refresh: bool) -> bool:
    try:
        verify_jwt_in_request(refresh=refresh, locations=["cookies"])
    except (JWTExtendedException, PyJWTError):
        return False
    return True
