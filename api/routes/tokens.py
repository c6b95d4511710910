# flask-smorest's decorators are untyped; the views themselves are typed.
# mypy: disable-error-code="untyped-decorator"
"""App tokens for third-party apps: ``/v1/tokens`` (issue, list, revoke).

Apart from ``api.routes.auth`` because revoking a token also stops the streams it started
and closes the subscriptions it opened, on every worker: ``streaming.revocation`` does that for
every path that revokes credentials, and ``auth`` may not import ``streaming``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask_smorest import Blueprint

from api.idempotency import idempotent
from api.routes.auth import documents, no_store, on_response
from api.schemas.auth import (
    AppTokenCreatedSchema,
    AppTokenCreateSchema,
    AppTokenSchema,
    AppTokenUpdateSchema,
    app_token_fields,
)
from api.services.app_tokens import POLICY, checked_policy, update_app_token
from auth import service
from auth.access import current_identity, require
from streaming import revocation

bp = Blueprint(
    "tokens",
    __name__,
    url_prefix="/v1/tokens",
    description="App tokens for third-party apps: named, scoped, long-lived, revocable.",
)


@bp.route("", methods=["POST"])
@require("admin", admin=True)
@idempotent()
@bp.arguments(AppTokenCreateSchema)
@bp.response(201, AppTokenCreatedSchema)
@documents(401, 403, 503)
def create_app_token(args: dict[str, Any]) -> dict[str, Any]:
    """Issue an app token; the JWT is in this response only."""
    ident = current_identity()
    row, encoded = service.create_app_token(
        ident.tenant_id,
        ident.user_id,
        role=ident.role,
        name=args["name"],
        scopes=args["scopes"],
        expires_in_days=args["expires_in_days"],
        grantable_scopes=ident.scopes,
        not_after=datetime.fromtimestamp(ident.expires_at, UTC) if ident.kind == "app" else None,
        policy=checked_policy(ident.tenant_id, {name: args[name] for name in POLICY}),
    )
    on_response(no_store)
    return app_token_fields(row, encoded)


@bp.route("", methods=["GET"])
@require("admin", admin=True)
@bp.response(200, AppTokenSchema(many=True))
@documents(401, 403, 503)
def list_app_tokens() -> list[Any]:
    """List the tenant's app tokens (never their secrets)."""
    return service.list_app_tokens(current_identity().tenant_id)


@bp.route("/<string:jti>", methods=["PATCH"])
@require("admin", admin=True)
@bp.arguments(AppTokenUpdateSchema)
@bp.response(200, AppTokenSchema)
@documents(401, 403, 404, 503)
def update_app_token_limits(args: dict[str, Any], jti: str) -> dict[str, Any]:
    """Change an app token's models, limits and end-user limits; they apply on its next request."""
    return app_token_fields(update_app_token(current_identity(), jti, args))


@bp.route("/<string:jti>", methods=["DELETE"])
@require("admin", admin=True)
@bp.response(204)
@documents(401, 403, 404, 503)
def revoke_app_token(jti: str) -> None:
    """Revoke an app token: refused everywhere at once; the streams it started are revoked."""
    ident = current_identity()
    revocation.revoke_app_token(ident.tenant_scope, jti, ident.user_id, None)
