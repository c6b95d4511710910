# mypy: disable-error-code="untyped-decorator"
"""``GET /v1/usage``: your usage today and this minute, and what is left of every limit."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.schemas.admin import OwnUsageQuerySchema
from api.schemas.limits import UsageReportSchema
from api.services.usage import own_end_user_usage
from auth.access import current_identity, require
from streaming.limits import usage_report

bp = Blueprint("usage", __name__, url_prefix="/v1", description="Your usage and remaining budget")


@bp.get("/usage")
@require("read")
@bp.arguments(OwnUsageQuerySchema, location="query")
@bp.response(200, UsageReportSchema)
def get_usage(query: dict[str, Any]) -> dict[str, Any]:
    """Your usage today and this minute, the remaining budget per limit, your open streams."""
    ident = current_identity()
    report = {
        "tenant_id": ident.tenant_id,
        "user_id": ident.user_id,
        **usage_report(ident.tenant_id, ident.principal_id),  # an app token: its own
    }
    if query.get("group_by") == "end_user":
        report["end_users"] = own_end_user_usage(ident, query.get("start"), query.get("end"))
    return report
