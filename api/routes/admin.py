"""The admin console API under ``/v1/admin``: live streams, revocation, users, tenants, audit.

Every route needs a token with the ``admin`` scope and an admin or operator role (401 without a
token, 403 otherwise); a tenant admin sees and acts on their own tenant only (another tenant's
object is a 404); tenants are managed by operators. Views are thin: ``api.services.admin`` does
the work and writes the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask_smorest import Blueprint, Page

from api.schemas.admin import (
    AdminStreamSchema,
    AuditEventSchema,
    AuditQuerySchema,
    LiveStreamQuerySchema,
    ReasonSchema,
    TenantCreateSchema,
    TenantSchema,
    TenantUpdateSchema,
    TokenRevokedSchema,
    UpstreamSchema,
    UsageQuerySchema,
    UsageRowSchema,
    UserCreateSchema,
    UserQuerySchema,
    UserRevokedSchema,
    UserSchema,
    UserUpdateSchema,
)
from api.services import admin as service
from auth.access import current_identity, require

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/v1",
    description="Admin console: live streams, revocation, users, tenants, usage and audit log.",
)
F = TypeVar("F", bound=Callable[..., Any])
admin_only = require("admin", admin=True)


def conflict(description: str) -> Callable[[F], F]:
    """Document the 409 a view answers (in the one error envelope)."""
    return cast(Callable[[F], F], bp.alt_response(409, schema="Error", description=description))


def operators_only(view: F) -> F:
    """An admin token of an operator (checked before the body is read)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        service.require_operator(current_identity())
        return view(*args, **kwargs)

    return cast(F, admin_only(wrapper))


# --- live streams -----------------------------------------------------------------------------


@bp.get("/admin/streams")
@admin_only
@bp.arguments(LiveStreamQuerySchema, location="query")
@bp.response(200, AdminStreamSchema(many=True))
@bp.paginate(Page)
def list_live_streams(query: dict[str, Any]) -> Any:
    """List running streams, newest first (operators: every tenant, filterable)."""
    return service.live_streams(
        current_identity(), query.get("tenant"), query.get("user"), query.get("mode")
    )


@bp.get("/admin/streams/<stream_id>")
@admin_only
@bp.response(200, AdminStreamSchema)
def get_admin_stream(stream_id: str) -> dict[str, Any]:
    """One stream, running or finished, with its live counters."""
    return service.stream_detail(current_identity(), stream_id)


@bp.post("/admin/streams/<stream_id>/revoke")
@admin_only
@bp.arguments(ReasonSchema)
@conflict("The stream already ended (completed, failed or cancelled).")
@bp.response(202, AdminStreamSchema)
def revoke_stream(body: dict[str, Any], stream_id: str) -> dict[str, Any]:
    """Revoke a running stream on every node: generation stopped, subscribers told and closed."""
    return service.revoke_stream(current_identity(), stream_id, body["reason"])


# --- users and tokens -------------------------------------------------------------------------


@bp.get("/admin/users")
@admin_only
@bp.arguments(UserQuerySchema, location="query")
@bp.response(200, UserSchema(many=True))
@bp.paginate(Page)
def list_users(query: dict[str, Any]) -> Any:
    """List the tenant's users (operators: every tenant's, or one with ?tenant=)."""
    return service.list_users(
        current_identity(), query.get("tenant"), query.get("role"), query.get("disabled")
    )


@bp.post("/admin/users")
@admin_only
@bp.arguments(UserCreateSchema)
@conflict("A user with this email already exists in the tenant.")
@bp.response(201, UserSchema)
def create_user(body: dict[str, Any]) -> Any:
    """Create a member or admin in your tenant (operators are made with the CLI only)."""
    return service.create_user(
        current_identity(), body["email"], body["password"], body["role"], body.get("tenant_id")
    )


@bp.get("/admin/users/<user_id>")
@admin_only
@bp.response(200, UserSchema)
def get_user(user_id: str) -> Any:
    """One user of your tenant."""
    return service.get_user(current_identity(), user_id)


@bp.patch("/admin/users/<user_id>")
@admin_only
@bp.arguments(UserUpdateSchema)
@conflict("You cannot change your own role or disable yourself.")
@bp.response(200, UserSchema)
def update_user(body: dict[str, Any], user_id: str) -> Any:
    """Set a user's role, or disable (revoking their tokens and streams) or re-enable them."""
    return service.update_user(current_identity(), user_id, body)


@bp.post("/admin/users/<user_id>/revoke")
@admin_only
@bp.arguments(ReasonSchema)
@conflict("You cannot revoke yourself.")
@bp.response(202, UserRevokedSchema)
def revoke_user(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Revoke a user: account disabled, tokens dead, streams revoked, subscriptions closed."""
    return service.revoke_user(current_identity(), user_id, body["reason"])


@bp.post("/admin/users/<user_id>/sign-out")
@admin_only
@bp.arguments(ReasonSchema)
@bp.response(202, UserRevokedSchema)
def sign_out_user(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Sign a user out everywhere: every session and token ends (the account stays enabled),
    their running streams are revoked and their subscriptions closed."""
    return service.sign_out_user(current_identity(), user_id, body["reason"])


@bp.delete("/admin/tokens/<jti>")
@admin_only
@bp.arguments(ReasonSchema)
@bp.response(200, TokenRevokedSchema)
def revoke_token(body: dict[str, Any], jti: str) -> dict[str, Any]:
    """Revoke an app token, the streams it started and the subscriptions it opened."""
    return service.revoke_token(current_identity(), jti, body["reason"])


# --- tenants (operators) ----------------------------------------------------------------------


@bp.get("/admin/tenants")
@operators_only
@bp.response(200, TenantSchema(many=True))
@bp.paginate(Page)
def list_tenants() -> Any:
    """List every tenant (operators)."""
    return service.list_tenants(current_identity())


@bp.post("/admin/tenants")
@operators_only
@bp.arguments(TenantCreateSchema)
@conflict("A tenant with this slug already exists.")
@bp.response(201, TenantSchema)
def create_tenant(body: dict[str, Any]) -> Any:
    """Create a tenant (operators)."""
    return service.create_tenant(
        current_identity(), body["slug"], body["name"], body.get("allowed_models")
    )


@bp.get("/admin/tenants/<tenant_id>")
@operators_only
@bp.response(200, TenantSchema)
def get_tenant(tenant_id: str) -> Any:
    """One tenant (operators)."""
    return service.get_tenant(current_identity(), tenant_id)


@bp.patch("/admin/tenants/<tenant_id>")
@operators_only
@bp.arguments(TenantUpdateSchema)
@conflict("You cannot disable your own tenant.")
@bp.response(200, TenantSchema)
def update_tenant(body: dict[str, Any], tenant_id: str) -> Any:
    """Set a tenant's model allow-list; disable it (revoking everything of it) or re-enable it."""
    return service.update_tenant(current_identity(), tenant_id, body)


# --- model servers ----------------------------------------------------------------------------


@bp.get("/admin/upstreams")
@operators_only
@bp.response(200, UpstreamSchema(many=True))
def list_upstreams() -> Any:
    """The model servers: models, weight, health, requests in flight, failures (operators)."""
    return service.upstreams_status(current_identity())


# --- usage and audit --------------------------------------------------------------------------


@bp.get("/admin/usage")
@admin_only
@bp.arguments(UsageQuerySchema, location="query")
@bp.response(200, UsageRowSchema(many=True))
@bp.paginate(Page)
def get_usage(query: dict[str, Any]) -> Any:
    """Streams and tokens per tenant, user, app token, end user, model or UTC day in [from, to);
    per day also counts the requests refused by a limit."""
    return service.usage(
        current_identity(),
        query["group_by"],
        query.get("start"),
        query.get("end"),
        query.get("tenant"),
        query.get("user"),
        query.get("token"),
        query["per_day"],
    )


@bp.get("/admin/audit")
@admin_only
@bp.arguments(AuditQuerySchema, location="query")
@bp.response(200, AuditEventSchema(many=True))
@bp.paginate(Page)
def list_audit_events(query: dict[str, Any]) -> Any:
    """The audit log of admin actions, newest first."""
    return service.audit_events(current_identity(), query)
