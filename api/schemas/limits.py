"""Limits and usage schemas: overrides an admin sets, and the usage report a caller reads."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from api.schemas.chat import TokenCountsSchema
from streaming.limits import MAX_LIMIT

_LIMIT = validate.Range(min=0, max=MAX_LIMIT)


def _override(description: str) -> fields.Integer:
    """One limit override: a whole number in range, or null for "use the default"."""
    return fields.Integer(
        strict=True, allow_none=True, validate=_LIMIT, metadata={"description": description}
    )


class LimitsSchema(Schema):
    """Overrides of the deployment's defaults; a missing or null key means "use the default"."""

    class Meta:
        unknown = RAISE

    rpm = _override("Requests per minute.")
    concurrent = _override("Concurrent streams.")
    tpm = _override("Tokens per minute (prompt + completion).")
    tpd = _override("Tokens per UTC day (prompt + completion).")


class LimitsUpdateSchema(LimitsSchema):
    """The complete set of overrides (PUT replaces them); ``reason`` goes to the audit log."""

    reason = fields.String(validate=validate.Length(max=500), load_default=None)


class EffectiveLimitsSchema(Schema):
    rpm = fields.Integer(required=True)
    concurrent = fields.Integer(required=True)
    tpm = fields.Integer(required=True)
    tpd = fields.Integer(required=True)


class TenantLimitsSchema(Schema):
    tenant_id = fields.String(required=True)
    overrides = fields.Nested(LimitsSchema, required=True)
    defaults = fields.Nested(EffectiveLimitsSchema, required=True)
    effective = fields.Nested(EffectiveLimitsSchema, required=True)


class UserLimitsSchema(TenantLimitsSchema):
    user_id = fields.String(required=True)


class LimitStateSchema(Schema):
    limit = fields.Integer(required=True)
    used = fields.Integer(required=True)
    remaining = fields.Integer(required=True)
    reset = fields.Integer(required=True, metadata={"description": "Seconds until it refills."})


class ScopeLimitStatesSchema(Schema):
    rpm = fields.Nested(LimitStateSchema, required=True)
    concurrent = fields.Nested(LimitStateSchema, required=True)
    tpm = fields.Nested(LimitStateSchema, required=True)
    tpd = fields.Nested(LimitStateSchema, required=True)


class LimitStatesSchema(Schema):
    user = fields.Nested(ScopeLimitStatesSchema, required=True)
    tenant = fields.Nested(ScopeLimitStatesSchema, required=True)


class WindowUsageSchema(Schema):
    requests = fields.Integer(required=True)
    prompt_tokens = fields.Integer(required=True, metadata={"description": "Settled."})
    completion_tokens = fields.Integer(required=True, metadata={"description": "Settled."})
    total_tokens = fields.Integer(required=True, metadata={"description": "Settled."})
    reserved_tokens = fields.Integer(
        required=True, metadata={"description": "Held by running streams until they end."}
    )


class DayUsageSchema(WindowUsageSchema):
    date = fields.String(required=True, metadata={"description": "The UTC day."})


class UsageTotalsSchema(TokenCountsSchema):
    """Streams and settled tokens from the stream records."""

    streams = fields.Integer()


class EndUserUsageSchema(UsageTotalsSchema):
    end_user = fields.String(metadata={"description": "The OpenAI `user` field"})


class UsageReportSchema(Schema):
    tenant_id = fields.String(required=True)
    user_id = fields.String(required=True)
    today = fields.Nested(DayUsageSchema, required=True)
    this_minute = fields.Nested(WindowUsageSchema, required=True)
    open_streams = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Your streams holding a concurrency lease."},
    )
    limits = fields.Nested(LimitStatesSchema, required=True)
    end_users = fields.List(
        fields.Nested(EndUserUsageSchema),
        metadata={
            "description": "group_by=end_user: your streams per end user in [from, to), the most "
            "tokens first (at most 1,000; GET /v1/admin/usage pages through all)"
        },
    )
