"""Admin console schemas: live streams, revocation, users, tenants, usage and the audit log.

Schemas validate shape only; scoping (which tenant, which user) is the service's job.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from api.schemas.auth import AppTokenSchema, no_control_chars
from api.schemas.limits import UsageTotalsSchema
from auth.models import ROLES
from auth.passwords import MAX_PASSWORD_LENGTH

ID = validate.Length(min=1, max=64)


# Instants outside this range are refused: the services do date arithmetic (a default window of
# days before ``to``) that would overflow near year 1 or 9999, and no usage predates 2000.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class Instant(fields.Field[datetime]):
    """A date (``2026-01-31``: midnight UTC) or an ISO 8601 date-time (naive means UTC),
    between 2000-01-01 and 9000-01-01."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str) or len(value) > 40:
            raise ValidationError("Use a date (YYYY-MM-DD) or an ISO 8601 date-time.")
        try:
            if len(value) == 10:
                parsed = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
            else:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError("Use a date (YYYY-MM-DD) or an ISO 8601 date-time.") from exc
        try:
            instant = (
                parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
            )
        except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00
            raise ValidationError("Use a date between 2000-01-01 and 9000-01-01.") from exc
        if not EARLIEST <= instant < LATEST:
            raise ValidationError("Use a date between 2000-01-01 and 9000-01-01.")
        return instant


class ReasonSchema(Schema):
    reason = fields.String(
        load_default=None,
        validate=[validate.Length(max=500), no_control_chars],
        metadata={"description": "Why; kept in the audit log and sent with `stream.revoked`"},
    )


class ChangeSchema(ReasonSchema):
    """An update that must set at least one of ``CHANGES`` (a reason alone changes nothing)."""

    CHANGES: tuple[str, ...] = ()

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not any(name in data for name in self.CHANGES):
            raise ValidationError(f"Give {' or '.join(self.CHANGES)}.", "_schema")


# --- live streams -----------------------------------------------------------------------------


class LiveStreamQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tenant = fields.String(validate=ID, metadata={"description": "Operators: one tenant's streams"})
    user = fields.String(validate=ID, metadata={"description": "One user's streams"})
    mode = fields.String(validate=validate.OneOf(["direct", "channel"]))


class AdminStreamSchema(Schema):
    id = fields.String(required=True)
    tenant_id = fields.String()
    user_id = fields.String()
    user_email = fields.String(allow_none=True)
    token_jti = fields.String(
        allow_none=True,
        metadata={
            "description": "The token that started it (revoke with DELETE /v1/admin/tokens/<jti>)"
        },
    )
    mode = fields.String(metadata={"description": "`direct` or `channel`"})
    model = fields.String()
    status = fields.String(metadata={"description": "`running`, `revoked`, `completed`, ..."})
    started_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    tokens = fields.Integer(metadata={"description": "Completion tokens so far"})
    prompt_tokens = fields.Integer()
    subscribers = fields.Integer(metadata={"description": "Open hub connections, all nodes"})
    revoked_by = fields.String(allow_none=True)
    revoke_reason = fields.String(allow_none=True)
    upstream = fields.String(
        allow_none=True, metadata={"description": "The model server that served it (when ended)"}
    )
    upstream_attempts = fields.Integer(
        allow_none=True, metadata={"description": "Model servers tried to get its first chunk"}
    )


# --- users ------------------------------------------------------------------------------------


class UserQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tenant = fields.String(validate=ID, metadata={"description": "Operators: one tenant's users"})
    role = fields.String(validate=validate.OneOf(ROLES))
    disabled = fields.Boolean()


class UserSchema(Schema):
    id = fields.String()
    tenant_id = fields.String()
    email = fields.String()
    role = fields.String()
    disabled = fields.Boolean()
    created_at = fields.DateTime()
    tokens_valid_after = fields.DateTime(allow_none=True)


class UserCreateSchema(Schema):
    email = fields.String(
        required=True, validate=[validate.Length(min=3, max=254), no_control_chars]
    )
    password = fields.String(
        required=True, load_only=True, validate=validate.Length(min=1, max=MAX_PASSWORD_LENGTH)
    )
    role = fields.String(
        load_default="member",
        validate=validate.OneOf(ROLES),
        metadata={"description": "`member` or `admin` (operators are made with the CLI only)"},
    )
    tenant_id = fields.String(
        validate=ID, metadata={"description": "Operators: the tenant (tenant admins: their own)"}
    )


class UserUpdateSchema(ChangeSchema):
    CHANGES = ("role", "disabled")

    role = fields.String(validate=validate.OneOf(ROLES))
    disabled = fields.Boolean(
        metadata={"description": "`true` disables the user and revokes their tokens and streams"}
    )


class UserRevokedSchema(Schema):
    user = fields.Nested(UserSchema)
    streams_revoked = fields.List(fields.String(), metadata={"description": "Streams stopped"})


class TokenRevokedSchema(Schema):
    token = fields.Nested(AppTokenSchema)
    streams_revoked = fields.List(fields.String())


# --- tenants ----------------------------------------------------------------------------------


class TenantSchema(Schema):
    id = fields.String()
    slug = fields.String()
    name = fields.String()
    disabled = fields.Boolean()
    allowed_models = fields.List(fields.String(), allow_none=True)
    created_at = fields.DateTime()


class TenantCreateSchema(Schema):
    slug = fields.String(required=True, validate=validate.Length(min=1, max=64))
    name = fields.String(
        required=True, validate=[validate.Length(min=1, max=200), no_control_chars]
    )
    allowed_models = fields.List(
        fields.String(validate=[validate.Length(min=1, max=200), no_control_chars]),
        validate=validate.Length(min=1, max=100),
        metadata={"description": "Defaults to the deployment's LLM_MODELS"},
    )


class TenantUpdateSchema(ChangeSchema):
    CHANGES = ("allowed_models", "disabled")

    allowed_models = fields.List(
        fields.String(validate=[validate.Length(min=1, max=200), no_control_chars]),
        validate=validate.Length(min=1, max=100),
    )
    disabled = fields.Boolean(
        metadata={"description": "`true` revokes every token and stream of the tenant"}
    )


# --- model servers ---------------------------------------------------------------------------


class UpstreamSchema(Schema):
    name = fields.String()
    base_url = fields.String(metadata={"description": "Never the API key"})
    models = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        allow_none=True,
        metadata={"description": "Public name -> the server's own; null: any model, as named"},
    )
    weight = fields.Integer()
    max_concurrent = fields.Integer(allow_none=True)
    state = fields.String(
        metadata={
            "description": "`healthy`, `cooling_down`, or `probing` (cooldown over, one "
            "request tests it)"
        }
    )
    cooling_until = fields.Float(allow_none=True, metadata={"description": "Unix time"})
    in_flight = fields.Integer(metadata={"description": "Requests open to it on every node"})
    consecutive_failures = fields.Integer()
    failures = fields.Integer(metadata={"description": "Failures counted (never reset)"})
    last_failure_at = fields.Float(allow_none=True, metadata={"description": "Unix time"})
    last_failure_kind = fields.String(allow_none=True)


# --- usage and audit --------------------------------------------------------------------------


class PeriodSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    start = Instant(
        data_key="from", metadata={"description": "Inclusive; a date or date-time (UTC)"}
    )
    end = Instant(data_key="to", metadata={"description": "Exclusive; a date or date-time (UTC)"})

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") and data.get("end") and data["start"] >= data["end"]:
            raise ValidationError("'from' must be before 'to'.", "from")


class RangeSchema(PeriodSchema):
    tenant = fields.String(validate=ID, metadata={"description": "Operators: one tenant"})


class OwnUsageQuerySchema(PeriodSchema):
    """``GET /v1/usage``: ``group_by=end_user`` adds your streams per end user in [from, to)."""

    group_by = fields.String(
        validate=validate.OneOf(["end_user"]),
        metadata={
            "description": "end_user: add `end_users`, your streams and tokens per OpenAI `user` "
            "field in [from, to) (default: today, UTC)"
        },
    )


class UsageQuerySchema(RangeSchema):
    group_by = fields.String(
        load_default="tenant",
        validate=validate.OneOf(["tenant", "user", "token", "end_user", "model", "day"]),
        metadata={"description": "token: per app token; end_user: per OpenAI `user` field"},
    )
    per_day = fields.Boolean(
        load_default=False,
        metadata={"description": "Also split by UTC day (rows carry `day`): a daily chart"},
    )
    user = fields.String(validate=ID)
    token = fields.String(
        validate=validate.Length(min=1, max=64), metadata={"description": "One app token's jti"}
    )


class UsageRowSchema(UsageTotalsSchema):
    tenant_id = fields.String()
    user_id = fields.String(metadata={"description": "group_by=user"})
    user_email = fields.String(allow_none=True, metadata={"description": "group_by=user"})
    day = fields.String(metadata={"description": "group_by=day or per_day: YYYY-MM-DD (UTC)"})
    token_jti = fields.String(metadata={"description": "group_by=token"})
    token_name = fields.String(metadata={"description": "group_by=token"})
    end_user = fields.String(metadata={"description": "group_by=end_user"})
    model = fields.String(metadata={"description": "group_by=model"})
    refusals = fields.Integer(
        metadata={
            "description": "group_by=day: requests refused by a limit (429) that day (kept 35 days)"
        }
    )


class AuditQuerySchema(RangeSchema):
    actor = fields.String(validate=ID)
    action = fields.String(validate=validate.Length(min=1, max=64))
    target_type = fields.String(validate=validate.Length(min=1, max=32))
    target_id = fields.String(validate=ID)


class AuditEventSchema(Schema):
    id = fields.String()
    tenant_id = fields.String(allow_none=True)
    actor_id = fields.String(allow_none=True, metadata={"description": "None: the command line"})
    actor_email = fields.String(allow_none=True)
    action = fields.String(metadata={"description": "e.g. `stream.revoke`, `user.create`"})
    target_type = fields.String()
    target_id = fields.String()
    reason = fields.String(allow_none=True)
    details = fields.Dict(allow_none=True)
    created_at = fields.DateTime()
