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
from marshmallow import Schema

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


def endpoint(
    route: Callable[[F], F],
    guard: Callable[[F], F],
    schema: Any,
    status: int = 200,
    *,
    query: type[Schema] | None = None,
    body: type[Schema] | None = None,
    conflict_description: str | None = None,
    paginated: bool = False,
) -> Callable[[F], F]:
    """The decorator stack of an admin view, applied in the one order every view uses.

    ``route`` and ``guard`` outermost, then the query or body schema, the documented 409, the
    response (``schema(many=True)`` when ``paginated``) and the pagination.
    """
    stack = [route, guard]
    if query is not None:
        stack.append(bp.arguments(query, location="query"))
    if body is not None:
        stack.append(bp.arguments(body))
    if conflict_description is not None:
        stack.append(conflict(conflict_description))
    stack.append(bp.response(status, schema(many=True) if paginated else schema))
    if paginated:
        stack.append(bp.paginate(Page))

    def apply(view: F) -> F:
        for decorator in reversed(stack):
            view = decorator(view)
        return view

    return apply


# --- live streams -----------------------------------------------------------------------------


@endpoint(
    bp.get("/admin/streams"),
    admin_only,
    AdminStreamSchema,
    query=LiveStreamQuerySchema,
    paginated=True,
)
def list_live_streams(query: dict[str, Any]) -> Any:
    """List running streams, newest first (operators: every tenant, filterable)."""
    return service.live_streams(
        current_identity(), query.get("tenant"), query.get("user"), query.get("mode")
    )


@endpoint(bp.get("/admin/streams/<stream_id>"), admin_only, AdminStreamSchema)
def get_admin_stream(stream_id: str) -> dict[str, Any]:
    """One stream, running or finished, with its live counters."""
    return service.stream_detail(current_identity(), stream_id)


@endpoint(
    bp.post("/admin/streams/<stream_id>/revoke"),
    admin_only,
    AdminStreamSchema,
    202,
    body=ReasonSchema,
    conflict_description="The stream already ended (completed, failed or cancelled).",
)
def revoke_stream(body: dict[str, Any], stream_id: str) -> dict[str, Any]:
    """Revoke a running stream on every node: generation stopped, subscribers told and closed."""
    return service.revoke_stream(current_identity(), stream_id, body["reason"])


# --- users and tokens -------------------------------------------------------------------------


@endpoint(bp.get("/admin/users"), admin_only, UserSchema, query=UserQuerySchema, paginated=True)
def list_users(query: dict[str, Any]) -> Any:
    """List the tenant's users (operators: every tenant's, or one with ?tenant=)."""
    return service.list_users(
        current_identity(), query.get("tenant"), query.get("role"), query.get("disabled")
    )


@endpoint(
    bp.post("/admin/users"),
    admin_only,
    UserSchema,
    201,
    body=UserCreateSchema,
    conflict_description="A user with this email already exists in the tenant.",
)
def create_user(body: dict[str, Any]) -> Any:
    """Create a member or admin in your tenant (operators are made with the CLI only)."""
    return service.create_user(
        current_identity(), body["email"], body["password"], body["role"], body.get("tenant_id")
    )


@endpoint(bp.get("/admin/users/<user_id>"), admin_only, UserSchema)
def get_user(user_id: str) -> Any:
    """One user of your tenant."""
    return service.get_user(current_identity(), user_id)


@endpoint(
    bp.patch("/admin/users/<user_id>"),
    admin_only,
    UserSchema,
    body=UserUpdateSchema,
    conflict_description="You cannot change your own role or disable yourself.",
)
def update_user(body: dict[str, Any], user_id: str) -> Any:
    """Set a user's role, or disable (revoking their tokens and streams) or re-enable them."""
    return service.update_user(current_identity(), user_id, body)


@endpoint(
    bp.post("/admin/users/<user_id>/revoke"),
    admin_only,
    UserRevokedSchema,
    202,
    body=ReasonSchema,
    conflict_description="You cannot revoke yourself.",
)
def revoke_user(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Revoke a user: account disabled, tokens dead, streams revoked, subscriptions closed."""
    return service.revoke_user(current_identity(), user_id, body["reason"])


@endpoint(
    bp.post("/admin/users/<user_id>/sign-out"),
    admin_only,
    UserRevokedSchema,
    202,
    body=ReasonSchema,
)
def sign_out_user(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Sign a user out everywhere: every session and token ends (the account stays enabled),
    their running streams are revoked and their subscriptions closed."""
    return service.sign_out_user(current_identity(), user_id, body["reason"])


@endpoint(bp.delete("/admin/tokens/<jti>"), admin_only, TokenRevokedSchema, body=ReasonSchema)
def revoke_token(body: dict[str, Any], jti: str) -> dict[str, Any]:
    """Revoke an app token, the streams it started and the subscriptions it opened."""
    return service.revoke_token(current_identity(), jti, body["reason"])


# --- tenants (operators) ----------------------------------------------------------------------


@endpoint(bp.get("/admin/tenants"), operators_only, TenantSchema, paginated=True)
def list_tenants() -> Any:
    """List every tenant (operators)."""
    return service.list_tenants(current_identity())


@endpoint(
    bp.post("/admin/tenants"),
    operators_only,
    TenantSchema,
    201,
    body=TenantCreateSchema,
    conflict_description="A tenant with this slug already exists.",
)
def create_tenant(body: dict[str, Any]) -> Any:
    """Create a tenant (operators)."""
    return service.create_tenant(
        current_identity(), body["slug"], body["name"], body.get("allowed_models")
    )


@endpoint(bp.get("/admin/tenants/<tenant_id>"), operators_only, TenantSchema)
def get_tenant(tenant_id: str) -> Any:
    """One tenant (operators)."""
    return service.get_tenant(current_identity(), tenant_id)


@endpoint(
    bp.patch("/admin/tenants/<tenant_id>"),
    operators_only,
    TenantSchema,
    body=TenantUpdateSchema,
    conflict_description="You cannot disable your own tenant.",
)
def update_tenant(body: dict[str, Any], tenant_id: str) -> Any:
    """Set a tenant's model allow-list; disable it (revoking everything of it) or re-enable it."""
    return service.update_tenant(current_identity(), tenant_id, body)


# --- model servers ----------------------------------------------------------------------------


@endpoint(bp.get("/admin/upstreams"), operators_only, UpstreamSchema(many=True))
def list_upstreams() -> Any:
    """The model servers: models, weight, health, requests in flight, failures (operators)."""
    return service.upstreams_status(current_identity())


# --- usage and audit --------------------------------------------------------------------------


@endpoint(
    bp.get("/admin/usage"), admin_only, UsageRowSchema, query=UsageQuerySchema, paginated=True
)
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


@endpoint(
    bp.get("/admin/audit"), admin_only, AuditEventSchema, query=AuditQuerySchema, paginated=True
)
def list_audit_events(query: dict[str, Any]) -> Any:
    """The audit log of admin actions, newest first."""
    return service.audit_events(current_identity(), query)
