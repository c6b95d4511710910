"""Usage from the stream records (SQL): streams and tokens per tenant, user, app token, end
user (the OpenAI ``user`` field) or UTC day, for the admin report and a caller's own."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select

from api.pagination import Rows
from auth.access import APP_PRINCIPAL, Identity
from auth.models import AppToken, User
from core.errors import ApiError
from core.store import db, utcnow
from streaming.models import StreamRecord

USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 400
#: A caller's own report lists at most this many end users (the most tokens first); the admin
#: report pages through all of them.
OWN_END_USERS_MAX = 1000


def period(
    start: datetime | None, end: datetime | None, default: timedelta | None = None
) -> tuple[datetime, datetime]:
    """[start, end): ``end`` is now by default, ``start`` ``default`` before; 422 if too long."""
    end = end or utcnow()
    start = start or end - (default or timedelta(days=USAGE_DEFAULT_DAYS))
    if end - start > timedelta(days=USAGE_MAX_DAYS):
        raise ApiError(
            422,
            f"The range is too long: at most {USAGE_MAX_DAYS} days.",
            errors={"from": [f"At most {USAGE_MAX_DAYS} days before 'to'."]},
        )
    return start, end


def usage_rows(
    group_by: str,
    start: datetime,
    end: datetime,
    filters: list[ColumnElement[bool]],
    per_day: bool = False,
) -> Rows[dict[str, Any]]:
    """Streams and tokens of the stream records in [start, end) that match ``filters``, per
    ``group_by`` (tenant, user, token, end_user, model or day; ``per_day`` also splits any of
    them by UTC day), in a stable order."""
    s = StreamRecord
    keys: list[Any] = [s.tenant_id]
    if group_by == "user":
        keys += [s.user_id, User.email]
    elif group_by == "token":  # app tokens only: each is a principal of its own
        keys += [s.token_jti, AppToken.name]
    elif group_by == "end_user":  # the OpenAI `user` field the caller sent
        keys.append(s.end_user)
    elif group_by == "model":
        keys.append(s.model)
    if group_by == "day" or per_day:  # 'YYYY-MM-DD' on SQLite, a date on PostgreSQL
        keys.insert(0, func.date(s.created_at).label("day"))
    query = select(*keys, *_measures()).where(s.created_at >= start, s.created_at < end, *filters)
    if group_by == "user":
        query = query.join(User, User.id == s.user_id)
    elif group_by == "token":
        query = query.join(AppToken, AppToken.jti == s.token_jti)
    elif group_by == "end_user":
        query = query.where(s.end_user.is_not(None))
    query = query.group_by(*keys).order_by(*keys)
    return Rows(query, lambda row: _usage_row(group_by, row))


def own_end_user_usage(
    ident: Identity, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """The caller's own streams per end user in [start, end) (by default the UTC day so far),
    the most tokens first: an app token's, or a user's own (not their app tokens')."""
    end = end or utcnow()
    midnight = datetime.combine(end.date(), time.min, UTC)
    start, end = period(start or (midnight if midnight < end else end - timedelta(days=1)), end)
    s = StreamRecord
    mine: list[ColumnElement[bool]] = [s.tenant_id == ident.tenant_id, s.end_user.is_not(None)]
    if ident.principal_id.startswith(APP_PRINCIPAL):
        mine.append(s.token_jti == ident.jti)
    else:
        mine += [s.user_id == ident.user_id, ~exists().where(AppToken.jti == s.token_jti)]
    query = (
        select(s.tenant_id, s.end_user, *_measures())
        .where(s.created_at >= start, s.created_at < end, *mine)
        .group_by(s.tenant_id, s.end_user)
    )
    total = func.sum(s.prompt_tokens + s.completion_tokens)
    query = query.order_by(total.desc(), s.end_user).limit(OWN_END_USERS_MAX)
    return [_usage_row("end_user", row) for row in db.session.execute(query)]


def _measures() -> list[Any]:
    s = StreamRecord
    return [
        func.count(s.id).label("streams"),
        func.coalesce(func.sum(s.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(s.completion_tokens), 0).label("completion_tokens"),
    ]


def _usage_row(group_by: str, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant_id": row.tenant_id}
    if group_by == "user":
        out.update(user_id=row.user_id, user_email=row.email)
    elif group_by == "token":
        out.update(token_jti=row.token_jti, token_name=row.name)
    elif group_by == "end_user":
        out["end_user"] = row.end_user
    elif group_by == "model":
        out["model"] = row.model
    if "day" in row._fields:
        out["day"] = str(row.day)[:10]
    prompt, completion = int(row.prompt_tokens), int(row.completion_tokens)
    out.update(
        streams=int(row.streams),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )
    return out
