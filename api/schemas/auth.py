"""Marshmallow schemas of /v1/auth and /v1/tokens: what comes in, what goes out.

Schemas validate shape only; they never query the database or read the current user.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from api.schemas.limits import LimitsSchema
from auth.models import SCOPES
from auth.passwords import MAX_PASSWORD_LENGTH

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def no_control_chars(value: str) -> None:
    """Refuse names with control characters (they break logs, headers and terminals)."""
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")


class LoginSchema(Schema):
    tenant = fields.String(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Tenant slug"},
    )
    email = fields.String(required=True, validate=validate.Length(min=3, max=254))
    password = fields.String(
        required=True, load_only=True, validate=validate.Length(min=1, max=MAX_PASSWORD_LENGTH)
    )
    device = fields.String(
        validate=[validate.Length(min=1, max=200), no_control_chars],
        metadata={"description": "A name for this session (default: the User-Agent)"},
    )
    cookie = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Browsers: set HttpOnly cookies (and the CSRF cookies) instead of "
            "returning the tokens in the body."
        },
    )


class LogoutSchema(Schema):
    refresh_token = fields.String(
        validate=validate.Length(min=1, max=8192),
        metadata={
            "description": "Also revoke this refresh token (the refresh cookie is revoked too)"
        },
    )


class TokenPairSchema(Schema):
    access_token = fields.String(metadata={"description": "Omitted when cookies were set"})
    refresh_token = fields.String(
        metadata={
            "description": "Omitted when cookies were set. Rotated on every refresh: use the "
            "newest; presenting an older one ends the session"
        }
    )
    token_type = fields.String(dump_default="Bearer")
    expires_in = fields.Integer(metadata={"description": "Seconds until the access token expires"})


class SessionSchema(Schema):
    id = fields.String()
    device = fields.String(metadata={"description": "From the login body or the User-Agent"})
    address = fields.String(metadata={"description": "Client address at login"})
    created_at = fields.DateTime()
    last_used_at = fields.DateTime(metadata={"description": "Login or last refresh"})
    expires_at = fields.DateTime()
    current = fields.Boolean(metadata={"description": "The session of the presented token"})


class TenantRefSchema(Schema):
    id = fields.String()
    slug = fields.String()
    name = fields.String()


class TokenInfoSchema(Schema):
    jti = fields.String()
    kind = fields.String(metadata={"description": "`user` (a login) or `app` (an app token)"})
    scopes = fields.List(fields.String())
    expires_at = fields.DateTime()


class AuthStatusSchema(Schema):
    authenticated = fields.Boolean(
        required=True, metadata={"description": "This browser's access cookie is valid"}
    )
    refreshable = fields.Boolean(
        required=True,
        metadata={"description": "Its refresh cookie is valid: POST /v1/auth/refresh renews it"},
    )


class MeSchema(Schema):
    id = fields.String()
    email = fields.String()
    role = fields.String()
    tenant = fields.Nested(TenantRefSchema)
    token = fields.Nested(TokenInfoSchema)


def _default_none(load_default: bool) -> dict[str, Any]:
    return {"load_default": None} if load_default else {}


def _models_field(load_default: bool = True) -> fields.Field[Any]:
    return fields.List(
        fields.String(validate=[validate.Length(min=1, max=200), no_control_chars]),
        allow_none=True,
        validate=validate.Length(max=100),
        metadata={"description": "Models the app may use, a subset of the tenant's (null: all)"},
        **_default_none(load_default),
    )


_OWN_LIMITS = (
    "The app's own rpm / concurrent / tpm / tpd: a principal of its own, it never spends its "
    "issuer's limits (null: the per-user defaults)"
)
_END_USER_LIMITS = (
    "The rpm / concurrent / tpm / tpd each end user of the app has (the OpenAI `user` field of "
    "its requests), apart from the others and within the app's own limits; a key left out is "
    "not limited per end user (null: none is)"
)


def _limits_field(description: str, load_default: bool = True) -> fields.Field[Any]:
    return fields.Nested(
        LimitsSchema,
        allow_none=True,
        metadata={"description": description},
        **_default_none(load_default),
    )


def _limits_dict(description: str) -> fields.Field[Any]:
    return fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        allow_none=True,
        metadata={"description": description},
    )


class AppTokenCreateSchema(Schema):
    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=100), no_control_chars]
    )
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)),
        required=True,
        validate=validate.Length(min=1, max=len(SCOPES)),
    )
    expires_in_days = fields.Integer(
        load_default=90,
        validate=validate.Range(min=1),
        metadata={"description": "At most APP_TOKEN_MAX_TTL_DAYS"},
    )
    models = _models_field()
    limits = _limits_field(_OWN_LIMITS)
    end_user_limits = _limits_field(_END_USER_LIMITS)


class AppTokenUpdateSchema(Schema):
    """``PATCH /v1/tokens/<jti>``: a field left out is unchanged; null resets it."""

    class Meta:
        unknown = RAISE

    models = _models_field(load_default=False)
    limits = _limits_field(_OWN_LIMITS, load_default=False)
    end_user_limits = _limits_field(_END_USER_LIMITS, load_default=False)


class AppTokenSchema(Schema):
    jti = fields.String()
    name = fields.String()
    scopes = fields.List(fields.String())
    owner_id = fields.String()
    created_at = fields.DateTime()
    expires_at = fields.DateTime()
    revoked_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True)
    models = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "The token's own model allow-list (null: the tenant's)"},
    )
    limits = _limits_dict("The token's own limit overrides (null: the per-user defaults)")
    end_user_limits = _limits_dict("The limits each of its end users has (null: not limited apart)")


class AppTokenCreatedSchema(AppTokenSchema):
    token = fields.String(metadata={"description": "The JWT; shown once, never again"})


def app_token_fields(row: Any, token: str | None = None) -> dict[str, Any]:
    """An app token row (and, once, its JWT) as the dict the schemas dump."""
    data = {name: getattr(row, name) for name in AppTokenSchema().fields}
    if token is not None:
        data["token"] = token
    return data
